"""Hidden state across weights versions: kept (what the engine does) vs reset at every new version.

    .venv/bin/python benchmarks/version_states.py      # ~2 min; writes benchmarks/results/version_states.{json,md}

With `learning = "online"` the shared weights change every few batches. The engine keeps each sensor's
hidden state across a version change (detector/model/learning.py). The other way, that each sensor's
state be made again by the new weights, is measured here by its cheapest form: at every new version
every sensor's hidden state and forecast are reset, exactly as after a long gap (`max_gap`), so the new
weights warm each sensor up again from its next readings. (Re-running the new weights over each sensor's
recent readings would need a per-sensor history the pool does not keep.) Both run the ASD harness
(benchmarks/asd: 12 servers x 19 metrics, train part then test part) with the same settings in one
process, and are scored by its event metrics.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import benchmarks._bootstrap  # noqa: F401  (first: one BLAS thread, set before numpy and torch load)

# isort: split

import argparse

import numpy as np
import torch

from benchmarks.asd.data import default_data, load
from benchmarks.asd.engine_run import run_engine
from benchmarks.asd.metrics import evaluate
from benchmarks.machine import machine_info
from benchmarks.report import write_json
from detector import DetectorConfig
from detector.engine import Engine

RESULTS = Path(__file__).resolve().parent / "results"
COMMAND = ".venv/bin/python benchmarks/version_states.py"


@contextmanager
def reset_at_every_version():
    """Engine.step resets every sensor's hidden state and forecast after a step that brought a new version."""
    step = Engine.step

    def resetting(self: Engine, *args, **kwargs):
        before = self.weights_version
        out = step(self, *args, **kwargs)
        if self.weights_version != before:
            rows = slice(0, self.pool.allocated)
            self.pool.hidden[rows] = 0.0
            self.pool.since_reset[rows] = 0
            self.pool.forecast[rows] = np.nan
            self.pool.forecast_logvar[rows] = np.nan
        return out

    Engine.step = resetting
    try:
        yield
    finally:
        Engine.step = step


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=None, help=f"ASD folder (default {default_data()})")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    files = load(args.data)
    config = DetectorConfig(learning="online")
    rows = {}
    for name in ("kept", "reset"):
        torch.manual_seed(0)
        started = time.perf_counter()
        if name == "kept":
            detections, *_ = run_engine(files, config)
        else:
            with reset_at_every_version():
                detections, *_ = run_engine(files, config)
        rows[name] = {**evaluate(files, detections, 0)["all"], "seconds": round(time.perf_counter() - started, 1)}
    lines = ["# Hidden state across weights versions (ASD, learning = online)", "",
             f"`{COMMAND}`: kept = the engine's behaviour; reset = every sensor's hidden state and forecast reset at "
             "every new version, as after a long gap. Same settings, same process.", "",
             "| hidden state at a new version | event F1 | caught | false alerts / server-day | reasons | ROC-AUC |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, m in rows.items():
        lines.append(f"| {name} | {m['f1']:.3f} | {m['caught']}/{m['segments']} | {m['false_per_day']:.2f} | "
                     f"{m['reason_hit_rate']:.2f} | {m['auc_score']:.3f} |")
    text = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "version_states.md").write_text(text)
    write_json(args.out / "version_states.json", {"command": COMMAND, "config": config.model_dump(), "rows": rows,
                                                  "machine": machine_info(threads=1)})
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
