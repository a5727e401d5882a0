"""`hiddenstate demo`: score a simulated fleet live and measure detection against injected anomalies.

The command a new user runs first; it needs nothing but the package. A
`detector.synthetic.Fleet` of sensors (several signal shapes, scales from 1e-3
to 1e6) is generated step by step, and each step's readings of all sensors are
scored as one micro-batch by the same `Detector` and engine as the service
(`--batch N` packs N steps into one batch; results do not depend on it). It runs
as fast as it can, or at `--rate` steps per second, for `--duration` seconds of
wall time, then prints how many injected anomalies were caught.

`run_demo` does the work and returns a `DemoReport`; the command only renders it.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from detector.alerts import AlertKind
from detector.config import DetectorConfig
from detector.detector import Detector
from detector.model_store import Model
from detector.synthetic import AnomalyKind, Fleet, Injected

if TYPE_CHECKING:
    from rich.console import RenderableType

GRACE_STEPS = 20
"""Steps after an injected anomaly ends during which an alert still counts as catching it."""


@dataclass(frozen=True)
class OpenAlert:
    """An alert open now, as the live view shows it."""

    sensor_id: str
    channel: int
    expected: float
    seen: float
    score: float
    since_step: int
    injected: str | None
    """Kind of the injected anomaly whose window (with grace) holds the raise, or None (a false alarm)."""


@dataclass(frozen=True)
class DemoSnapshot:
    """Where a running demo stands; passed to the progress callback."""

    elapsed: float
    steps: int
    readings: int
    sensors: int
    alerts_raised: int
    alerts_cleared: int
    open_alerts: int
    recent_open: list[OpenAlert]
    """The most recently raised of the open alerts, newest first."""
    injected: int

    @property
    def readings_per_second(self) -> float:
        return self.readings / self.elapsed if self.elapsed > 0 else 0.0


@dataclass(frozen=True)
class KindQuality:
    """Detection of injected anomalies (of one kind, or of all: `DemoReport` extends it)."""

    injected: int
    """Injected during the run."""
    evaluated: int
    """Of those, started at least `grace` steps before the end (the others are pending, neither caught nor missed)."""
    caught: int
    """Of the evaluated, those with an alert raised in [start, end + grace)."""
    caught_during: int
    """Of the evaluated, those with an alert raised in [start, end): caught while still going on, not at its end."""

    @property
    def recall(self) -> float:
        """Event-level recall: fraction of evaluated injected anomalies with an alert raised in their window."""
        return self.caught / self.evaluated if self.evaluated else float("nan")

    @property
    def recall_during(self) -> float:
        """Like `recall`, but only alerts raised before the anomaly ended count (no grace)."""
        return self.caught_during / self.evaluated if self.evaluated else float("nan")


@dataclass(frozen=True)
class DemoReport(KindQuality):
    """The figures of a finished demo run; the inherited counts are over all injected anomalies."""

    model_id: str
    sensors: int
    steps: int
    readings: int
    seconds: float
    network_seconds: float
    alerts_raised: int
    alerts_cleared: int
    open_at_end: int
    grace: int
    true_alerts: int
    """Raised alerts that fall in the window [start, end + grace) of an injected anomaly of their sensor."""
    median_delay: float
    """Median steps from an anomaly's start to the first alert raised in its window (NaN if none was caught)."""
    by_kind: dict[str, KindQuality] = field(default_factory=dict)

    @property
    def readings_per_second(self) -> float:
        return self.readings / self.seconds if self.seconds > 0 else 0.0

    @property
    def precision(self) -> float:
        """Fraction of raised alerts that fall in an injected anomaly's window (NaN if none was raised)."""
        return self.true_alerts / self.alerts_raised if self.alerts_raised else float("nan")


class _Truth:
    """Looks up which injected anomaly, if any, explains an alert raised on a sensor at a step."""

    def __init__(self, grace: int) -> None:
        self.grace = grace
        self.by_sensor: dict[int, list[Injected]] = {}

    def add(self, anomalies: list[Injected]) -> None:
        for a in anomalies:
            self.by_sensor.setdefault(a.sensor, []).append(a)

    def match(self, sensor: int, step: int) -> Injected | None:
        # Anomalies of one sensor never overlap, but a grace tail may reach into the next one: prefer the latest.
        for a in reversed(self.by_sensor.get(sensor, ())):
            if a.start <= step < a.end + self.grace:
                return a
        return None


