"""The model zoo side by side: size, fit, engine throughput and SKAB detection of every shipped model.

For each model in models/ (or --models), in ONE run:

- parameters and state: weights, and bytes of network state per channel (`network.state_size(1)`
  float32s, plus a look-ahead model's pending line: k readings' time, value and frame);
- fit: Gaussian NLL and MSE of the normalised target on held-out simulated sensors (the seed-0
  validation split of the training data of `hiddenstate train --synthetic 1024 --steps 3000`), over
  steps 10 and later (the readings the engine scores), with persistence ("no change") as reference;
- readings/s of the full engine (`Detector.score_arrays`) on a 10,000-sensor univariate fleet at
  batch 4096 and batch 1, with benchmarks/engine.py's stream, fill and timer, the models' chunks
  alternating so they share the machine's conditions (process CPU clock, median of ~50 ms chunks);
- SKAB outlier F1 / FAR / MAR and NAB standard (alert open), read from
  benchmarks/skab/results/runs/<model>.json (`benchmarks/skab/run.py --model NAME` writes it).

    .venv/bin/python benchmarks/models.py                 # all shipped models, writes benchmarks/results/models.{md,json}
    .venv/bin/python benchmarks/models.py --models gru-default,bidir-default --seconds 1
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from detector.scoring import calibration  # noqa: E402
from detector.model.store import Model, load_model, shipped_model_names  # noqa: E402
from detector.model.networks import masked_nll  # noqa: E402
from detector.readings.synthetic import Fleet  # noqa: E402
from detector.model.training import _split, prepare, previous_value, targets_and_mask  # noqa: E402
from engine import RESULTS, Runner, Stream, engine_batches, fill, make_detector, measure  # noqa: E402
from machine import cpu_model  # noqa: E402

SKAB_RUNS = Path(__file__).resolve().parent / "skab" / "results" / "runs"
FLEET = 10_000


def state_bytes(model: Model) -> int:
    """Network state per channel, in bytes, with a look-ahead model's pending line (ts f64, value f64,
    mean f64, std f32 per pending reading)."""
    return 4 * model.network.state_size(1) + model.network.lookahead * (8 + 8 + 8 + 4)


def held_out(sensors: int, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The validation lanes of `hiddenstate train --synthetic sensors --steps steps --seed 0`."""
    ts, values, _ = Fleet(sensors, seed=1, anomaly_rate=0.0).run(steps)
    x, y = prepare(ts, values, 500.0)
    val, _ = _split(np.arange(x.shape[0]), 0.1, np.random.default_rng(0))
    return torch.from_numpy(np.ascontiguousarray(x[val])), torch.from_numpy(np.ascontiguousarray(y[val]))


@torch.no_grad()
def fit(model: Model, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """NLL, MSE and persistence MSE over the steps the engine scores (10 and later)."""
    net = model.network.eval()
    lengths = torch.full((x.shape[0],), x.shape[1])
    target, mask = targets_and_mask(x, y, lengths, net.target_offset)
    mask = mask & (torch.arange(x.shape[1]) >= calibration.MIN_READINGS)[None, :]
    mean, logvar, _ = net(x)
    total, count = masked_nll(mean, logvar, target, mask)
    prev, exists = previous_value(x, net.target_offset)
    keep = mask & exists
    return {"nll": float(total / count), "mse": float(((mean - target) ** 2)[mask].mean()),
            "persistence_mse": float(((prev - target) ** 2)[keep].mean())}


def throughput(models: dict[str, Model], batches: list[int], seconds: float) -> dict[str, dict[int, float]]:
    """Readings/s of the engine per model and batch size, all runners alternating."""
    runners: dict[tuple[str, int], Runner] = {}
    for name, model in models.items():
        for b in batches:
            stream = Stream(FLEET, seed=0)
            det = make_detector(model, FLEET)
            fill(det, stream)
            runners[(name, b)] = Runner(engine_batches(stream, b), det.score_arrays, b)
    measure(list(runners.values()), seconds, 0.3)
    return {name: {b: runners[(name, b)].rate for b in batches} for name in models}


def skab(name: str) -> dict | None:
    path = SKAB_RUNS / f"{name}.json"
    if not path.is_file():
        return None
    run = json.loads(path.read_text())
    pooled = run["variants"][run["headline"]]["all"]
    return {"f1": pooled["f1"], "far": pooled["far"], "mar": pooled["mar"], "nab": pooled["nab_standard"],
            "model_id": run["model_id"], "date": run["date"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=None, help="comma-separated names or paths (default: every shipped model)")
    p.add_argument("--seconds", type=float, default=2.0, help="timed seconds per (model, batch) cell")
    p.add_argument("--sensors", type=int, default=1024, help="simulated sensors of the fit data (10 %% held out)")
    p.add_argument("--steps", type=int, default=3000, help="steps per simulated sensor")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    names = args.models.split(",") if args.models else shipped_model_names()
    models = {n: load_model(n) for n in names}

    print(f"fit data: {args.sensors} simulated sensors x {args.steps} steps (seed-0 validation split) ...", flush=True)
    x, y = held_out(args.sensors, args.steps)
    fits = {n: fit(m, x, y) for n, m in models.items()}
    print(f"engine throughput: {FLEET:,} sensors, batches 4096 and 1, {args.seconds} s per cell ...", flush=True)
    rates = throughput(models, [4096, 1], args.seconds)

    rows = []
    for n, m in models.items():
        rows.append({"model": n, "model_id": m.model_id, "summary": m.meta.get("summary", ""),
                     "architecture": m.network.hyperparameters, "params": sum(t.numel() for t in m.network.parameters()),
                     "state_bytes_per_channel": state_bytes(m), "lookahead": m.network.lookahead,
                     **fits[n], "readings_per_s_4096": rates[n][4096], "readings_per_s_1": rates[n][1],
                     "skab": skab(n)})
    results = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu": cpu_model(),
               "torch": torch.__version__, "command": "python benchmarks/models.py " + " ".join(sys.argv[1:]),
               "fleet": FLEET, "fit_data": {"sensors": args.sensors, "steps": args.steps}, "models": rows}
    md = markdown(results)
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "models.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "models.md").write_text(md)
    return 0


def markdown(results: dict) -> str:
    lines = [
        "# Model zoo", "",
        f"`{results['command'].strip()}` on {results['cpu']}, torch {results['torch']}, {results['date']}.", "",
        "| model | params | state / channel | look-ahead | val NLL | val MSE (persistence) | readings/s, batch 4096 "
        "| readings/s, batch 1 | SKAB F1 / FAR % / MAR % | SKAB NAB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in results["models"]:
        s = r["skab"]
        sk, nab = (f"{s['f1']:.3f} / {s['far']:.2f} / {s['mar']:.2f}", f"{s['nab']:.2f}") if s else ("–", "–")
        lines.append(
            f"| `{r['model']}` | {r['params']:,} | {r['state_bytes_per_channel']:,} B | {r['lookahead']} "
            f"| {r['nll']:.3f} | {r['mse']:.3f} ({r['persistence_mse']:.3f}) | {r['readings_per_s_4096']:,.0f} "
            f"| {r['readings_per_s_1']:,.0f} | {sk} | {nab} |"
        )
    lines += ["", f"Fit: held-out {results['fit_data']['sensors'] // 10} of {results['fit_data']['sensors']} simulated "
              "sensors, steps 10 and later; throughput: the full engine on a "
              f"{results['fleet']:,}-sensor fleet, models' chunks alternating in one run (compare rows with each "
              "other); SKAB: alert open, all 34 files, from benchmarks/skab/results/runs/.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
