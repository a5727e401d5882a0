"""The level view at two time scales (`level_fast_window`): abrupt shifts alert sooner, state only when on."""

from __future__ import annotations

import numpy as np
import pytest

from detector import Detector, DetectorConfig
from detector.scoring import levels
from detector.scoring.surprise import of_score, to_score
from detector.state.pool import StatePool


def _first_alert(model, config: DetectorConfig, values: np.ndarray, start: int) -> int:
    r = Detector(model, config=config, channels=values.shape[1]).score_arrays(
        ["s"] * len(values), np.arange(len(values), dtype=float), values
    )
    assert not r.alerting[300:start].any()  # no alert on the clean part either way
    hits = np.flatnonzero(r.alerting[start:])
    return int(hits[0]) if hits.size else len(values)


def test_a_fast_scale_alerts_sooner_on_abrupt_shifts(small_model):
    slow, fast = 0, 0
    for seed in range(5):
        values = np.random.default_rng(seed).normal(0.0, 1.0, (1500, 4))
        values[1000:1300, 0] += 2.0  # an abrupt, sustained shift of one channel
        slow += _first_alert(small_model, DetectorConfig(), values, 1000)
        fast += _first_alert(small_model, DetectorConfig(level_fast_window=10), values, 1000)
    assert fast <= slow - 5, (fast, slow)


def of_scores(scores: list[float]) -> np.ndarray:
    return np.array([of_score(s) for s in scores])


def test_two_scales_are_corrected_for_twice_the_tests():
    slow, fast = of_scores([0.99, 0.9]), of_scores([0.9, 0.999])  # the views give surprises
    surprise, channel, worst = levels.two_scales(slow, np.array([1, 2]), fast, np.array([3, 4]), channels=4)
    np.testing.assert_allclose(to_score(surprise), [0.99**8, 0.999**8], rtol=1e-5)
    assert channel.tolist() == [1, 4] and to_score(worst).tolist() == pytest.approx([0.99, 0.999])


def test_fast_scale_costs_no_state_when_off():
    off = StatePool(state_size=4, channels=8, capacity=10, initial_capacity=10)
    on = StatePool(state_size=4, channels=8, capacity=10, initial_capacity=10, fast_level=True)
    assert off.level_fast.shape == (10, 0) and on.level_fast.shape == (10, 8)
    assert on.bytes_per_sensor - off.bytes_per_sensor == 4 * 2 * 8


def test_fast_scale_does_not_depend_on_batching(small_model):
    values = np.random.default_rng(3).normal(0.0, 1.0, (1500, 4))
    values[1000:1300, 0] += 2.0
    ids, ts = ["s"] * 1500, np.arange(1500.0)
    config = DetectorConfig(level_fast_window=10)
    whole = Detector(small_model, config=config, channels=4).score_arrays(ids, ts, values)
    det = Detector(small_model, config=config, channels=4)
    parts = [det.score_arrays(ids[a : a + 217], ts[a : a + 217], values[a : a + 217]) for a in range(0, 1500, 217)]
    np.testing.assert_allclose(np.concatenate([p.score for p in parts]), whole.score, atol=1e-5)
    assert (np.concatenate([p.alerting for p in parts]) == whole.alerting).all()
