"""The level view's multiple-testing correction and the correlation view, in isolation and in the engine."""

from __future__ import annotations

import math

import numpy as np

from detector import Detector, DetectorConfig
from detector.scoring import correlation, levels
from detector.scoring.surprise import to_score
from detector.alerts import AlertKind
from detector.state.pool import StatePool


def _settled_levels(channels: int, z: float) -> np.ndarray:
    """Level score of one reading whose channels all sit at normalised level z, with spread 1 and levels at z."""
    n = 1
    level = np.full((n, channels), z, np.float32)
    spread = np.ones((n, channels), np.float32)
    _, _, surprise, _, _ = levels.update(level, spread, level.copy(), np.array([10_000]), 60.0, 1000.0)
    return to_score(surprise)


def test_level_score_is_corrected_for_the_number_of_channels():
    one = float(_settled_levels(1, 3.0)[0])
    assert math.isclose(one, 2 * 0.5 * math.erfc(-3.0 / math.sqrt(2)) - 1, rel_tol=1e-6)
    eight = float(_settled_levels(8, 3.0)[0])
    assert math.isclose(eight, one**8, rel_tol=1e-5)  # Šidák: the largest of 8 channels is less surprising


def _step_joint(z: np.ndarray, window: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """Run correlation.update over readings z [T, C] of one sensor; scores and channels per reading."""
    t, c = z.shape
    level = np.zeros((1, c), np.float32)
    cov = np.zeros((1, c * c), np.float32)
    scores, channels = np.zeros(t), np.zeros(t, int)
    for i in range(t):
        level, cov, s, ch = correlation.update(level, cov, z[i : i + 1], np.array([i]), window, 1000.0)
        scores[i], channels[i] = to_score(s)[0], ch[0]
    return scores, channels


def test_correlation_score_of_one_channel_is_the_level_score():
    level = np.array([[2.0]], np.float32)
    cov = np.array([[0.25]], np.float32)  # level spread σ = 0.5
    _, _, surprise, _ = correlation.update(level, cov, level.copy(), np.array([10_000]), 60.0, 1000.0)
    assert math.isclose(float(to_score(surprise)[0]), math.erf(4.0 / math.sqrt(2)), rel_tol=1e-6)  # 2Φ(2 / 0.5) − 1


def test_a_broken_relation_between_channels_scores_where_each_channel_alone_looks_usual():
    rng = np.random.default_rng(0)
    common = np.repeat(rng.normal(0, 1, 200), 20)[:3000]  # slow shared movement: the two channels move together
    z = np.stack([common + rng.normal(0, 0.1, 3000), common + rng.normal(0, 0.1, 3000)], axis=1)
    z[2500:2800, 1] = -z[2500:2800, 1]  # the second channel moves against the first, each within its usual range
    scores, _ = _step_joint(z)
    assert np.percentile(scores[500:2500], 99) < 0.999
    assert (scores[2520:2800] > 0.999).mean() > 0.5
    # Each channel's own level stays in its usual range: the per-channel level view hardly sees it.
    assert np.abs(z[2500:2800]).max() < np.abs(z[:2500]).max() + 0.5


def test_correlation_view_costs_no_state_when_off():
    off = StatePool(state_size=4, channels=8, capacity=10, initial_capacity=10)
    on = StatePool(state_size=4, channels=8, capacity=10, initial_capacity=10, correlation=True)
    assert off.joint_cov.shape == (10, 0) and on.joint_cov.shape == (10, 64)
    assert on.bytes_per_sensor - off.bytes_per_sensor == 4 * (8 + 64)


def test_engine_names_the_correlation_cause_and_does_not_depend_on_batching(small_model):
    rng = np.random.default_rng(1)
    common = np.repeat(rng.normal(0, 1, 150), 20)[:3000]
    values = np.stack([common + rng.normal(0, 0.1, 3000), common + rng.normal(0, 0.1, 3000)], axis=1)
    values[2500:2800, 1] = -values[2500:2800, 1]
    config = DetectorConfig(views=("forecast", "level", "stuck", "correlation"), correlation_max_channels=8, correlation_window=10)
    whole = Detector(small_model, config=config, channels=2).score_arrays(["p"] * 3000, np.arange(3000.0), values)
    raises = [e for e in whole.events if e.kind is AlertKind.RAISE and 2500 <= e.ts < 2800]
    assert any(e.cause == "correlation" for e in raises)
    assert whole.alerting[2500:2800].mean() > 5 * whole.alerting[1000:2500].mean()
    det = Detector(small_model, config=config, channels=2)
    parts = [det.score_arrays(["p"] * 700, np.arange(a, a + 700.0), values[a : a + 700]) for a in range(0, 2800, 700)]
    parts.append(det.score_arrays(["p"] * 200, np.arange(2800.0, 3000.0), values[2800:]))
    np.testing.assert_allclose(np.concatenate([p.score for p in parts]), whole.score, atol=1e-5)
    assert (np.concatenate([p.alerting for p in parts]) == whole.alerting).all()
