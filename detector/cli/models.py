"""`hiddenstate models`: list the shipped models."""

from __future__ import annotations

import argparse

from detector.model.store import load_model, shipped_model_names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command takes no arguments."""


def run(args: argparse.Namespace) -> int:
    for name in shipped_model_names():
        model = load_model(name)
        print(f"{name:20s} {model.model_id:28s} {model.meta.get('summary', '')}")
    return 0
