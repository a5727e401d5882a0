"""SKAB detection-quality benchmark of a hiddenstate model, under a streaming protocol.

    .venv/bin/python benchmarks/skab/run.py --model gru-default
    .venv/bin/python benchmarks/skab/run.py --model gru-default --set clear_m=60 --set threshold=0.99 --name tuned
    .venv/bin/python benchmarks/skab/run.py --model gru-default --config my.toml --no-plots

Protocol (SKAB's own, see docs/quality.md): each of the 34 labelled files is replayed in time order as
its own sensor; every row is scored once, on arrival, by the engine with the given config (the same
config for every file); nothing is fitted on labels, the threshold is the engine's calibrated one.
The first 400 rows of each file are the training part (the engine warms up on them) and are not
scored; metrics are computed on the remaining rows, pooled over files. The per-row prediction is the
engine's `alerting` flag (an alert is open: the product's output, the headline) and, as a second
variant, its per-row `anomalous` flag.

Writes results/runs/<name>.json (every metric, per subset and per file, engine diagnostics, config,
timings), plots results/plots/<name>-<subset>.png, and regenerates results/skab.md and
results/skab.json from all run records. The always-alarm baseline and SKAB's T² reference are
recorded too (cheap; `--no-baselines` to skip).
"""

from __future__ import annotations

import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import benchmarks._bootstrap  # noqa: F401  (first: one BLAS thread, set before numpy and torch load)

# isort: split

import numpy as np
import torch

from benchmarks import runs
from benchmarks.ranking import ranking
from benchmarks.report import write_json
from benchmarks.skab import reference, table
from benchmarks.skab.data import DEFAULT_DATA, SkabFile, load
from benchmarks.skab.evaluate import diagnose, evaluate
from benchmarks.skab.metrics import TRAIN_ROWS
from benchmarks.streaming import EngineOutput, harness_config, score_files
from detector import DetectorConfig
from detector.errors import HiddenstateError

RESULTS = Path(__file__).resolve().parent / "results"
SCRIPT = ".venv/bin/python benchmarks/skab/run.py"


def run_engine(files: list[SkabFile], config: DetectorConfig, model: str, isolated: bool) -> tuple[dict, list]:
    outs, seconds, model_id = score_files(files, config, model, isolated=isolated, fields=("surprise",))
    variants = {
        "alert": evaluate(files, [o.alerting for o in outs]),
        "flag": evaluate(files, [o.anomalous for o in outs]),
    }
    record = {
        "kind": "engine",
        "model": model,
        "model_id": model_id,
        "config": harness_config(config).model_dump(),
        "headline": "alert",
        "variants": variants,
        "ranking": test_part_ranking(files, outs),
        "diagnostics": diagnose(files, outs),
        "scoring_seconds": seconds,
        "rows": int(sum(len(f) for f in files)),
        "isolated": isolated,
    }
    return record, outs


def test_part_ranking(files: list[SkabFile], outs: list[EngineOutput]) -> dict[str, float]:
    """ROC-AUC and top ties of the per-row score (and surprise) over every file's test part, pooled."""
    label = np.concatenate([f.anomaly[TRAIN_ROWS:] for f in files])
    out = ranking("score", np.concatenate([o.score[TRAIN_ROWS:] for o in outs]), label)
    if all("surprise" in o.extra for o in outs):
        out.update(ranking("surprise", np.concatenate([o.extra["surprise"][TRAIN_ROWS:] for o in outs]), label))
    return out


def baseline_records(files: list[SkabFile]) -> list[dict]:
    always = evaluate(files, [reference.always_alarm(len(f)) for f in files])
    t2 = evaluate(files, [reference.t2_reference(f.values)[0] for f in files])
    return [
        {
            "kind": "baseline",
            "order": 0,
            "name": "always-alarm",
            "description": "baseline computed by this harness: alarm on every row",
            "command": ".venv/bin/python benchmarks/skab/run.py --model <any>  (written with every run)",
            "variants": {"alarm": always},
        },
        {
            "kind": "baseline",
            "order": 1,
            "name": "T² reference (re-implemented)",
            "description": (
                "SKAB's 'T-squared' pipeline re-implemented in benchmarks/skab/reference.py (fit on the 400 training "
                "rows, rolling median of 5, alarm above 2·UCL): a check of this harness against the published "
                "T-squared row"
            ),
            "command": ".venv/bin/python benchmarks/skab/run.py --model <any>  (written with every run)",
            "variants": {"alarm": t2},
        },
    ]


def main(argv: list[str] | None = None) -> int:
    p = runs.parser(__doc__)
    runs.add_run_arguments(p, f"SKAB data folder (default {DEFAULT_DATA})", DEFAULT_DATA, RESULTS)
    p.add_argument("--no-plots", action="store_true", help="skip the per-subset figures")
    p.add_argument("--no-baselines", action="store_true", help="do not (re)write the baseline records")
    p.add_argument("--isolated", action="store_true",
                   help="a fresh Detector per file, one file after another (slow; same results)")
    p.add_argument("--note", default="", help="text added to the run's description in the table")
    args = p.parse_args(argv)

    started = time.perf_counter()
    torch.set_num_threads(1)
    config, sets, name = runs.run_config(args)
    with runs.exit_on(*runs.LOAD_ERRORS):
        files = load(args.data)

    with runs.exit_on(HiddenstateError):
        record, outs = run_engine(files, config, args.model, args.isolated)
    record.update(
        name=name,
        description=runs.describe(record["model_id"], args.config, sets) + (f" ({args.note})" if args.note else ""),
        command=runs.reproduce_command(SCRIPT, args),
        default_config=runs.is_default_config(config, args.model),
        engine_source=runs.engine_source(),
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        versions=runs.versions(),
        threads=torch.get_num_threads(),
    )

    runs_dir = args.out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    if not args.no_plots:
        from benchmarks.skab.plots import plot_subsets

        plots_dir = args.out / "plots"
        plots_dir.mkdir(parents=True, exist_ok=True)
        paths = plot_subsets(files, outs, config.threshold, f"{name} ({record['model_id']})", plots_dir,
                             runs.slug(name))
        record["plots"] = [str(p.relative_to(args.out)) for p in paths]
    if not args.no_baselines:
        for b in baseline_records(files):
            write_json(runs_dir / f"baseline-{runs.slug(b['name'])}.json", b)
    record["total_seconds"] = time.perf_counter() - started
    write_json(runs_dir / f"{runs.slug(name)}.json", record)
    table.write(args.out)

    for variant, m in record["variants"].items():
        a = m["all"]
        print(
            f"{name} [{variant}]: F1 {a['f1']:.3f}  FAR {a['far']:.2f} %  MAR {a['mar']:.2f} %  "
            f"NAB {a['nab_standard']:.2f} / {a['nab_low_fp']:.2f} / {a['nab_low_fn']:.2f}  "
            f"missed {a['nab_missed']}/{a['nab_windows']}  FP CPs {a['nab_false_positives']}"
        )
    r = record["ranking"]
    print(f"{name} per-row score: ROC-AUC {r['auc_score']:.3f}, top tie {r['top_tie_score']:.2%} of test rows, "
          f"{r['top_tie_normal_score']:.2%} of normal ones")
    print(f"scored {record['rows']:,} rows in {record['scoring_seconds']:.1f} s; "
          f"whole run {record['total_seconds']:.1f} s; "
          f"wrote {args.out / 'skab.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