def run_demo(
    config: DetectorConfig,
    sensors: int = 1000,
    duration: float = 30.0,
    seed: int = 0,
    anomaly_rate: float = 2.0,
    *,
    rate: float | None = None,
    batch: int = 1,
    max_steps: int | None = None,
    grace: int = GRACE_STEPS,
    model: Model | str | Path | None = None,
    on_progress: Callable[[DemoSnapshot], None] | None = None,
    progress_interval: float = 0.25,
    recent: int = 8,
) -> DemoReport:
    """Generate and score a simulated fleet until `duration` wall seconds (or `max_steps` steps) pass.

    config: engine settings (its `model` is used unless `model` is given).
    rate: simulated steps per second at most (None = as fast as possible).
    batch: steps scored per micro-batch (each of `sensors` readings); results do not depend on it.
    max_steps: stop after this many steps (with `duration` = inf, a deterministic run).
    on_progress: called about every `progress_interval` seconds, and once at the end, with a snapshot.
    """
    if sensors < 1 or batch < 1:
        raise ValueError("sensors and batch must be at least 1")
    detector = Detector(model if model is not None else config.model, config=config, channels=1)
    fleet = Fleet(sensors, seed=seed, anomaly_rate=anomaly_rate)
    names = fleet.names()
    index = {name: i for i, name in enumerate(names)}
    truth = _Truth(grace)
    raises: list[tuple[int, int]] = []  # (sensor, step) of every alert raised
    open_alerts: dict[str, OpenAlert] = {}
    batch_ids = names * batch
    cleared = 0
    seen_anomalies = 0
    steps = 0
    started = time.perf_counter()
    last_progress = started

    def step_of(ts: float) -> int:
        return int(round((ts - fleet.start) / fleet.interval))

    def snapshot(now: float) -> DemoSnapshot:
        newest = sorted(open_alerts.values(), key=lambda a: a.since_step, reverse=True)[:recent]
        return DemoSnapshot(
            elapsed=now - started, steps=steps, readings=detector.stats.scored, sensors=sensors,
            alerts_raised=len(raises), alerts_cleared=cleared, open_alerts=len(open_alerts),
            recent_open=newest, injected=len(fleet.anomalies),
        )

    while max_steps is None or steps < max_steps:
        now = time.perf_counter()
        if now - started >= duration:
            break
        if rate is not None and rate > 0:
            due = started + steps / rate
            if due > now:
                time.sleep(min(due - now, max(0.0, started + duration - now)))
                continue
        k = batch if max_steps is None else min(batch, max_steps - steps)
        ts = np.empty(k * sensors)
        values = np.empty(k * sensors)
        for j in range(k):
            t, v, _ = fleet.step()
            ts[j * sensors:(j + 1) * sensors] = t
            values[j * sensors:(j + 1) * sensors] = v
        truth.add(fleet.anomalies[seen_anomalies:])
        seen_anomalies = len(fleet.anomalies)
        result = detector.score_arrays(batch_ids if k == batch else names * k, ts, values[:, None])
        steps += k
        for event in result.events:
            sensor, step = index[event.sensor_id], step_of(event.ts)
            if event.kind is AlertKind.RAISE:
                raises.append((sensor, step))
                hit = truth.match(sensor, step)
                open_alerts[event.sensor_id] = OpenAlert(
                    event.sensor_id, event.channel, event.expected, event.seen, event.score, step,
                    hit.kind.value if hit else None,
                )
            else:
                cleared += 1
                open_alerts.pop(event.sensor_id, None)
        if on_progress is not None and time.perf_counter() - last_progress >= progress_interval:
            last_progress = time.perf_counter()
            on_progress(snapshot(last_progress))

    seconds = time.perf_counter() - started
    if on_progress is not None:
        on_progress(snapshot(started + seconds))
    stats = detector.stats
    return _report(detector.model.model_id, stats.scored, stats.network_seconds, fleet, truth, raises, steps, seconds,
                   cleared, len(open_alerts))


