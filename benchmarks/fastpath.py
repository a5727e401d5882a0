"""The engine's paths side by side, µs per reading by batch size: the fused path with its own network cell
("fast"), the fused path with torch's batched cell ("hybrid") and the batched path.

Three engines on the same model, each filled with the same fleet (benchmarks/engine.py's stream, every sensor
past calibration), one forced onto each path (`Engine(path="fast" | "hybrid" | "batched")`); their timed
chunks alternate at every batch size, so the ratios compare them under the same machine load. Before timing,
each engine has stepped a single reading, so numba's compile (or its load from the on-disk cache) is never
counted. The crossover is the smallest batch at which the hybrid path is faster than the fast one:
`detector.fastpath.FAST_MAX_BATCH` (where the default switches cells) should sit below it.

    .venv/bin/python benchmarks/fastpath.py           # full run (~2 min), writes results/fastpath.{json,md}
    .venv/bin/python benchmarks/fastpath.py --quick   # smoke run, a few seconds, writes to a temp dir
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from detector.config import DetectorConfig  # noqa: E402
from detector.engine import Engine  # noqa: E402
from detector.fastpath import FAST_MAX_BATCH  # noqa: E402
import engine as bench  # noqa: E402  (benchmarks/engine.py: the stream, the timing, the fill)
import report  # noqa: E402  (benchmarks/report.py)

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_BATCHES = [1, 2, 4, 16, 64, 256, 512, 1024, 4096]


class _Face:
    """What `bench.fill` drives: `score_arrays` on an engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def score_arrays(self, ids, ts, values):
        return self.engine.step(ids, ts, values)


def run(args: argparse.Namespace) -> dict:
    model, model_id = bench.get_model(args.model)
    info = bench.machine_info()
    config = DetectorConfig(capacity=max(args.sensors, 1_000_000))
    stream = bench.Stream(args.sensors, seed=args.seed)
    paths: dict[str, tuple[Engine, bench.Stream]] = {}
    for path in ("fast", "hybrid", "batched"):
        engine = Engine.for_model(model, config, 1, path=path)
        own = copy.copy(stream)  # the same fleet and data for each, each its own position
        started = time.perf_counter()
        engine.step(*bench.engine_batches(own, 1)(1)[0])  # the fused path compiles (or loads its cache) here
        first = time.perf_counter() - started
        bench.fill(_Face(engine), own)
        paths[path] = engine, own
        print(f"{path} path: first reading {first:.2f} s (the fast path compiles or loads its cache in it); "
              f"filled {args.sensors:,} sensors", flush=True)
    cells = []
    for b in args.batches:
        runners = {p: bench.Runner(bench.engine_batches(s, b), e.step, b, probe=lambda st=e.stats: st.network_seconds,
                                   clock=args.clock) for p, (e, s) in paths.items()}
        bench.measure(list(runners.values()), args.seconds, args.warmup)
        fast, hybrid, batched = runners["fast"], runners["hybrid"], runners["batched"]
        cell = {
            "batch": b,
            "fast": fast.summary(),
            "hybrid": hybrid.summary(),
            "batched": batched.summary(),
            "fast_us_per_reading": 1e6 / fast.rate,
            "hybrid_us_per_reading": 1e6 / hybrid.rate,
            "batched_us_per_reading": 1e6 / batched.rate,
            "batched_over_fast": fast.rate / batched.rate,  # how many times faster the fast path is
            "hybrid_over_fast": fast.rate / hybrid.rate,
            "batched_over_hybrid": hybrid.rate / batched.rate,  # how many times faster the hybrid path is
            "fast_kernel_share": fast.probed / fast.seconds["wall"],
        }
        cells.append(cell)
        print(f"  batch {b:>5}: fast {cell['fast_us_per_reading']:8.2f} µs/reading, hybrid "
              f"{cell['hybrid_us_per_reading']:8.2f}, batched {cell['batched_us_per_reading']:8.2f}", flush=True)
    slower = [c["batch"] for c in cells if c["hybrid_over_fast"] < 1.0]
    return {
        "machine": info,
        "command": ".venv/bin/python benchmarks/fastpath.py" + "".join(" " + shlex.quote(a) for a in sys.argv[1:]),
        "settings": {"sensors": args.sensors, "batches": args.batches, "seconds_per_cell": args.seconds,
                     "warmup_seconds": args.warmup, "clock": args.clock, "quick": args.quick},
        "model": {"id": model_id, "hidden_size": model.network.hidden_size, "layers": model.network.layers},
        "fast_max_batch": FAST_MAX_BATCH,
        "crossover_batch": min(slower) if slower else None,
        "cells": cells,
    }


