"""The SKAB files, read with the product's own reader, in a fixed order."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detector.readings.files import read_readings

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "skab"
SUBSETS = ("valve1", "valve2", "other")


@dataclass
class SkabFile:
    """One labelled SKAB experiment: rows in file (= time) order."""

    key: str  # e.g. "valve1/3"
    subset: str
    ts: np.ndarray  # [N] seconds
    values: np.ndarray  # [N, 8]
    anomaly: np.ndarray  # [N] 0/1
    changepoint: np.ndarray  # [N] 0/1
    channels: list[str]

    def __len__(self) -> int:
        return len(self.ts)


def discover(data: Path) -> list[tuple[str, Path]]:
    """(key, path) of the 34 labelled files: valve1/0–15, valve2/0–3, other/1–14, numerically sorted."""
    found = []
    for subset in SUBSETS:
        folder = data / subset
        if not folder.is_dir():
            raise FileNotFoundError(
                f"{folder} not found: give --data the SKAB data folder (it holds valve1/, valve2/, other/)"
            )
        for path in sorted(folder.glob("*.csv"), key=lambda p: int(p.stem) if p.stem.isdigit() else 10**9):
            found.append((f"{subset}/{path.stem}", path))
    return found


def load(data: Path = DEFAULT_DATA) -> list[SkabFile]:
    """Read every labelled file; fails loudly if a file is not as SKAB v0.9 describes it."""
    files = []
    for key, path in discover(Path(data)):
        r = read_readings(path)
        if r.skipped:
            raise ValueError(f"{path}: {len(r.skipped)} rows skipped by the reader, e.g. {r.skipped[0]}")
        if "anomaly" not in r.labels or "changepoint" not in r.labels:
            raise ValueError(f"{path}: no anomaly/changepoint columns")
        if np.any(np.diff(r.ts) <= 0):
            raise ValueError(f"{path}: timestamps do not increase")
        files.append(
            SkabFile(
                key=key,
                subset=key.split("/")[0],
                ts=r.ts,
                values=r.values,
                anomaly=r.labels["anomaly"].astype(np.int8),
                changepoint=r.labels["changepoint"].astype(np.int8),
                channels=list(r.channel_names),
            )
        )
    return files