def _report(
    model_id: str,
    readings: int,
    network_seconds: float,
    fleet: Fleet,
    truth: _Truth,
    raises: list[tuple[int, int]],
    steps: int,
    seconds: float,
    cleared: int,
    open_at_end: int,
) -> DemoReport:
    """Score the raised alerts against the injected anomalies (also for `demo --kafka`, detector/kafka_demo.py)."""
    grace = truth.grace
    raised_at: dict[int, list[int]] = {}
    for sensor, step in raises:
        raised_at.setdefault(sensor, []).append(step)
    true_alerts = sum(truth.match(sensor, step) is not None for sensor, step in raises)

    injected: Counter[str] = Counter()
    evaluated: Counter[str] = Counter()
    caught: Counter[str] = Counter()
    caught_during: Counter[str] = Counter()
    delays: list[int] = []
    for a in fleet.anomalies:
        injected[a.kind.value] += 1
        if a.start + grace > steps:
            continue  # too recent to judge: not counted as missed
        evaluated[a.kind.value] += 1
        hits = [s for s in raised_at.get(a.sensor, ()) if a.start <= s < a.end + grace]
        if hits:
            caught[a.kind.value] += 1
            delays.append(min(hits) - a.start)
            caught_during[a.kind.value] += min(hits) < a.end
    by_kind = {
        kind.value: KindQuality(injected[kind.value], evaluated[kind.value], caught[kind.value], caught_during[kind.value])
        for kind in AnomalyKind
    }
    return DemoReport(
        model_id=model_id,
        sensors=fleet.n,
        steps=steps,
        readings=readings,
        seconds=seconds,
        network_seconds=network_seconds,
        alerts_raised=len(raises),
        alerts_cleared=cleared,
        open_at_end=open_at_end,
        grace=grace,
        injected=len(fleet.anomalies),
        evaluated=sum(evaluated.values()),
        caught=sum(caught.values()),
        caught_during=sum(caught_during.values()),
        true_alerts=true_alerts,
        median_delay=float(statistics.median(delays)) if delays else float("nan"),
        by_kind=by_kind,
    )


# -- the command ------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from detector.cli import add_detector_arguments

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
    from detector.cli import config_from_args
    from detector.errors import ConfigError

    if args.sensors < 1 or args.batch < 1 or args.duration <= 0:
        raise ConfigError("--sensors and --batch must be at least 1 and --duration positive")
    plain = args.no_live or not sys.stdout.isatty()
    live = functools.partial(_live_view, plain=plain)
    if args.kafka or args.bootstrap:
        from detector.kafka_demo import run as run_through_kafka

        return run_through_kafka(args, live)
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


def format_report(report: DemoReport) -> str:
    """The end-of-run summary as plain text."""

    def pct(x: float) -> str:
        return "n/a" if x != x else f"{100 * x:.1f}%"

    pending = report.injected - report.evaluated
    lines = [
        f"hiddenstate demo: {report.sensors:,} simulated sensors, {report.steps:,} steps, model {report.model_id}",
        f"  readings scored  {report.readings:,} in {report.seconds:.1f}s = {report.readings_per_second:,.0f} readings/s"
        f" (network {report.network_seconds:.1f}s)",
        f"  alerts           {report.alerts_raised} raised, {report.alerts_cleared} cleared, {report.open_at_end} open at end",
        f"  injected         {report.injected} anomalies ({pending} too recent to judge; grace {report.grace} steps)",
        f"  precision        {pct(report.precision)} ({report.true_alerts} of {report.alerts_raised} alerts in an injected window)",
        f"  recall           {pct(report.recall)} ({report.caught} of {report.evaluated} caught;"
        f" {pct(report.recall_during)} before the anomaly ended)",
    ]
    for kind, q in report.by_kind.items():
        lines.append(
            f"    {kind:20s} {pct(q.recall):>6s} ({q.caught} of {q.evaluated}; {pct(q.recall_during)} before it ended)"
        )
    delay = "n/a" if report.median_delay != report.median_delay else f"{report.median_delay:g} steps"
    lines.append(f"  median delay     {delay} from anomaly start to alert")
    return "\n".join(lines)
