"""ASD detection-quality benchmark of a hiddenstate model, under a streaming protocol.

    .venv/bin/python benchmarks/asd/run.py
    .venv/bin/python benchmarks/asd/run.py --model gru-default --set clear_m=10 --name clear10
    .venv/bin/python benchmarks/asd/run.py --config my.toml --grace 6 --data ../shared/data/asd --out /tmp/asd

Protocol: each server's file is one sensor with one channel per metric of one `Detector` (the same config
for every server; idle eviction off), replayed in time order, train part first (scored, not evaluated),
then the test part; the servers go side by side, row k of every server in batch k. Nothing is fitted
on labels. Event metrics count alerts where they open (a `raise` AlertEvent); per-row metrics rank
StepResult's `score` (and its `surprise`, once the engine's result has one). A PCA reconstruction-error
reference, fitted on each train part, and a seeded random baseline and an always-alarm baseline are
scored by the same metrics in the same run.

Writes results/<name>.json (metrics pooled and per server, engine diagnostics, config, timings,
machine) and results/baseline-*.json, and regenerates results/asd.md from every record there.
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import benchmarks._bootstrap  # noqa: F401  (first: one BLAS thread, set before numpy and torch load)

# isort: split

import numpy as np
import torch

from benchmarks import runs
from benchmarks.asd import reference, table
from benchmarks.asd.data import DATA_ENV, AsdFile, default_data, load
from benchmarks.asd.engine_run import run_engine
from benchmarks.asd.metrics import evaluate
from benchmarks.machine import machine_info
from benchmarks.report import load_runs, write_json
from benchmarks.streaming import EngineOutput, harness_config
from detector import AlertKind
from detector.errors import HiddenstateError

RESULTS = Path(__file__).resolve().parent / "results"
SCRIPT = ".venv/bin/python benchmarks/asd/run.py"


def data_summary(files: list[AsdFile]) -> dict:
    anomalous_runs = sum(int(np.count_nonzero(np.diff(np.r_[0, f.anomaly[f.train_rows:], 0]) == 1)) for f in files)
    return {
        "servers": len(files),
        "channels": len(files[0].channels),
        "train_rows": sum(f.train_rows for f in files),
        "test_rows": sum(f.test_rows for f in files),
        "anomalous_test_rows": int(sum(f.anomaly[f.train_rows:].sum() for f in files)),
        "segments": sum(len(f.segments) for f in files),
        "anomalous_runs": anomalous_runs,
    }


def engine_diagnostics(files: list[AsdFile], outs: list[EngineOutput]) -> tuple[dict, list[str]]:
    """Per server: raises (all, in test) by cause, and the alert already open when the test part starts."""
    diag, notes = {}, []
    for f, o in zip(files, outs):
        raises = [e for e in o.events if e.kind is AlertKind.RAISE]
        rows = np.searchsorted(f.ts, [e.ts for e in raises]).astype(int)
        d: dict = {
            "raises": len(raises),
            "raises_test": int(np.count_nonzero(rows >= f.train_rows)),
            "causes_test": {},
            "open_at_test_start": None,
        }
        for e, r in zip(raises, rows):
            if r >= f.train_rows:
                d["causes_test"][str(e.cause)] = d["causes_test"].get(str(e.cause), 0) + 1
        before = [(e, int(r)) for e, r in zip(raises, rows) if r < f.train_rows]
        if before and o.alerting[f.train_rows - 1]:
            e, r = before[-1]
            closed = bool(not o.alerting[f.train_rows:].all())
            d["open_at_test_start"] = {"opened_row": r, "channel": f.channels[e.channel], "cause": str(e.cause),
                                       "closed_in_test": closed}
            if not closed:
                notes.append(f"{f.key}: one alert open from train row {r} to the end ({f.channels[e.channel]}, "
                             f"cause {e.cause})")
        diag[f.key] = d
    return diag, notes


def reference_records(files: list[AsdFile], grace: int) -> list[dict]:
    started = time.perf_counter()
    fitted = [reference.pca_reference(f) for f in files]
    pca_seconds = time.perf_counter() - started
    always = "(written with every run)"
    return [
        {
            "kind": "reference",
            "order": 0,
            "name": "PCA reference",
            "description": (
                f"per server: PCA fitted on the train part (standardised, {reference.VARIANCE:.0%} of the variance), "
                f"squared reconstruction error, threshold = train {reference.QUANTILE}th percentile, alert opens at "
                f"{reference.RAISE_K} of the last {reference.RAISE_N} rows above it and closes after "
                f"{reference.CLEAR_M} quiet rows (benchmarks/asd/reference.py); {pca_seconds:.1f} s for all servers"
            ),
            "command": f"{SCRIPT}  {always}",
            "grace": grace,
            "metrics": evaluate(files, [d for d, _ in fitted], grace),
            "fitted": {f.key: info for f, (_, info) in zip(files, fitted)},
            "server_notes": [
                "components kept: " + ", ".join(f"{f.key} {info['components']}" for f, (_, info) in zip(files, fitted))
            ],
        },
        {
            "kind": "baseline",
            "order": 1,
            "name": "random (1 alert / server-day)",
            "description": (
                f"seeded ({reference.SEED}) chance level: uniform per-row scores, alerts opening at random rows, "
                "one per server-day on average, on a random channel"
            ),
            "command": f"{SCRIPT}  {always}",
            "grace": grace,
            "metrics": evaluate(files, [reference.random_alerts(f, i) for i, f in enumerate(files)], grace),
        },
        {
            "kind": "baseline",
            "order": 2,
            "name": "always alarm",
            "description": "one alert open from the first (train) row on, constant score: what a stuck alert scores",
            "command": f"{SCRIPT}  {always}",
            "grace": grace,
            "metrics": evaluate(files, [reference.always_alarm(f) for f in files], grace),
        },
    ]


def main(argv: list[str] | None = None) -> int:
    p = runs.parser(__doc__)
    runs.add_run_arguments(p, f"ASD data folder (default ${DATA_ENV}, else {default_data()})", None, RESULTS)
    p.add_argument("--grace", type=int, default=0,
                   help="rows after a segment's end in which an opening alert still catches it (default 0)")
    p.add_argument("--no-references", action="store_true", help="do not (re)write the PCA and baseline records")
    args = p.parse_args(argv)
    if args.grace < 0:
        raise SystemExit("run.py: --grace must be 0 or more")

    started = time.perf_counter()
    machine = machine_info(threads=1)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config, sets, name = runs.run_config(args)
    with runs.exit_on(*runs.LOAD_ERRORS):
        files = load(args.data)
    load_seconds = time.perf_counter() - started

    with runs.exit_on(HiddenstateError):
        detections, outs, seconds, model_id = run_engine(files, config, args.model)
    diagnostics, stuck = engine_diagnostics(files, outs)
    command = runs.reproduce_command(
        SCRIPT, args,
        ([f"--grace {args.grace}"] if args.grace else [])
        + ([f"--data {shlex.quote(str(args.data))}"] if args.data else []),
    )
    extra = list(outs[0].extra)
    record = {
        "kind": "engine",
        "name": name,
        "description": runs.describe(model_id, args.config, sets) + ", idle_ttl=None",
        "command": command,
        "grace": args.grace,
        "model": args.model,
        "model_id": model_id,
        "config": harness_config(config).model_dump(),
        "default_config": runs.is_default_config(config, args.model),
        "data": data_summary(files),
        "metrics": evaluate(files, detections, args.grace),
        "diagnostics": diagnostics,
        "server_notes": stuck or ["no server has an alert open through the whole test part"],
        "extra_scores": extra or "none: StepResult has no surprise field at this engine version",
        "engine_source": runs.engine_source(),
        "machine": machine,
        "versions": runs.versions(),
        "threads": torch.get_num_threads(),
        "load_seconds": load_seconds,
        "scoring_seconds": seconds,
    }

    args.out.mkdir(parents=True, exist_ok=True)
    if not args.no_references:
        for r in reference_records(files, args.grace):
            write_json(args.out / f"baseline-{runs.slug(r['name'])}.json", r)
    record["total_seconds"] = time.perf_counter() - started
    write_json(args.out / f"{runs.slug(name)}.json", record)
    table.write(args.out)
    table.show(record, load_runs(args.out))
    print(f"scored {record['data']['train_rows'] + record['data']['test_rows']:,} rows; wrote {args.out / 'asd.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
