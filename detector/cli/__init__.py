"""The `hiddenstate` command: replay, demo, serve, produce, weights, train, models, broker.

Each command lives in its own module exposing `add_arguments(parser)` and
`run(args) -> int`; this package only wires them. `COMMANDS` is the one place
that names the Kafka commands: they live in `consumers.commands` and are
imported by name when the parser is built, so the engine package never
imports the service package. Settings come from `--config FILE`, then
HIDDENSTATE_* variables, then flags (`detector.cli.options`).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from detector.errors import HiddenstateError
from detector.version import __version__

COMMANDS = {
    "replay": ("detector.cli.replay", "score CSV or JSON-lines files with the streaming engine"),
    "demo": ("detector.cli.demo", "score a simulated fleet live, with injected anomalies"),
    "serve": ("consumers.commands.serve", "consume readings from Kafka, produce scores, alerts and dead letters"),
    "produce": ("consumers.commands.produce", "replay CSV or JSON-lines files into a Kafka topic at a given rate"),
    "weights": ("consumers.commands.weights", "list a consumer group's learnt weights versions, roll back, export one"),
    "broker": ("consumers.commands.broker", "start or stop a local single-node Kafka broker (needs Java 17 and Maven)"),
    "train": ("detector.cli.train", "fit a model on history with truncated BPTT"),
    "models": ("detector.cli.models", "list the shipped models"),
}
KAFKA_DEMO = "consumers.commands.kafka_demo"
"""`hiddenstate demo --kafka`: the demo's fleet through a broker and the service."""


def build_parser() -> argparse.ArgumentParser:
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
