"""`hiddenstate replay`: score CSV or JSON-lines files with the streaming engine.

    hiddenstate replay pump7.csv --plot pump7.png

Writes a scores CSV (one row per reading, rejected ones included with the
reason), the alert events as JSON lines beside it, optionally a plot, and prints
a summary. The scoring itself is `detector.replay.replay_files`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from detector.alerts import AlertKind
from detector.cli.options import add_detector_arguments, config_from_args
from detector.config import DetectorConfig
from detector.errors import HiddenstateError, InputFileError
from detector.plotting import plot_replay
from detector.readings.reasons import SCORED
from detector.readings.files import file_stem
from detector.replay import PENDING, ReplayResult, iso_times, replay_files, write_alerts, write_scores


def print_summary(result: ReplayResult, outputs: list[tuple[str, Path]], console: object | None = None) -> None:
    """Totals, alerts per sensor and the top alerts, as rich tables."""
    from rich.console import Console
    from rich.table import Table

    con = console if isinstance(console, Console) else Console()
    if not isinstance(console, Console) and not con.is_terminal:
        con = Console(width=120)  # a log file or pipe: no need to squeeze the tables into 80 columns
    episodes = result.episodes()
    rejected = result.rejected()

    totals = Table.grid(padding=(0, 2))
    totals.add_column(style="bold")
    totals.add_column()
    totals.add_row("model", result.model_id)
    totals.add_row("files", ", ".join(result.sources))
    rate = len(result) / result.seconds if result.seconds > 0 else float("inf")
    totals.add_row("readings", f"{len(result):,} in {result.seconds:.2f} s ({rate:,.0f}/s)")
    totals.add_row("scored", f"{result.scored:,}")
    pending = int(np.count_nonzero(result.status == PENDING))
    if pending:
        totals.add_row("pending", f"{pending:,} (each sensor's last readings: the model looks {result.delay} ahead)")
    totals.add_row(
        "rejected", ", ".join(f"{r.label} {n:,}" for r, n in rejected.items()) if rejected else "none"
    )
    if result.skipped:
        first = result.skipped[0]
        example = f"e.g. {first[0]} line {first[1]}: {first[2]}"
        totals.add_row("left out", f"{len(result.skipped):,} rows: bad timestamp or malformed ({example})")
    if result.reordered:
        totals.add_row("reordered", f"{result.reordered:,} rows were not in time order in their file and were sorted")
    totals.add_row("anomalous", f"{int(result.anomalous.sum()):,} readings (threshold {result.config.threshold})")
    open_now = sum(e.end is None for e in episodes)
    totals.add_row(
        "alerts",
        f"{result.stats.alerts_raised} raised, {result.stats.alerts_cleared} cleared, {open_now} open at the end",
    )
    for name, path in outputs:
        totals.add_row(name, str(path))
    con.print(totals)

    ids = np.asarray(result.sensor_ids, dtype=object)
    per_sensor = Table(title="Alerts per sensor", title_justify="left")
    for column in ("sensor", "readings", "scored", "anomalous", "raised", "cleared", "max score*"):
        per_sensor.add_column(column, justify="left" if column == "sensor" else "right", no_wrap=True)
    per_sensor.caption = "* after the sensor's warm-up"
    raised: dict[str, int] = {}
    cleared: dict[str, int] = {}
    for event in result.events:
        counter = raised if event.kind is AlertKind.RAISE else cleared
        counter[event.sensor_id] = counter.get(event.sensor_id, 0) + 1
    sensors = sorted(result.sensors(), key=lambda s: -raised.get(s, 0))  # stable: ties keep first appearance
    for sensor in sensors[:20]:
        rows = ids == sensor
        ok = rows & (result.status == SCORED)
        warm = result.score[np.flatnonzero(ok)[result.config.warmup:]]  # early scores mean little: not flagged
        per_sensor.add_row(
            sensor, f"{int(rows.sum()):,}", f"{int(ok.sum()):,}", f"{int(result.anomalous[rows].sum()):,}",
            str(raised.get(sensor, 0)), str(cleared.get(sensor, 0)), f"{float(warm.max()):.4f}" if warm.size else "-",
        )
    if len(sensors) > 20:
        per_sensor.caption += f"; {len(sensors) - 20} more sensors not shown"
    con.print(per_sensor)

    if episodes:
        top = Table(title="Top alerts (by peak score)", title_justify="left")
        top.add_column("sensor", no_wrap=True)
        top.add_column("started (UTC)", no_wrap=True)
        top.add_column("duration", justify="right", no_wrap=True)
        top.add_column("channel", min_width=8, overflow="fold")
        for column in ("expected", "seen", "peak score"):
            top.add_column(column, justify="right", no_wrap=True)
        ranked = sorted(episodes, key=lambda e: -e.peak_score)[:10]
        starts = iso_times(np.array([e.start for e in ranked]))
        for episode, start in zip(ranked, starts.tolist()):
            top.add_row(
                episode.sensor_id, start.replace("T", " ").rstrip("Z"),
                "open" if episode.duration is None else _duration(episode.duration),
                episode.channel_name, f"{episode.expected:.4g}", f"{episode.seen:.4g}", f"{episode.peak_score:.4f}",
            )
        if len(episodes) > 10:
            top.caption = f"{len(episodes) - 10} more in the alerts file"
        con.print(top)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE", help="CSV or JSON-lines files (.gz allowed)")
    parser.add_argument("--out", type=Path, help="scores CSV to write (default: <first file stem>.scores.csv)")
    parser.add_argument(
        "--alerts", type=Path, help="alert events, JSON lines (default: <first file stem>.alerts.jsonl)"
    )
    parser.add_argument("--plot", type=Path, help="also draw values, forecasts, scores and alerts into this PNG")
    parser.add_argument("--time-column", help="timestamp column or key (default: detected)")
    parser.add_argument("--sensor-column", help="sensor id column or key (default: sensor_id if present, else one "
                                                "sensor per file named after it)")
    parser.add_argument("--columns", help="value columns, comma-separated (default: every numeric column but labels)")
    parser.add_argument("--batch", type=int, default=1024, help="rows per engine micro-batch (default 1024)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_detector_arguments(parser)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    stem = file_stem(args.files[0])
    out: Path = args.out or Path.cwd() / f"{stem}.scores.csv"
    alerts_path: Path = args.alerts or out.parent / f"{stem}.alerts.jsonl"  # beside the scores
    inputs = {p.resolve() for p in args.files if p.exists()}
    for target in (out, alerts_path, args.plot):  # checked before scoring, which may take a while
        if target is None:
            continue
        if target.resolve() in inputs:
            raise InputFileError(f"{target} is one of the input files; choose another output path")
        if not target.resolve().parent.is_dir():
            raise HiddenstateError(f"cannot write {target}: the directory {target.parent} does not exist")
    columns = [c.strip() for c in args.columns.split(",") if c.strip()] if args.columns else None

    show = not args.no_progress and sys.stderr.isatty()
    result = _replay_with_progress(args, config, columns, show)

    outputs = [("scores", out), ("alerts file", alerts_path)]
    try:
        write_scores(result, out)
        write_alerts(result, alerts_path)
        if args.plot is not None:
            plot_replay(result, args.plot)
            outputs.append(("plot", args.plot))
    except OSError as exc:
        raise HiddenstateError(f"cannot write {exc.filename or 'the output'}: {exc.strerror or exc}") from None
    print_summary(result, outputs)
    return 0


def _replay_with_progress(
    args: argparse.Namespace, config: DetectorConfig, columns: list[str] | None, show: bool
) -> ReplayResult:
    """replay_files with the CLI's options, under a rich progress bar on stderr when `show`."""

    def replay(progress: Callable[[int, int], None] | None) -> ReplayResult:
        return replay_files(
            args.files, config, batch=args.batch, time_column=args.time_column, sensor_column=args.sensor_column,
            value_columns=columns, progress=progress,
        )

    if not show:
        return replay(None)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=Console(stderr=True), transient=True,
    ) as bar:
        task = bar.add_task("scoring", total=None)
        return replay(lambda done, total: bar.update(task, completed=done, total=total))
