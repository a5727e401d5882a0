"""Regenerate docs/img/replay.png, the README's picture: `python scripts/readme_picture.py`.

Writes a two-channel CSV of one simulated machine (a seasonal channel and a noisy one) with a level
shift, a stuck period and a spike injected, then runs `hiddenstate replay --plot` on it.
"""

from __future__ import annotations

import csv
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from detector.cli import main

ROOT = Path(__file__).resolve().parent.parent


def write_csv(path: Path, steps: int = 1500, seed: int = 4) -> None:
    rng = np.random.default_rng(seed)
    t = np.arange(steps)
    temperature = 60 + 8 * np.sin(2 * np.pi * t / 120) + rng.normal(0, 0.4, steps)
    pressure = 3.0 + 0.05 * np.cumsum(rng.normal(0, 0.05, steps)) + rng.normal(0, 0.02, steps)
    pressure[700:760] += 0.35  # level shift
    temperature[1000:1060] = temperature[999]  # stuck
    pressure[1300] += 0.6  # spike
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", "temperature", "pressure"])
        for i in range(steps):
            ts = datetime.fromtimestamp(1_767_225_600 + 10 * i, tz=timezone.utc).isoformat()
            w.writerow([ts, f"{temperature[i]:.4f}", f"{pressure[i]:.5f}"])


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "machine-7.csv"
        write_csv(data)
        sys.exit(main(["replay", str(data), "--out", str(Path(tmp) / "scores.csv"), "--alerts", str(Path(tmp) / "a.jsonl"),
                       "--plot", str(ROOT / "docs" / "img" / "replay.png"), "--no-progress"]))
