"""`hiddenstate broker start|stop|status|logs`: the packaged local Kafka broker (`consumers.broker`).

    BOOT=$(hiddenstate broker start)     # prints the bootstrap address, as scripts/kafka.sh does

The broker's port, data directory and security come from the KAFKA_* variables
documented in the script's header (`consumers/broker/kafka.sh`).
"""

from __future__ import annotations

import argparse
import sys

from consumers.broker import LocalBroker

ACTIONS = ("start", "stop", "status", "logs", "fetch")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=ACTIONS, help="start (prints the bootstrap address), stop, status, "
                                                        "logs (the broker log's tail) or fetch (only the jars)")
    parser.add_argument("--clean", action="store_true", help="with stop: also delete the broker's data")


def run(args: argparse.Namespace) -> int:
    extra = ["--clean"] if args.clean and args.action == "stop" else []
    proc = LocalBroker().run(args.action, *extra)
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    return proc.returncode
