"""`hiddenstate train`: fit a forecaster on history and write a model directory.

`--synthetic SENSORS` trains on the anomaly-free simulated fleet; this is how the
shipped `gru-default` model is made (see models/gru-default/MODEL_CARD.md).
Files (CSV or JSON lines, as `replay` reads them) train on your own history.
"""

from __future__ import annotations

import argparse
import platform
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from detector import __version__
from detector.errors import InputFileError
from detector.model_store import CARD, save_model
from detector.training import TrainConfig, prepare, train


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="*", type=Path, help="CSV or JSON-lines history (as for replay)")
    parser.add_argument("--synthetic", type=int, metavar="SENSORS", help="train on a simulated clean fleet of this many sensors")
    parser.add_argument("--steps", type=int, default=3000, help="steps per simulated sensor (default 3000)")
    parser.add_argument("--out", type=Path, required=True, help="model directory to write")
    parser.add_argument("--name", help="model name (default: the directory's name)")
    parser.add_argument("--hidden", type=int, default=32, help="hidden units per layer (default 32)")
    parser.add_argument("--layers", type=int, default=1, help="stacked layers (default 1)")
    parser.add_argument("--chunk", type=int, default=64, help="TBPTT chunk length k1 = k2 (default 64)")
    parser.add_argument("--epochs", type=int, default=8, help="most epochs; the best by validation loss is kept")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-column", help="timestamp column (default: detected)")
    parser.add_argument("--sensor-column", help="sensor id column (default: a column named sensor_id, else one sensor per file)")


def run(args: argparse.Namespace) -> int:
    cfg = TrainConfig(
        hidden_size=args.hidden, layers=args.layers, chunk=args.chunk, epochs=args.epochs, lr=args.lr, seed=args.seed
    )
    if args.synthetic:
        from detector.synthetic import Fleet

        ts, values, _ = Fleet(args.synthetic, seed=args.seed + 1, anomaly_rate=0.0).run(args.steps)
        x, y = prepare(ts, values, cfg.norm_window)
        data = {"source": "detector.synthetic.Fleet (anomaly-free)", "sensors": args.synthetic, "steps": args.steps}
    elif args.files:
        x, y, data = _from_files(args, cfg)
    else:
        raise InputFileError("give history files or --synthetic SENSORS")

    from rich.console import Console

    console = Console(stderr=True)
    console.print(f"training on {x.shape[0]} lanes × {x.shape[1]} steps")

    def progress(epoch: int, epochs: int, train_loss: float, val_loss: float) -> None:
        console.print(f"epoch {epoch}/{epochs}  train NLL {train_loss:.4f}  validation NLL {val_loss:.4f}")

    name = args.name or args.out.name
    model, metrics = train(x, y, cfg, name=name, progress=progress)
    model.meta.update(
        summary="GRU forecaster with Gaussian head, channel-independent, shared across sensors",
        trained={
            "data": data,
            "config": vars(cfg),
            "command": "hiddenstate train " + " ".join(_argv(args)),
            "hiddenstate": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "date": datetime.now(timezone.utc).date().isoformat(),
        },
        metrics=metrics,
    )
    save_model(model, args.out)
    (args.out / CARD).write_text(_card(model.meta))
    console.print(f"wrote {args.out} ({model.model_id}); validation NLL {metrics['val_nll']}")
    return 0


def _from_files(args: argparse.Namespace, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray, dict]:
    from detector.readers import read_readings

    xs, ys, rows = [], [], 0
    for path in args.files:
        readings = read_readings(path, time_column=args.time_column, sensor_column=args.sensor_column)
        ids = np.asarray(readings.sensor_ids)
        for sensor in dict.fromkeys(readings.sensor_ids):
            pick = ids == sensor
            if pick.sum() < cfg.chunk + 1:
                continue
            x, y = prepare(readings.ts[pick], readings.values[pick][:, None, :], cfg.norm_window)
            xs.append(x)
            ys.append(y)
            rows += int(pick.sum())
    if not xs:
        raise InputFileError(f"no sensor in {', '.join(map(str, args.files))} has more than {cfg.chunk} readings")
    length = min(x.shape[1] for x in xs)  # equal-length lanes; longer histories are cut at the end
    x = np.concatenate([x[:, :length] for x in xs])
    y = np.concatenate([y[:, :length] for y in ys])
    return x, y, {"source": [str(p) for p in args.files], "rows": rows}


def _argv(args: argparse.Namespace) -> list[str]:
    out = [str(p) for p in args.files]
    for key in ("synthetic", "steps", "hidden", "layers", "chunk", "epochs", "lr", "seed"):
        out += [f"--{key}", str(getattr(args, key))]
    return out + ["--out", str(args.out)]


def _card(meta: dict) -> str:
    t, m = meta["trained"], meta["metrics"]
    hp = meta["hyperparameters"]
    return f"""# Model card: {meta['name']}

**What it is.** {meta.get('summary', '')}. Architecture `{hp['architecture']}`, {hp['layers']} layer(s) of
{hp['hidden_size']} units; input per channel: the normalised value and the log time-delta ratio; output: the
next normalised value (as a change from the current one) and its log-variance. Weights are shared by all
sensors and channels; each sensor keeps {hp['layers']}×{hp['hidden_size']} floats of hidden state per channel.

**Trained on.** {t['data']}.

**How.** Truncated BPTT (k1 = k2 = {t['config']['chunk']}), Adam lr {t['config']['lr']}, gradient clipping
{t['config']['clip']}, Gaussian negative log-likelihood, {t['config']['epochs']} epochs at most with the best
validation epoch kept ({int(t['config']['val_fraction'] * 100)} % of lanes held out), seed {t['config']['seed']}.
Reproduce with:

    {t['command']}

(hiddenstate {t['hiddenstate']}, torch {t['torch']}, Python {t['python']}, {t['date']}.)

**Scores.** Validation Gaussian NLL {m['val_nll']} (best epoch {m['best_epoch']}); validation MSE of the
normalised next value {m['val_mse']} against {m['persistence_val_mse']} for "no change" (persistence).
Training took {m['train_seconds']} s on one CPU thread.

**Checksum.** `weights.safetensors` SHA-256 `{meta['sha256']}` (verified at load).

**Limits.** Trained on simulated signals (seasonal, drifting, AR noise, regime steps); it knows nothing of any
particular plant. Detection quality on real data is reported in docs/quality.md once measured.
"""
