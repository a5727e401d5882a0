"""Flags shared by every command that scores, and the DetectorConfig they build (file, environment, flags)."""

from __future__ import annotations

import argparse

from detector.config import DetectorConfig, load_config

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
    group.add_argument("--learning", choices=["off", "online"],
                       help="online: the shared weights keep learning from the stream (default off; docs/models.md)")
    group.add_argument("--fit-first", type=int, metavar="N",
                       help="fit the model once on the first N readings of the stream, then score on with the fit "
                            "(default 0: off; docs/models.md)")
    group.add_argument("--views", metavar="VIEW[,VIEW...]",
                       help="scoring views that run: forecast, level, stuck, correlation (default forecast,level,stuck)")


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
        views=args.views,
        learning=args.learning,
        fit_first=args.fit_first,
        **extra,
    )
