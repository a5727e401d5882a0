"""`hiddenstate train`: fit a network on history and write a model directory.

`--synthetic SENSORS` trains on the anomaly-free simulated fleet; this is how the shipped
models are made (each card in models/*/MODEL_CARD.md gives its exact command). Files (CSV or
JSON lines, as `replay` reads them) train on your own history; sensors may have histories of
different lengths (padded, and masked out of the loss).

A checkpoint (`checkpoint.pt` in the output directory) is written after every epoch; after an
interruption, the same command with `--resume` carries on from it and ends with the same
weights as an uninterrupted run. It is removed once the model is written (unless
`--keep-checkpoint`).
"""

from __future__ import annotations

import argparse
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detector.version import __version__
from detector.config import load_config
from detector.errors import ConfigError, InputFileError
from detector.model.store import CARD, save_model
from detector.model.networks import ACTIVATIONS
from detector.model.training import Callbacks, EpochReport, TrainConfig, pad_lanes, prepare, prepare_joint, train
from detector.settings import load_settings

CHECKPOINT = "checkpoint.pt"
MIN_READINGS = 16
"""Sensors with fewer readings than this are not trained on."""

SUMMARIES = {
    "gru": "GRU forecaster with Gaussian head, channel-independent, shared across sensors",
    "lstm": "LSTM forecaster with Gaussian head, channel-independent, shared across sensors",
    "rnn": "Standard RNN ({activation}) forecaster with Gaussian head, channel-independent, shared across sensors",
    "encdec": "Encoder-decoder GRU reconstructing the current reading from the last {window}, shared across sensors",
    "bidir": "Bidirectional GRU scoring each reading after {lookahead} more, shared across sensors",
    "joint-gru": "GRU forecaster over all {channels} channels of a sensor at once, with a Gaussian head per channel, "
                 "shared across sensors with these channels",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="*", type=Path, help="CSV or JSON-lines history (as for replay)")
    parser.add_argument("--synthetic", type=int, metavar="SENSORS",
                        help="train on a simulated clean fleet of this many sensors")
    parser.add_argument("--steps", type=int, default=3000, help="steps per simulated sensor (default 3000)")
    parser.add_argument("--out", type=Path, required=True, help="model directory to write")
    parser.add_argument("--name", help="model name (default: the directory's name)")
    parser.add_argument("--config", metavar="FILE", help="TOML file: its [train] table (flags win, then "
                        "HIDDENSTATE_TRAIN_* variables) and the [detector] norm_window the engine will use")
    arch = parser.add_argument_group("network")
    arch.add_argument("--arch", choices=["gru", "lstm", "rnn", "encdec", "bidir", "joint-gru"],
                      help="architecture (default gru); joint-gru reads all of a sensor's channels at once and "
                      "is fixed to the training data's channels")
    arch.add_argument("--activation", choices=ACTIVATIONS, help="rnn activation (default tanh)")
    arch.add_argument("--negative-slope", type=float,
                      help="leaky_relu slope, or prelu's initial learned slope (default 0.01)")
    arch.add_argument("--hidden", type=int, help="hidden units per layer (default 32)")
    arch.add_argument("--layers", type=int, help="stacked layers (default 1)")
    arch.add_argument("--window", type=int, help="encdec: readings per window (default 32)")
    arch.add_argument("--lookahead", type=int, help="bidir: readings of look-ahead k (default 4)")
    fit = parser.add_argument_group("fitting")
    fit.add_argument("--k1", type=int, help="TBPTT: steps between parameter updates (default 64)")
    fit.add_argument("--k2", type=int, help="TBPTT: steps backpropagated, >= k1 (default k1)")
    fit.add_argument("--chunk", type=int, help="shorthand for --k1 N --k2 N")
    fit.add_argument("--epochs", type=int, help="most epochs; the best by validation loss is kept")
    fit.add_argument("--patience", type=int,
                     help="stop after this many epochs without a better validation loss (default 3; 0: never)")
    fit.add_argument("--batch-lanes", type=int, help="lanes (sensor channels) per batch (default 128)")
    fit.add_argument("--lr", type=float, help="Adam learning rate (default 0.003)")
    fit.add_argument("--clip", type=float, help="gradient norm clipping (default 1.0)")
    fit.add_argument("--val-fraction", type=float, help="share of sensors held out for validation")
    fit.add_argument("--seed", type=int, help="seed of the split, the shuffles and the weights (default 0)")
    fit.add_argument("--resume", action="store_true", help=f"continue from {CHECKPOINT} in --out")
    fit.add_argument("--keep-checkpoint", action="store_true", help=f"keep {CHECKPOINT} after writing the model")
    parser.add_argument("--time-column", help="timestamp column (default: detected)")
    parser.add_argument("--sensor-column",
                        help="sensor id column (default: a column named sensor_id, else one sensor per file)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig from --config's [train] table, HIDDENSTATE_TRAIN_* variables and the flags.

    The inputs are normalised as the engine will normalise them: `norm_window` comes from the same
    file's [detector] settings (and HIDDENSTATE_NORM_WINDOW), and is recorded in the model.
    """
    k1 = args.k1 or args.chunk
    k2 = args.k2 or (args.chunk if args.chunk and not args.k1 else k1)
    try:
        return load_settings(
            TrainConfig, args.config,
            architecture=args.arch, hidden_size=args.hidden, layers=args.layers, activation=args.activation,
            negative_slope=args.negative_slope, window=args.window, lookahead=args.lookahead, k1=k1, k2=k2,
            epochs=args.epochs, batch_lanes=args.batch_lanes, lr=args.lr, clip=args.clip,
            val_fraction=args.val_fraction, patience=args.patience, seed=args.seed,
            norm_window=load_config(args.config).norm_window,
        )
    except ConfigError as exc:
        raise InputFileError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    lengths = groups = None
    if args.synthetic:
        from detector.readings.synthetic import Fleet

        ts, values, _ = Fleet(args.synthetic, seed=cfg.seed + 1, anomaly_rate=0.0).run(args.steps)
        x, y = (prepare_joint if cfg.architecture == "joint-gru" else prepare)(ts, values, cfg.norm_window)
        data: dict[str, Any] = {"source": "detector.readings.synthetic.Fleet (anomaly-free)", "sensors": args.synthetic,
                                "steps": args.steps}
    elif args.files:
        x, y, lengths, groups, data, names = _from_files(args, cfg)
    else:
        raise InputFileError("give history files or --synthetic SENSORS")

    from rich.console import Console

    console = Console(stderr=True)
    steps = int(lengths.sum()) if lengths is not None else x.shape[0] * x.shape[1]
    console.print(f"training {cfg.architecture} on {x.shape[0]} lanes, {steps} steps in all (longest {x.shape[1]})")
    name = args.name or args.out.name
    with RichProgress(console) as progress:
        model, metrics = train(
            x, y, cfg, name=name, callbacks=progress, lengths=lengths, groups=groups,
            checkpoint=args.out / CHECKPOINT, resume=args.resume,
        )
    hp = model.network.hyperparameters
    if cfg.architecture == "joint-gru" and args.files:
        model.meta["channel_names"] = names  # its fixed channel set, in order: checked where data names channels
    model.meta.update(
        summary=SUMMARIES[cfg.architecture].format(**hp),
        trained={
            "data": data,
            "config": cfg.model_dump(),
            "command": "hiddenstate train " + " ".join(_argv(args, cfg)),
            "hiddenstate": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "date": datetime.now(timezone.utc).date().isoformat(),
        },
        metrics=metrics,
    )
    save_model(model, args.out)
    (args.out / CARD).write_text(card(model.meta, model.network))
    if not args.keep_checkpoint:
        (args.out / CHECKPOINT).unlink(missing_ok=True)
    console.print(f"wrote {args.out} ({model.model_id}); validation NLL {metrics['val_nll']}, "
                  f"MSE {metrics['val_mse']} (persistence {metrics['persistence_val_mse']})")
    return 0


class RichProgress(Callbacks):
    """A progress bar over the batches of each epoch, and one line per finished epoch."""

    def __init__(self, console: Any) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.console = console
        self.bar = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("batches  loss {task.fields[loss]}  best val {task.fields[best]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self.task: Any = None
        self.best = "—"

    def __enter__(self) -> RichProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)

    def start(self, first_epoch: int, epochs: int, batches: int) -> None:
        if first_epoch > 1:
            self.console.print(f"resuming at epoch {first_epoch}")
        self.task = self.bar.add_task("train", total=batches, epoch=first_epoch, epochs=epochs, loss="—",
                                      best=self.best)

    def batch(self, epoch: int, done: int, batches: int, loss: float) -> None:
        self.bar.update(self.task, completed=done, epoch=epoch, loss=f"{loss:.4f}")

    def epoch(self, r: EpochReport) -> None:
        self.best = f"{r.best_val_nll:.4f}"
        mark = " *" if r.best_epoch == r.epoch else ""
        self.console.print(f"epoch {r.epoch}/{r.epochs}  train NLL {r.train_nll:.4f}  validation NLL {r.val_nll:.4f}"
                           f"{mark}  ({r.seconds:.1f} s)" + ("  — stopping early" if r.stopping else ""))
        self.bar.update(self.task, completed=0, epoch=r.epoch + 1, best=self.best)


def _from_files(
    args: argparse.Namespace, cfg: TrainConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict, list[str]]:
    """Lanes from history files: one per sensor and channel, or for joint-gru one per sensor (then every file
    must have the same value columns, the model's channel set); also the files' channel names."""
    from detector.readings.files import read_readings

    joint = cfg.architecture == "joint-gru"
    parts, groups, rows, sensors, skipped = [], [], 0, 0, 0
    names: list[str] | None = None
    for path in args.files:
        readings = read_readings(path, time_column=args.time_column, sensor_column=args.sensor_column)
        if names is None:
            names = list(readings.channel_names)
        elif joint and list(readings.channel_names) != names:
            raise InputFileError(f"{path} has value columns {readings.channel_names}, {args.files[0]} has {names}: "
                                 "a joint-gru model reads one fixed channel set, so train it on files with the same "
                                 "columns in the same order")
        ids = np.asarray(readings.sensor_ids)
        for sensor in dict.fromkeys(readings.sensor_ids):
            pick = ids == sensor
            if pick.sum() < MIN_READINGS:
                skipped += 1
                continue
            x, y = (prepare_joint if joint else prepare)(readings.ts[pick], readings.values[pick][:, None, :],
                                                         cfg.norm_window)
            parts.append((x, y))
            groups += [sensors] * x.shape[0]
            sensors += 1
            rows += int(pick.sum())
    if sensors < 2:
        raise InputFileError(f"{', '.join(map(str, args.files))}: training needs at least 2 sensors with "
                             f"{MIN_READINGS} or more readings (one is held out for validation); found {sensors}")
    x, y, lengths = pad_lanes(parts)
    data = {"source": [str(p) for p in args.files], "rows": rows, "sensors": sensors, "skipped_short": skipped,
            "lengths": [int(lengths.min()), int(lengths.max())]}
    return x, y, lengths, np.asarray(groups), data, names or []


def _argv(args: argparse.Namespace, cfg: TrainConfig) -> list[str]:
    out = [str(p) for p in args.files]
    if args.synthetic:
        out += ["--synthetic", str(args.synthetic), "--steps", str(args.steps)]
    out += ["--arch", cfg.architecture]
    if cfg.architecture == "rnn":
        out += ["--activation", cfg.activation]
        if cfg.activation in ("leaky_relu", "prelu"):
            out += ["--negative-slope", str(cfg.negative_slope)]
    if cfg.architecture == "encdec":
        out += ["--window", str(cfg.window)]
    if cfg.architecture == "bidir":
        out += ["--lookahead", str(cfg.lookahead)]
    out += ["--hidden", str(cfg.hidden_size), "--layers", str(cfg.layers), "--k1", str(cfg.k1), "--k2", str(cfg.k2),
            "--epochs", str(cfg.epochs), "--patience", str(cfg.patience), "--lr", str(cfg.lr), "--seed", str(cfg.seed)]
    if cfg.batch_lanes != 128:
        out += ["--batch-lanes", str(cfg.batch_lanes)]
    if cfg.clip != 1.0:
        out += ["--clip", str(cfg.clip)]
    if cfg.val_fraction != 0.1:
        out += ["--val-fraction", str(cfg.val_fraction)]
    for flag in ("time_column", "sensor_column"):
        if getattr(args, flag):
            out += ["--" + flag.replace("_", "-"), getattr(args, flag)]
    return out + ["--out", str(args.out)]


def _what_it_is(hp: dict[str, Any]) -> str:
    arch, layers, hidden = hp["architecture"], hp["layers"], hp["hidden_size"]
    if arch == "encdec":
        return (f"Encoder and decoder GRUs of {layers} layer(s) × {hidden} units over a window of the last "
                f"{hp['window']} readings; it reconstructs the current reading (and, in training, the whole window)")
    if arch == "joint-gru":
        return (f"GRU, {layers} layer(s) of {hidden} units, reading all {hp['channels']} channels of a sensor at once; "
                "it forecasts each channel's next normalised value (as a change from its current one) and its "
                "log-variance")
    if arch == "bidir":
        return (f"Forward and backward GRUs of {layers} layer(s) × {hidden} units; it estimates each reading from "
                f"the readings before it and the {hp['lookahead']} after it, so scores come {hp['lookahead']} "
                "readings late")
    cell = {"gru": "GRU", "lstm": "LSTM", "rnn": f"standard RNN ({hp.get('activation')})"}[arch]
    extra = ""
    if hp.get("activation") == "leaky_relu":
        extra = f", negative slope {hp['negative_slope']}"
    elif hp.get("activation") == "prelu":
        extra = f", learned negative slope per unit (initially {hp['negative_slope']})"
    return (f"{cell}, {layers} layer(s) of {hidden} units{extra}; it forecasts the next normalised value "
            "(as a change from the current one) and its log-variance")


def card(meta: dict, network: Any) -> str:
    t, m, hp = meta["trained"], meta["metrics"], meta["hyperparameters"]
    c = t["config"]
    joint = network.per_sensor_lanes
    state = network.state_size(hp.get("channels", 1))
    lanes = (f"each sensor (of exactly these {hp['channels']} channels"
             + (f": {', '.join(meta['channel_names'])}" if meta.get("channel_names") else "")
             + f") keeps {state} floats ({4 * state} bytes) of network state" if joint else
             f"each sensor keeps {state} floats ({4 * state} bytes) of network state per channel")
    tbptt = f"k1 = k2 = {c['k1']}" if c["k1"] == c["k2"] else f"k1 = {c['k1']}, k2 = {c['k2']}"
    stop = (f"stopped early after epoch {m['epochs_run']} (patience {c['patience']})" if m["stopped_early"]
            else f"ran {m['epochs_run']} epoch(s)")
    history = "\n".join(f"| {h['epoch']} | {h['train_nll']} | {h['val_nll']} |" for h in m["history"])
    return f"""# Model card: {meta['name']}

**What it is.** {meta.get('summary', '')}. Architecture `{hp['architecture']}`: {_what_it_is(hp)}.
Input per channel: the normalised value and the log time-delta ratio. Weights ({m['parameters']} parameters)
are shared by all sensors{'' if joint else ' and channels'}; {lanes}. Target offset {network.target_offset:+d} (look-ahead {network.lookahead} reading(s)).

**Trained on.** {_describe_data(t['data'])}.

**How.** Truncated BPTT ({tbptt}), Adam lr {c['lr']}, gradient clipping {c['clip']}, Gaussian negative
log-likelihood, {c['batch_lanes']} lanes per batch, at most {c['epochs']} epochs; {stop}; the best validation
epoch is kept ({int(c['val_fraction'] * 100)} % of sensors held out: {m['val_lanes']} lanes against {m['train_lanes']}
for training), seed {c['seed']}. Reproduce with:

    {t['command']}

(hiddenstate {t['hiddenstate']}, torch {t['torch']}, Python {t['python']}, {t['date']}.)

**Scores.** Validation Gaussian NLL {m['val_nll']} (best epoch {m['best_epoch']}); validation MSE of the
normalised target {m['val_mse']} against {m['persistence_val_mse']} for "no change" (the previous reading).
Training took {m['train_seconds']} s of wall-clock time ({m.get('train_cpu_seconds', '?')} s of CPU) on one
torch thread.

| epoch | train NLL | validation NLL |
|---|---|---|
{history}

**Checksum.** `weights.safetensors` SHA-256 `{meta['sha256']}` (verified at load).

**Limits.** Trained on simulated signals (seasonal, drifting, AR noise, regime steps); it knows nothing of any
particular plant. Detection quality on real data is reported in docs/quality.md once measured.
"""


def _describe_data(data: dict) -> str:
    """The training data of a model card, in words."""
    source = data.get("source")
    if isinstance(source, list):
        return f"{len(source)} file(s): {', '.join(source)}; {data.get('rows', '?')} rows"
    return f"{source}: {data.get('sensors', '?')} sensors × {data.get('steps', '?')} steps"
