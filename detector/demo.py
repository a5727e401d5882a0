"""`hiddenstate demo`: score a simulated fleet live and measure detection against injected anomalies.

The command a new user runs first; it needs nothing but the package. A
`detector.readings.synthetic.Fleet` of sensors (several signal shapes, scales from 1e-3
to 1e6) is generated step by step, and each step's readings of all sensors are
scored as one micro-batch by the same `Detector` and engine as the service
(`--batch N` packs N steps into one batch; results do not depend on it). It runs
as fast as it can, or at `--rate` steps per second, for `--duration` seconds of
wall time, then prints how many injected anomalies were caught.

`run_demo` does the work and returns a `DemoReport`; the command only renders it.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from detector.alerts import AlertKind
from detector.api import Detector
from detector.config import DetectorConfig
from detector.evaluation import GRACE_STEPS, DemoReport, DemoSnapshot, OpenAlert, Truth, evaluate
from detector.model.store import Model
from detector.readings.synthetic import Fleet


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
    truth = Truth(grace)
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
    return evaluate(detector.model.model_id, stats.scored, stats.network_seconds, fleet, truth, raises, steps, seconds,
                   cleared, len(open_alerts))
