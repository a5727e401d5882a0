"""Scores that hold on any sensor: constant, quantised and step-like channels, frozen ones, and a surprise that
keeps its order in the tail (issue: scores that hold on any sensor)."""

from __future__ import annotations

import numpy as np
import pytest

from detector import Detector, DetectorConfig
from detector.alerts import AlertKind
from detector.scoring import surprise

T0 = 1_700_000_000.0


def _raises(values: np.ndarray, dt: float = 60.0, **settings: object) -> list:
    det = Detector(config=DetectorConfig(**settings), channels=values.shape[1])
    result = det.score_arrays(["s"] * len(values), T0 + dt * np.arange(len(values)), values)
    return [e for e in result.events if e.kind is AlertKind.RAISE], result


def test_a_constant_channel_opens_no_alert_and_a_spike_on_another_still_does():
    rng = np.random.default_rng(0)
    values = np.column_stack([np.full(3000, 7.0), 10 + rng.normal(0, 1, 3000)])
    assert _raises(values)[0] == []
    values[2000:2006, 1] += 6.0
    raised, _ = _raises(values)
    assert raised and 2000 <= (raised[0].ts - T0) / 60 < 2020 and raised[0].channel == 1


def test_quantised_and_step_channels_are_not_stuck():
    rng = np.random.default_rng(1)
    quantised = np.round(10 + rng.normal(0, 0.4, 4000))  # a few levels, long runs on each
    steps = np.repeat(rng.choice([0.0, 1.0, 2.0], 40), 100)  # a valve or a mode: holds a level for a while
    # it learns that stepping is its normal: after its first steps (the first ever is news), none raises
    assert [e for e in _raises(steps[:, None])[0] if e.ts >= T0 + 60.0 * 1000] == []
    raised = _raises(quantised[:, None])[0]
    # a chance run of the rarer levels may still move the level view once; never the stuck view
    assert len(raised) <= 1 and all(e.cause != "stuck" for e in raised)


def test_a_frozen_channel_that_used_to_move_opens_an_alert():
    rng = np.random.default_rng(2)
    values = 10 + rng.normal(0, 1, 3000)
    values[2000:2200] = values[1999]
    raised, _ = _raises(values[:, None])
    assert raised and raised[0].cause == "stuck" and 2000 <= (raised[0].ts - T0) / 60 < 2030


def test_no_saturation_on_normal_data():
    rng = np.random.default_rng(3)
    t = np.arange(6000)
    values = np.column_stack([10 + rng.normal(0, 1, t.size), 5 + np.sin(t / 50.0) + rng.normal(0, 0.1, t.size)])
    raised, result = _raises(values)
    for field in (result.surprise[200:], result.score[200:]):
        assert np.mean(field == field.max()) <= 0.001


def test_surprise_is_monotone_in_the_tail_probability_and_matches_the_score():
    z = np.linspace(0.0, 40.0, 4001)  # far beyond where 1 − Φ(z) is representable as a score below 1
    s = surprise.normal_upper(z)
    assert np.all(np.diff(s) > 0) and np.isfinite(s).all()
    assert abs(surprise.to_score(np.array([3.0]))[0] - 0.999) < 1e-12
    assert abs(surprise.of_score(0.999) - 3.0) < 1e-9
    score = surprise.to_score(s)  # the score keeps that order too: it never rounds to 1.0
    assert np.all(np.diff(score) > 0) and score.max() < 1.0
    for t in (3.0, 6.0, 9.0, 300.0, 1e4):
        assert surprise.of_score(float(surprise.to_score(np.array([t]))[0])) == pytest.approx(t, rel=1e-6)
    t2 = np.linspace(0.0, 4000.0, 2001)
    assert np.all(np.diff(surprise.chi2_upper(t2, 3)) > 0)
    assert np.all(np.diff(surprise.any_of(s, 8)) > 0)


def _daily(days: int, seed: int) -> np.ndarray:
    """A 5-minute server metric with a daily cycle (and its second harmonic) and some noise."""
    rng = np.random.default_rng(seed)
    phase = 2 * np.pi * np.arange(288 * days) / 288
    return 50 + 10 * np.sin(phase) + 3 * np.sin(2 * phase) + rng.normal(0, 1, phase.size)


def test_a_clean_daily_cycle_opens_no_alert_and_a_broken_one_is_caught():
    """With daily profiles on (`season_bins`, opt-in)."""
    for seed in (0, 1):
        clean = _daily(10, seed)
        assert len(_raises(clean[:, None], dt=300.0, season_bins=24)[0]) <= 1
        broken = clean.copy()
        broken[8 * 288:9 * 288] = 50 + np.random.default_rng(seed + 10).normal(0, 1, 288)  # a day without the cycle
        raised = _raises(broken[:, None], dt=300.0, season_bins=24)[0]
        days = [(e.ts - T0) / 86400 for e in raised]
        assert any(8.0 <= d < 9.0 for d in days), days
        assert all(d >= 8.0 for d in days), days


def test_a_broken_daily_cycle_is_missed_without_the_profile():
    """The profile is what catches it: the same day goes unnoticed with `season_bins = 0` (the default)."""
    broken = _daily(10, 0)
    broken[8 * 288:9 * 288] = 50 + np.random.default_rng(10).normal(0, 1, 288)
    assert _raises(broken[:, None], dt=300.0, season_bins=0)[0] == []


def test_a_channel_that_idles_with_rare_blips_is_not_a_shifted_level():
    """A channel that sits on one value and now and then blips by its usual step (a flag, a mode, a rare count):
    its scale keeps that step, so its blips never read as level shifts (without the floor, 6 of them did)."""
    rng = np.random.default_rng(4)
    idle = np.full(6000, 0.5)
    blips = rng.choice(np.arange(100, 6000), 30, replace=False)
    idle[blips] = 1.0
    idle[blips[:10] + 1] = 1.0
    values = np.column_stack([idle, 10 + rng.normal(0, 1, 6000)])
    raised = [e for e in _raises(values)[0] if e.channel == 0 and e.ts > T0 + 60.0 * (np.sort(blips)[0] + 10)]
    assert [e for e in raised if e.cause != "forecast"] == [] and len(raised) <= 4
