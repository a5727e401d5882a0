"""`hiddenstate demo`: the simulated fleet of `detector.demo.run_demo`, rendered live, or through Kafka (`--kafka`)."""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from detector.cli import KAFKA_DEMO
from detector.cli.options import add_detector_arguments, config_from_args
from detector.demo import run_demo
from detector.errors import ConfigError
from detector.evaluation import DemoSnapshot, format_report

if TYPE_CHECKING:
    from rich.console import RenderableType


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of wall time to run (default 30)")
    parser.add_argument("--sensors", type=int, default=1000, help="simulated sensors (default 1000)")
    parser.add_argument("--rate", type=float, metavar="STEPS_PER_SECOND", help="at most this many steps per second (default: as fast as possible)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulated fleet (default 0)")
    parser.add_argument("--anomaly-rate", type=float, default=2.0, help="injected anomalies per sensor per 1000 steps (default 2)")
    parser.add_argument("--batch", type=int, default=1, metavar="N", help="steps scored per micro-batch (default 1)")
    parser.add_argument("--no-live", action="store_true", help="print a progress line every few seconds instead of the live view")
    parser.add_argument("--kafka", action="store_true",
                        help="go through Kafka: produce the fleet to a broker and score it with the service "
                             "(starts a local broker with scripts/kafka.sh unless --bootstrap is given)")
    parser.add_argument("--bootstrap", metavar="HOST:PORT[,...]",
                        help="with --kafka (implied): use this broker instead of starting a local one")
    add_detector_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if args.sensors < 1 or args.batch < 1 or args.duration <= 0:
        raise ConfigError("--sensors and --batch must be at least 1 and --duration positive")
    plain = args.no_live or not sys.stdout.isatty()
    live = functools.partial(_live_view, plain=plain)
    if args.kafka or args.bootstrap:
        return importlib.import_module(KAFKA_DEMO).run(args, live)
    with live() as on_progress:
        report = run_demo(
            config_from_args(args), args.sensors, args.duration, args.seed, args.anomaly_rate,
            rate=args.rate, batch=args.batch, on_progress=on_progress, progress_interval=0.5 if plain else 0.25,
        )
    print(format_report(report))
    return 0


@contextlib.contextmanager
def _live_view(plain: bool) -> Iterator[Callable[[DemoSnapshot], None]]:
    """The progress callback: the rich live view on a terminal, else (`plain`) a progress line every few seconds."""
    if plain:
        yield _ProgressLines()
        return
    from rich.live import Live

    with Live(_render_snapshot(None), refresh_per_second=4, transient=False) as live:
        yield lambda snap: live.update(_render_snapshot(snap))


class _ProgressLines:
    """Prints a one-line progress every `every` seconds (for logs and pipes)."""

    def __init__(self, every: float = 5.0) -> None:
        self.every = every
        self.next_at = every

    def __call__(self, snap: DemoSnapshot) -> None:
        if snap.elapsed >= self.next_at:
            self.next_at = snap.elapsed + self.every
            print(
                f"[{snap.elapsed:5.1f}s] step {snap.steps}  {snap.readings:,} readings ({snap.readings_per_second:,.0f}/s)"
                f"  alerts raised {snap.alerts_raised} cleared {snap.alerts_cleared} open {snap.open_alerts}"
                f"  injected {snap.injected}",
                flush=True,
            )


def _render_snapshot(snap: DemoSnapshot | None) -> RenderableType:
    """The live view: counters, then a table of the most recently raised open alerts."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    if snap is None:
        return Text("starting the simulated fleet…")
    head = Table.grid(padding=(0, 3))
    for _ in range(4):
        head.add_column()
    head.add_row(
        f"elapsed [bold]{snap.elapsed:.1f}s[/]", f"steps [bold]{snap.steps:,}[/]",
        f"readings [bold]{snap.readings:,}[/]", f"[bold]{snap.readings_per_second:,.0f}[/] readings/s",
    )
    head.add_row(
        f"sensors [bold]{snap.sensors:,}[/]", f"alerts raised [bold]{snap.alerts_raised}[/]",
        f"cleared [bold]{snap.alerts_cleared}[/]", f"injected anomalies [bold]{snap.injected}[/]",
    )
    table = Table(title=f"open alerts: {snap.open_alerts} (most recent {len(snap.recent_open)})", title_justify="left")
    table.add_column("sensor")
    table.add_column("ch", justify="right")
    table.add_column("expected", justify="right")
    table.add_column("seen", justify="right")
    table.add_column("score", justify="right")
    table.add_column("since step", justify="right")
    table.add_column("injected")
    for a in snap.recent_open:
        table.add_row(
            a.sensor_id, str(a.channel), f"{a.expected:.4g}", f"{a.seen:.4g}", f"{a.score:.5f}",
            f"{a.since_step} ({snap.steps - a.since_step} ago)",
            a.injected if a.injected else "[yellow]none (false alarm)[/]",
        )
    return Group(head, table)
