"""What every detection benchmark's run.py shares: its options, the config they give, the run's name and record facts.

Used by benchmarks/skab/run.py and benchmarks/asd/run.py (and, for `parser` and `parse_sets`, by
benchmarks/skab/sweep.py and diagnose.py).
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from detector import DetectorConfig, load_config
from detector.errors import ConfigError, HiddenstateError

ROOT = Path(__file__).resolve().parents[1]

LOAD_ERRORS = (OSError, ValueError, HiddenstateError)
"""What reading a benchmark's data folder raises on a missing or malformed file."""


def parser(doc: str) -> argparse.ArgumentParser:
    """A script's argument parser, described by the first paragraph of its docstring."""
    return argparse.ArgumentParser(
        description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )


def add_run_arguments(p: argparse.ArgumentParser, data_help: str, data_default: Path | None, results: Path) -> None:
    """--model, --config, --set, --data, --out and --name, in that order (`results`: the default --out)."""
    p.add_argument("--model", default="gru-default", help="shipped model name or model directory (default gru-default)")
    p.add_argument("--config", help="TOML config file (as for hiddenstate replay --config)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one setting (repeatable)")
    p.add_argument("--data", type=Path, default=data_default, help=data_help)
    p.add_argument("--out", type=Path, default=results,
                   help=f"results folder (default {results.resolve().relative_to(ROOT)})")
    p.add_argument("--name", help="run name in the table (default: model[+config][+overrides])")


@contextmanager
def exit_on(*errors: type[BaseException]) -> Iterator[None]:
    """Turn `errors` into `run.py: <message>` and exit status 1, without a traceback."""
    try:
        yield
    except errors as exc:
        raise SystemExit(f"run.py: {exc}") from None


def run_config(args: argparse.Namespace) -> tuple[DetectorConfig, dict[str, object], str]:
    """(config, the --set overrides, run name) from the options `add_run_arguments` adds."""
    sets = parse_sets(args.set)
    with exit_on(ConfigError):
        config = load_config(args.config, model=args.model, **sets)
    return config, sets, args.name or default_name(args.model, args.config, sets)


def parse_sets(items: list[str]) -> dict[str, object]:
    """`key=value` pairs; values parsed as TOML (numbers, true/false), `none` → None, else kept as text."""
    out: dict[str, object] = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--set expects key=value, not {item!r}")
        key, raw = (s.strip() for s in item.split("=", 1))
        if key not in DetectorConfig.model_fields:
            raise SystemExit(f"--set {key}: not a setting; settings: {', '.join(DetectorConfig.model_fields)}")
        if raw.lower() in ("none", "null"):
            out[key] = None
            continue
        try:
            out[key] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            out[key] = raw
    return out


def slug(text: str) -> str:
    """`text` as a file name: runs of other characters than letters, digits and `_.=,+-` become one `_`."""
    return re.sub(r"[^A-Za-z0-9_.=,+-]+", "_", text).strip("_")


def default_name(model: str, config_file: str | None, sets: dict[str, object]) -> str:
    parts = [Path(model).name]
    if config_file:
        parts.append(Path(config_file).stem)
    if sets:
        parts.append(",".join(f"{k}={v}" for k, v in sets.items()))
    return "+".join(parts)


def describe(model_id: str, config_file: str | None, sets: dict[str, object]) -> str:
    """`model …, [config …, ]overrides …` or `… default config`: the start of a run's description."""
    overrides = ", ".join(f"{k}={v}" for k, v in sets.items())
    return (f"model {model_id}, " + (f"config {config_file}, " if config_file else "")
            + (f"overrides {overrides}" if overrides else "default config"))


def reproduce_command(script: str, args: argparse.Namespace, extra: Sequence[str] = ()) -> str:
    """The command line that repeats this run: `script`, --model, --config, each --set, --name, then `extra`."""
    return " ".join(
        [script, "--model", shlex.quote(args.model)]
        + (["--config", shlex.quote(args.config)] if args.config else [])
        + [f"--set {shlex.quote(s)}" for s in args.set]
        + ([f"--name {shlex.quote(args.name)}"] if args.name else [])
        + list(extra)
    )


def is_default_config(config: DetectorConfig, model: str) -> bool:
    """Whether `config` is the model's default one (no config file or override changed anything)."""
    return config.model_dump() == DetectorConfig(model=model).model_dump()


def engine_source() -> dict[str, object]:
    """The commit the engine and models come from, and whether they differ from it (uncommitted edits)."""
    def git(*cmd: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(ROOT), *cmd], capture_output=True, text=True, check=True)
            return done.stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--", "detector", "models")
    return {"commit": commit, "engine_edited_since_commit": bool(dirty) if dirty is not None else None}


def versions() -> dict[str, str]:
    """Python, torch and numpy versions, for a run record."""
    import numpy as np
    import torch

    return {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": np.__version__}
