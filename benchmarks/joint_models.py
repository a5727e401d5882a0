"""Train the models of the joint-channel comparison (docs/quality.md, "Channels modelled jointly").

    .venv/bin/python benchmarks/joint_models.py                 # writes /tmp/hiddenstate-joint/{data,models}
    .venv/bin/python benchmarks/joint_models.py --work DIR --epochs 20

For each data set it trains two models on exactly the same rows with the same settings: a `joint-gru`
(all of a sensor's channels at once, lanes = sensors) and a channel-independent `gru` (lanes =
sensor channels), so the detection runs separate "fitted on this data" from "channels modelled jointly".
What they are trained on (never a row the harnesses score):

- SKAB: `anomaly-free/anomaly-free.csv` only (9,405 rows, no labelled faults), cut into 8 consecutive
  pieces of ~1,175 rows, each a sensor of its own (the harness replays each labelled file, ~1,100 rows, as
  a fresh sensor). The labelled files' 400-row training parts are NOT used: some hold labelled anomalies.
- ASD: the `split = train` rows of each server (the first 8,640; 7,291 for omi-12; unlabelled), one sensor
  per server; the harness evaluates only the `test` rows that follow them.

Then score them with the harnesses (commands in docs/quality.md), e.g.
`benchmarks/skab/run.py --model /tmp/hiddenstate-joint/models/skab-joint --set views=forecast`.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import benchmarks._bootstrap  # noqa: F401  (first: one BLAS thread, set before numpy and torch load)

# isort: split

import numpy as np

from benchmarks.asd.data import default_data as asd_default_data
from benchmarks.asd.data import load as load_asd
from benchmarks.skab.data import DEFAULT_DATA as SKAB_DATA
from detector.cli import main as hiddenstate
from detector.readings.files import read_readings

SKAB_PIECES = 8


def write_csv(path: Path, ts: np.ndarray, names: list[str], values: np.ndarray) -> Path:
    """One sensor's history as a CSV the product reads: `ts` in epoch seconds, then one column per channel."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ts", *names])
        writer.writerows([repr(float(t)), *map(repr, row)] for t, row in zip(ts.tolist(), values.tolist()))
    return path


def skab_history(data: Path, out: Path) -> list[Path]:
    """The anomaly-free file cut into `SKAB_PIECES` consecutive sensors."""
    r = read_readings(data / "anomaly-free" / "anomaly-free.csv")
    pieces = np.array_split(np.arange(len(r.ts)), SKAB_PIECES)
    return [write_csv(out / f"anomaly-free-{i}.csv", r.ts[rows], list(r.channel_names), r.values[rows])
            for i, rows in enumerate(pieces)]


def asd_history(data: Path, out: Path) -> list[Path]:
    """Each server's train rows (before its first test row), one sensor per server."""
    return [write_csv(out / f"{f.key}-train.csv", f.ts[:f.train_rows], f.channels, f.values[:f.train_rows])
            for f in load_asd(data)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("/tmp/hiddenstate-joint"), help="where data and models go")
    p.add_argument("--skab", type=Path, default=SKAB_DATA, help="SKAB data folder")
    p.add_argument("--asd", type=Path, default=None, help="ASD data folder (default: the harness's)")
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--patience", type=int, default=8)
    p.add_argument("--seed", type=int, default=0, help="seed of the split, shuffles and weights (default 0)")
    p.add_argument("--only", choices=["skab", "asd"], help="one data set only")
    args = p.parse_args(argv)

    sets = {
        "skab": lambda: (skab_history(args.skab, args.work / "data" / "skab"), 1 / SKAB_PIECES),
        "asd": lambda: (asd_history(args.asd or asd_default_data(), args.work / "data" / "asd"), 0.1),
    }
    for name, history in sets.items():
        if args.only and name != args.only:
            continue
        files, val_fraction = history()
        for arch in ("joint-gru", "gru"):
            out = args.work / "models" / f"{name}-{arch.split('-')[0]}"
            started = time.perf_counter()
            rc = hiddenstate(["train", *map(str, files), "--arch", arch, "--hidden", str(args.hidden),
                              "--epochs", str(args.epochs), "--patience", str(args.patience),
                              "--val-fraction", str(val_fraction), "--seed", str(args.seed), "--out", str(out),
                              "--name", f"{name}-{arch}"])
            if rc:
                return rc
            print(f"{out}: {time.perf_counter() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
