"""How well alerts caught injected anomalies: the demo's report, in process or through Kafka.

`Truth` knows which injected anomaly (with a grace tail) explains an alert raised at a step;
`evaluate` turns the alerts raised during a run into event-level precision, recall and delay,
overall and per anomaly kind; `format_report` prints it.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field

from detector.readings.synthetic import AnomalyKind, Fleet, Injected

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


class Truth:
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


def evaluate(
    model_id: str,
    readings: int,
    network_seconds: float,
    fleet: Fleet,
    truth: Truth,
    raises: list[tuple[int, int]],
    steps: int,
    seconds: float,
    cleared: int,
    open_at_end: int,
) -> DemoReport:
    """Score the raised alerts against the injected anomalies (in process, or through Kafka)."""
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
