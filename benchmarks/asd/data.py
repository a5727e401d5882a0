"""The ASD files (one server each), read with the product's own reader, and their labelled segments.

A folder holds `<name>-N.csv` files (columns `timestamp, m01…mNN, split, anomaly`; any number of
m-columns) and `interpretation/<name>-N.txt`, one line per labelled segment of the test part,
`start-end:metrics` (0-based test rows, inclusive; metrics 1-based column numbers). Loading checks that
the train rows come first, that the train part carries no labels and that the segments cover exactly
the test rows labelled anomalous.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detector.readings.files import read_readings

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "asd"
DATA_ENV = "HIDDENSTATE_ASD_DATA"
"""Environment variable that overrides DEFAULT_DATA (`--data` overrides both)."""

ROW_MINUTES = 5
ROWS_PER_DAY = 24 * 60 // ROW_MINUTES
"""Rows are 5 minutes apart: 288 rows make one server-day."""

_CHANNEL = re.compile(r"m\d+")
_SEGMENT = re.compile(r"(\d+)-(\d+):([\d,\s]*)")


@dataclass(frozen=True)
class Segment:
    """One labelled anomaly: test rows start…end (inclusive) and the channels (0-based) marked as involved."""

    start: int
    end: int
    metrics: tuple[int, ...]

    def holds(self, row: int, grace: int = 0) -> bool:
        """Whether test row `row` lies in the segment or in the `grace` rows after its end."""
        return self.start <= row <= self.end + grace


@dataclass
class AsdFile:
    """One server: all its rows in time order, train part first."""

    key: str  # e.g. "omi-3"
    ts: np.ndarray  # [N] seconds
    values: np.ndarray  # [N, C]
    anomaly: np.ndarray  # [N] 0/1 (0 throughout the train part)
    train_rows: int
    segments: list[Segment]
    channels: list[str]

    def __len__(self) -> int:
        return len(self.ts)

    @property
    def test_rows(self) -> int:
        return len(self) - self.train_rows


def default_data() -> Path:
    """$HIDDENSTATE_ASD_DATA if set, else ../shared/data/asd next to the repository."""
    return Path(os.environ.get(DATA_ENV) or DEFAULT_DATA)


def parse_interpretation(text: str, channels: int) -> list[Segment]:
    """The segments of one interpretation file, in file order; a malformed line is an error."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _SEGMENT.fullmatch(line.strip())
        if not m:
            raise ValueError(f"line {n}: {line!r} is not start-end:metrics")
        start, end = int(m[1]), int(m[2])
        metrics = tuple(sorted({int(x) - 1 for x in m[3].replace(" ", "").split(",") if x}))
        if end < start or any(not 0 <= c < channels for c in metrics):
            raise ValueError(f"line {n}: {line!r}: end before start, or a metric outside 1…{channels}")
        out.append(Segment(start, end, metrics))
    return out


def discover(data: Path) -> list[tuple[str, Path]]:
    """(key, path) of every CSV in `data`, sorted by name and then by its trailing number (omi-2 before omi-10)."""
    if not data.is_dir():
        raise FileNotFoundError(f"{data} not found: give --data (or ${DATA_ENV}) the ASD data folder")

    def order(p: Path) -> tuple[str, int]:
        m = re.fullmatch(r"(.*?)(\d+)", p.stem)
        return (m[1], int(m[2])) if m else (p.stem, -1)

    found = [(p.stem, p) for p in sorted(data.glob("*.csv"), key=order)]
    if not found:
        raise FileNotFoundError(f"{data} holds no .csv files")
    return found


def _header_and_split(path: Path) -> tuple[list[str], np.ndarray]:
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        header = [h.strip() for h in next(reader)]
        if "split" not in header:
            raise ValueError(f"{path}: no split column")
        i = header.index("split")
        return header, np.array([row[i].strip() for row in reader if row])


def load_file(key: str, path: Path) -> AsdFile:
    """Read one server's CSV and its interpretation file; fails loudly if they disagree."""
    header, split = _header_and_split(path)
    channels = [h for h in header if _CHANNEL.fullmatch(h)]
    if not channels:
        raise ValueError(f"{path}: no m01… value columns")
    r = read_readings(path, time_column="timestamp", value_columns=channels)
    if r.skipped:
        raise ValueError(f"{path}: {len(r.skipped)} rows skipped by the reader, e.g. {r.skipped[0]}")
    if "anomaly" not in r.labels or len(split) != len(r):
        raise ValueError(f"{path}: no anomaly column, or rows the reader did not read")
    if np.any(np.diff(r.ts) <= 0):
        raise ValueError(f"{path}: timestamps do not increase")
    train_rows = int(np.count_nonzero(split == "train"))
    if set(split) - {"train", "test"} or np.any(split[:train_rows] != "train") or train_rows == len(r):
        raise ValueError(f"{path}: split must be train rows then test rows (and some test rows)")
    anomaly = r.labels["anomaly"].astype(np.int8)
    if anomaly[:train_rows].any():
        raise ValueError(f"{path}: anomaly labels in the train part")
    interpretation = path.parent / "interpretation" / f"{key}.txt"
    try:
        segments = parse_interpretation(interpretation.read_text(), len(channels))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{interpretation}: {exc}") from None
    covered = np.zeros(len(r) - train_rows, dtype=np.int8)
    for s in segments:
        covered[s.start : s.end + 1] = 1
    if any(s.end >= len(covered) for s in segments) or not np.array_equal(covered, anomaly[train_rows:]):
        raise ValueError(f"{interpretation}: the segments do not match the test part's anomaly column")
    return AsdFile(key, r.ts, r.values, anomaly, train_rows, segments, channels)


def load(data: Path | None = None) -> list[AsdFile]:
    """Every server in the folder (default: `default_data()`), all with the same channels."""
    files = [load_file(key, path) for key, path in discover(Path(data) if data else default_data())]
    if len({tuple(f.channels) for f in files}) > 1:
        raise ValueError("the files do not all have the same value columns")
    return files
