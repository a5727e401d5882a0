"""Online learning (`learning = "online"`): it learns, it does not learn faults, and a weights swap breaks nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detector import Detector, DetectorConfig
from detector.alerts import AlertKind
from detector.config import load_config
from detector.errors import ConfigError, ModelError
from detector.model.store import load_model

T0 = 1_700_000_000.0


def _fleet(sensors: int, steps: int, seed: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Step-major readings of `sensors` noisy sine sensors (ids, ts, values [rows, 1])."""
    rng = np.random.default_rng(seed)
    t = np.arange(steps)
    phase = rng.uniform(0, 2 * np.pi, sensors)
    values = 10 + 2 * np.sin(t[:, None] / 15.0 + phase) + rng.normal(0, 0.2, (steps, sensors))
    ids = [f"s{i}" for i in range(sensors)] * steps
    ts = np.repeat(T0 + 60.0 * t, sensors)
    return ids, ts, values.reshape(-1, 1)


def _score(det: Detector, ids, ts, values, batch: int):
    results = [det.score_arrays(ids[i:i + batch], ts[i:i + batch], values[i:i + batch])
               for i in range(0, len(ids), batch)]
    return results


def test_learning_changes_the_weights_and_improves_the_forecast():
    ids, ts, values = _fleet(8, 1500, seed=0)
    off = Detector(config=DetectorConfig(), channels=1)
    on = Detector(config=DetectorConfig(learning="online", learning_every=32, learning_rate=3e-3), channels=1)
    before = [p.detach().clone() for p in on.engine.network.parameters()]
    r_off, r_on = _score(off, ids, ts, values, 64), _score(on, ids, ts, values, 64)
    assert off.engine.weights_version == 0 and on.engine.weights_version > 10
    assert any(not torch.equal(a, b) for a, b in zip(before, on.engine.network.parameters()))
    # the shipped weights were not touched: a new detector still scores with them
    fresh = load_model("gru-default")
    assert all(torch.equal(a, b) for a, b in zip(fresh.network.parameters(), off.engine.network.parameters()))
    err = [np.nanmean(np.abs(np.concatenate([r.residual for r in rs])[-4000:])) for rs in (r_off, r_on)]
    assert err[1] < err[0]  # it learnt this fleet's sine: smaller forecast errors late in the stream


def test_a_sustained_fault_stays_alerted_while_learning():
    ids, ts, values = _fleet(4, 2500, seed=1)
    fault = np.arange(len(ids)).reshape(-1, 4)[1200:1500, 0]  # sensor s0, steps 1200-1499: a level shift
    values[fault] += 8.0
    off = _score(Detector(channels=1), ids, ts, values, 40)
    det = Detector(config=DetectorConfig(learning="online", learning_every=16, learning_rate=3e-3), channels=1)
    results = _score(det, ids, ts, values, 40)
    alerting = np.concatenate([r.alerting for r in results])[fault]
    raised = [e for r in results for e in r.events if e.kind is AlertKind.RAISE and e.sensor_id == "s0"]
    assert raised and 1200 <= (raised[0].ts - T0) / 60 < 1230
    first = int(np.argmax(alerting))
    assert alerting[first:].all()  # open from its raise to the fault's end (300 < norm_window readings)
    np.testing.assert_array_equal(alerting, np.concatenate([r.alerting for r in off])[fault])  # as without learning
    assert det.engine.learner.stats.left_out >= 300 - first and det.engine.weights_version > 0


def test_a_weights_swap_leaves_every_state_readable():
    ids, ts, values = _fleet(6, 400, seed=2)
    det = Detector(config=DetectorConfig(learning="online", learning_every=8), channels=1)
    _score(det, ids[:1200], ts[:1200], values[:1200], 30)
    version = det.engine.weights_version
    records = det.engine.export_state([f"s{i}" for i in range(6)])
    _score(det, ids[1200:], ts[1200:], values[1200:], 30)
    assert det.engine.weights_version > version > 0
    report = det.engine.import_state([f"s{i}" for i in range(6)], records)
    assert report.refused == 0 and report.restored == 6
    after = _score(det, ids[-60:], ts[-60:] + 3600.0, values[-60:], 60)  # scoring goes on from the restored state
    assert np.isfinite(after[0].score[after[0].status == 0]).all()


def test_learning_off_and_a_version_held_score_alike():
    """Learning that never reaches its first update scores exactly as learning off (the engine's one meaning)."""
    ids, ts, values = _fleet(5, 300, seed=3)
    off = np.concatenate([r.score for r in _score(Detector(channels=1), ids, ts, values, 50)])
    held = Detector(config=DetectorConfig(learning="online", learning_every=10_000), channels=1)
    on = np.concatenate([r.score for r in _score(held, ids, ts, values, 7)])
    assert held.engine.weights_version == 0
    np.testing.assert_allclose(on, off, rtol=0, atol=1e-5)


def test_learning_needs_a_forecaster_and_a_valid_setting():
    with pytest.raises(ModelError, match="learning = off"):
        Detector("encdec-default", config=DetectorConfig(learning="online"), channels=1).score_arrays(
            ["a"], np.array([T0]), np.zeros((1, 1)))
    with pytest.raises(ConfigError, match="learning"):
        load_config(learning="sometimes")
