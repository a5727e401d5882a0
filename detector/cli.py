"""The `hiddenstate` command: replay, demo, serve, produce, train, models.

Each command lives in its own module exposing `add_arguments(parser)` and
`run(args) -> int`; this module only wires them and the options they share.
Settings come from `--config FILE`, then HIDDENSTATE_* variables, then flags.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from detector.config import DetectorConfig, load_config
from detector.errors import HiddenstateError

COMMANDS = {
    "replay": ("detector.replay", "score CSV or JSON-lines files with the streaming engine"),
    "demo": ("detector.demo", "score a simulated fleet live, with injected anomalies"),
    "serve": ("detector.serve_command", "consume readings from Kafka, produce scores, alerts and dead letters"),
    "produce": ("detector.produce_command", "replay CSV or JSON-lines files into a Kafka topic at a given rate"),
    "train": ("detector.train_command", "fit a model on history with truncated BPTT"),
    "models": ("detector.cli", "list the shipped models"),
}


def add_detector_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by every command that scores: model, config file and the main engine settings."""
    group = parser.add_argument_group("detector settings (override --config and HIDDENSTATE_* variables)")
    group.add_argument("--config", metavar="FILE", help="TOML file with detector settings")
    group.add_argument("--model", help="shipped model name (see `hiddenstate models`) or model directory")
    group.add_argument("--threshold", type=float, help="calibrated score that flags a reading (default 0.999)")
    group.add_argument("--warmup", type=int, help="readings per sensor before flagging (default 60)")
    group.add_argument("--raise-k", type=int, help="anomalous readings among the last --raise-n that raise an alert")
    group.add_argument("--raise-n", type=int, help="window for --raise-k")
    group.add_argument("--clear-m", type=int, help="consecutive normal readings that clear an alert")
    group.add_argument("--max-gap", type=float, help="seconds of silence after which a sensor's hidden state resets")
    group.add_argument("--capacity", type=int, help="most sensors held in memory")


def config_from_args(args: argparse.Namespace, **extra: object) -> DetectorConfig:
    """The DetectorConfig from --config, the environment and the flags of `add_detector_arguments`."""
    return load_config(
        args.config,
        model=args.model,
        threshold=args.threshold,
        warmup=args.warmup,
        raise_k=args.raise_k,
        raise_n=args.raise_n,
        clear_m=args.clear_m,
        max_gap=args.max_gap,
        capacity=args.capacity,
        **extra,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:  # the `models` command
    pass


def run(args: argparse.Namespace) -> int:  # the `models` command
    from detector.model_store import load_model, shipped_model_names

    for name in shipped_model_names():
        model = load_model(name)
        print(f"{name:20s} {model.model_id:28s} {model.meta.get('summary', '')}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from detector import __version__

    parser = argparse.ArgumentParser(prog="hiddenstate", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"hiddenstate {__version__}")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1; scale out by processes)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).add_arguments(command)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(max(1, args.threads))
    try:
        return importlib.import_module(COMMANDS[args.command][0]).run(args)
    except HiddenstateError as exc:
        print(f"hiddenstate {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
