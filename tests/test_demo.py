"""`hiddenstate demo` and `run_demo`: consistent figures, batching-independent, real detection with the shipped model."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from detector.cli import main
from detector.config import DetectorConfig
from detector.demo import run_demo
from detector.evaluation import DemoReport, DemoSnapshot, format_report
from detector.model.store import untrained
from detector.readings.synthetic import AnomalyKind

SENSORS = 200
STEPS = 1200


def _check_consistent(report: DemoReport, sensors: int, steps: int) -> None:
    assert report.steps == steps
    assert report.readings == sensors * steps
    assert sum(q.injected for q in report.by_kind.values()) == report.injected
    assert sum(q.evaluated for q in report.by_kind.values()) == report.evaluated
    assert sum(q.caught for q in report.by_kind.values()) == report.caught
    assert sum(q.caught_during for q in report.by_kind.values()) == report.caught_during
    assert set(report.by_kind) == {k.value for k in AnomalyKind}
    for q in report.by_kind.values():
        assert 0 <= q.caught_during <= q.caught <= q.evaluated <= q.injected
    assert 0 <= report.true_alerts <= report.alerts_raised
    assert report.alerts_cleared + report.open_at_end == report.alerts_raised
    for figure in (report.precision, report.recall, report.recall_during):
        assert math.isnan(figure) or 0.0 <= figure <= 1.0
    assert math.isnan(report.median_delay) or 0 <= report.median_delay < 80 + report.grace


@pytest.fixture(scope="module")
def shipped() -> DemoReport:
    """A fixed-seed run with the shipped model (the default config names gru-default)."""
    return run_demo(DetectorConfig(), sensors=SENSORS, duration=math.inf, seed=0, max_steps=STEPS)


def test_report_is_consistent(shipped: DemoReport) -> None:
    _check_consistent(shipped, SENSORS, STEPS)
    assert shipped.model_id.startswith("gru-default@")
    assert shipped.injected > 100  # 2 per sensor per 1000 steps after a 300-step warm-up
    assert shipped.evaluated < shipped.injected or shipped.injected == 0  # the last 20 steps' anomalies are pending


def test_shipped_model_catches_level_shifts_and_spikes(shipped: DemoReport) -> None:
    assert shipped.by_kind[AnomalyKind.LEVEL_SHIFT.value].recall > 0.3
    assert shipped.by_kind[AnomalyKind.SPIKE.value].recall > 0.3
    assert shipped.recall > 0.2
    assert shipped.precision > 0.4
    assert shipped.median_delay <= 10


def test_results_do_not_depend_on_batching() -> None:
    model = untrained()
    one, four = (
        run_demo(DetectorConfig(), sensors=100, duration=math.inf, seed=3, max_steps=1501, batch=b, model=model)
        for b in (1, 4)  # 1501 = 4 × 375 + 1: the last batch is short
    )
    _check_consistent(one, 100, 1501)
    assert one.alerts_raised > 0 and one.caught > 0
    timing = {"seconds": 0.0, "network_seconds": 0.0}
    assert replace(one, **timing) == replace(four, **timing)


def test_progress_callback_and_duration_stop() -> None:
    snapshots: list[DemoSnapshot] = []
    report = run_demo(
        DetectorConfig(), sensors=20, duration=0.5, model=untrained(), on_progress=snapshots.append,
        progress_interval=0.05,
    )
    assert 0.5 <= report.seconds < 5
    assert report.steps > 0 and report.readings == 20 * report.steps
    assert snapshots and snapshots[-1].steps == report.steps and snapshots[-1].readings == report.readings
    assert all(len(s.recent_open) <= min(8, s.open_alerts) for s in snapshots)


def test_rate_throttles() -> None:
    report = run_demo(DetectorConfig(), sensors=10, duration=0.5, rate=20, model=untrained())
    assert 8 <= report.steps <= 12


def test_no_anomalies_gives_nan_recall() -> None:
    report = run_demo(DetectorConfig(), sensors=10, duration=math.inf, max_steps=100, anomaly_rate=0.0, model=untrained())
    assert report.injected == 0 and math.isnan(report.recall)
    assert "n/a" in format_report(report)


def test_cli_demo(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--duration", "3", "--sensors", "200", "--no-live"]) == 0
    out = capsys.readouterr().out
    assert "precision" in out and "recall" in out
    assert "level_shift" in out and "readings/s" in out


def test_cli_demo_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--sensors", "0", "--no-live"]) == 2
    assert "error" in capsys.readouterr().err
