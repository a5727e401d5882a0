"""Which engine settings move SKAB's F1 / FAR / MAR: one setting at a time, or a grid.

    .venv/bin/python benchmarks/skab/sweep.py                                   # the default one-at-a-time sweep
    .venv/bin/python benchmarks/skab/sweep.py --vary threshold=0.99,0.999 --vary clear_m=10,300 --product
    .venv/bin/python benchmarks/skab/sweep.py --base clear_m=600 --vary threshold=0.99,0.995,0.999

Every configuration is one full streaming run of the 34 files (same protocol and metrics as run.py,
~2 s each). Writes results/sweep[-NAME].md: per configuration, both outputs (alert open,
per-row flag), pooled and per subset (valve1, valve2, other). This is exploration ON THE BENCHMARK'S
OWN LABELS: a setting picked from it is tuned in-sample, and the subset columns show whether it
holds across the three recording days. `--json` also writes the numbers as JSON.
"""

from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import benchmarks._bootstrap  # noqa: F401  (first: one BLAS thread, set before numpy and torch load)

# isort: split

import torch

from benchmarks.report import write_json
from benchmarks.runs import parse_sets, parser
from benchmarks.skab.data import DEFAULT_DATA, SUBSETS, load
from benchmarks.skab.evaluate import diagnose, evaluate
from benchmarks.skab.run import RESULTS
from benchmarks.streaming import score_files
from detector import load_config

DEFAULT_VARY = {
    "threshold": [0.9, 0.95, 0.99, 0.995, 0.9999],
    "short_window": [1, 4, 16, 32, 64],
    "long_window": [100, 300, 3000, 10000],
    "norm_window": [50, 100, 2000, 10000, 1000000],
    "warmup": [20, 200, 400],
    "raise_k": [1, 2, 3, 5],
    "clear_m": [1, 3, 30, 60, 120, 300, 1000],
    "raise_n": [4, 8, 16],
}


def parse_vary(items: list[str]) -> dict[str, list[object]]:
    out: dict[str, list[object]] = {}
    for item in items:
        key, _, raw = item.partition("=")
        out[key] = [parse_sets([f"{key}={v}"])[key] for v in raw.split(",")]
    return out


def configurations(base: dict, vary: dict[str, list[object]], product: bool) -> list[dict]:
    if product:
        keys = list(vary)
        return [{**base, **dict(zip(keys, combo))} for combo in itertools.product(*(vary[k] for k in keys))]
    configs = [dict(base)]
    for key, values in vary.items():
        configs += [{**base, key: v} for v in values]
    return configs


KEPT = ("f1", "far", "mar", "nab_standard", "nab_low_fp", "nab_low_fn", "nab_missed", "nab_false_positives",
        "cp_missed", "cp_false_positives")


def compact(metrics: dict) -> dict:
    """The headline numbers of each pooled group (all, valve1, valve2, other), rounded: keeps the JSON small."""
    return {group: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in m.items() if k in KEPT}
            for group, m in metrics.items() if group != "files"}


def fmt(m: dict) -> str:
    return f"{m['f1']:.2f} / {m['far']:.1f} / {m['mar']:.1f} / {m['nab_standard']:.1f}"


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--model", default="gru-default")
    p.add_argument("--base", action="append", default=[], metavar="KEY=VALUE",
                   help="setting held in every configuration")
    p.add_argument("--vary", action="append", default=[], metavar="KEY=V1,V2,...", help="values to try (repeatable)")
    p.add_argument("--product", action="store_true", help="all combinations of --vary values (default: one at a time)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--name", default="", help="suffix of the output files: sweep-NAME.md (and .json)")
    p.add_argument("--json", action="store_true", help="also write sweep-NAME.json (every configuration's numbers)")
    args = p.parse_args(argv)

    torch.set_num_threads(1)
    base = parse_sets(args.base)
    vary = parse_vary(args.vary) if args.vary else DEFAULT_VARY
    files = load(args.data)
    rows = []
    started = time.perf_counter()
    for sets in configurations(base, vary, args.product):
        config = load_config(None, model=args.model, **sets)
        outs, seconds, model_id = score_files(files, config, args.model)
        diag = diagnose(files, outs)["totals"]
        rows.append({
            "settings": sets,
            "alert": compact(evaluate(files, [o.alerting for o in outs])),
            "flag": compact(evaluate(files, [o.anomalous for o in outs])),
            "alert_by_time_since_onset": diag["alert_by_time_since_onset"],
            "seconds": seconds,
        })
        a = rows[-1]["alert"]
        subsets = " | ".join(f"{s} {fmt(a[s])}" for s in SUBSETS)
        print(f"{sets or 'default'}: alert {fmt(a['all'])} | {subsets}", flush=True)
    stem = f"sweep-{args.name}" if args.name else "sweep"
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"model": args.model, "model_id": model_id, "base": base, "vary": vary, "product": args.product,
              "seconds": time.perf_counter() - started, "rows": rows}
    if args.json:
        write_json(args.out / f"{stem}.json", record, indent=None)
    lines = [
        f"# SKAB sweep{': ' + args.name if args.name else ''}",
        "",
        f"Model {model_id}; base settings {base or 'defaults'}; "
        f"{'all combinations' if args.product else 'one setting at a time'}."
        f" Cells: F1 / FAR % / MAR % / NAB standard on the test part. Generated by `benchmarks/skab/sweep.py`"
        f" in {record['seconds']:.0f} s.",
        "",
        "| settings | output | all | " + " | ".join(SUBSETS)
        + " | alert share of anomalous rows by time since onset (0–60 s / 60–180 s / >180 s) |",
        "|---|---|---|" + "---|" * len(SUBSETS) + "---|",
    ]
    for r in rows:
        label = ", ".join(f"{k}={v}" for k, v in r["settings"].items()) or "defaults"
        onset = " / ".join(f"{v:.2f}" if v is not None else "–" for v in r["alert_by_time_since_onset"].values())
        for out in ("alert", "flag"):
            m = r[out]
            lines.append(f"| {label} | {out} | {fmt(m['all'])} | " + " | ".join(fmt(m[s]) for s in SUBSETS)
                         + f" | {onset if out == 'alert' else ''} |")
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out / (stem + '.md')} in {record['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