HEADERS = ["batch", "fast path µs/reading", "spread", "hybrid path µs/reading", "spread", "batched path µs/reading",
           "spread", "fast path is", "hybrid path is", "fast path kernel share"]


def table_rows(results: dict) -> list[list[str]]:
    return [[
        str(c["batch"]), f"{c['fast_us_per_reading']:.2f}", bench._spread(c["fast"]),
        f"{c['hybrid_us_per_reading']:.2f}", bench._spread(c["hybrid"]),
        f"{c['batched_us_per_reading']:.2f}", bench._spread(c["batched"]),
        f"{c['batched_over_fast']:.2f}× batched", f"{c['batched_over_hybrid']:.2f}× batched",
        f"{100 * c['fast_kernel_share']:.0f} %",
    ] for c in results["cells"]]


def notes(results: dict) -> list[str]:
    cross = results["crossover_batch"]
    crossover = f"the hybrid path is faster than the fast one from batch {cross:,} on (of those measured)" if cross \
        else "the fast path was the faster at every batch measured"
    return [
        f"Crossover: {crossover}; by default the engine steps the network with the fused path's own cell for waves"
        f" of at most {results['fast_max_batch']} readings (`detector.fastpath.FAST_MAX_BATCH`), with torch's above.",
        f"Medians over ~50 ms chunks on the {results['settings']['clock']} clock; the paths' chunks alternate, so"
        " all see the same machine load. Spread = half the p10–p90 range of the chunk rates. Kernel share = the"
        " fast path's time inside its compiled call (network and views together: `stats.network_seconds`); the rest"
        " is `Engine.step`'s Python around it (checks, id lookup, the result arrays, events).",
    ]


def markdown(results: dict) -> str:
    m, model = results["machine"], results["model"]
    lines = [
        "# Fast, hybrid and batched paths",
        "",
        f"- Machine: {m['cpu']} ({m['logical_cpus']} logical CPUs, load average at start "
        f"{', '.join(f'{x:.2f}' for x in m['load_average_at_start'])}); Python {m['python']}, torch {m['torch']} "
        f"({m['torch_threads']} thread), numpy {m['numpy']}",
        f"- Date: {m['date']}",
        f"- Model: {model['id']} (GRU {model['layers']}×{model['hidden_size']}, univariate sensors); "
        f"{results['settings']['sensors']:,} sensors, each past calibration before timing",
        f"- Reproduce: `{results['command']}`",
        "",
        *report.table_and_notes(HEADERS, table_rows(results), notes(results)),
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sensors", type=int, default=10_000, help="fleet size (default 10,000)")
    p.add_argument("--batches", type=bench._ints, default=None, help="batch sizes (default 1,2,4,16,...,4096)")
    p.add_argument("--seconds", type=float, default=None, help="timed seconds per path and batch (default 1.5)")
    p.add_argument("--warmup", type=float, default=None, help="warm-up seconds per path and batch (default 0.3)")
    p.add_argument("--quick", action="store_true", help="smoke run: 1,000 sensors, batches 1 and 64, 0.1 s cells")
    p.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    p.add_argument("--model", default="gru-default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help=f"results directory (default {RESULTS}; --quick: a temp dir)")
    args = p.parse_args(argv)
    if args.quick:
        args.sensors, args.batches = min(args.sensors, 1_000), args.batches or [1, 64]
        args.seconds, args.warmup = args.seconds or 0.1, args.warmup or 0.05
    args.batches = args.batches or DEFAULT_BATCHES
    args.seconds = 1.5 if args.seconds is None else args.seconds
    args.warmup = 0.3 if args.warmup is None else args.warmup
    args.out = args.out or (Path(tempfile.mkdtemp(prefix="fastpath-bench-")) if args.quick else RESULTS)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    results = run(args)
    report.print_table(f"Fast path and batched path ({results['model']['id'].split(' (')[0]})", HEADERS,
                       table_rows(results), notes(results))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fastpath.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "fastpath.md").write_text(markdown(results))
    print(f"wrote {args.out / 'fastpath.json'} and {args.out / 'fastpath.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
