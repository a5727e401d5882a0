"""The engine with windowed networks: encdec (reconstructs the current reading) and bidir (look-ahead k)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from detector import Detector, Model, ModelError
from detector.model.networks import Network, build_network
from tests.test_engine import CONFIG, _stream, score_in_cuts

K = 3


@pytest.fixture(scope="module", params=["encdec", "bidir"])
def windowed(request) -> Model:
    torch.manual_seed(7)
    hp = {"encdec": {"architecture": "encdec", "hidden_size": 4, "window": 6},
          "bidir": {"architecture": "bidir", "hidden_size": 6, "lookahead": K}}[request.param]
    return Model(name=request.param, network=build_network(hp))


def _run(model: Model, stream, cuts: list[int], channels: int):
    """Each scored reading, keyed by (sensor, the reading's own ts), and the alert events."""
    det = Detector(model, config=CONFIG, channels=channels)
    scored, events = {}, []
    for r in score_in_cuts(det, stream, cuts):
        assert (r.status == 0).all()
        for i in np.flatnonzero(r.released).tolist():
            scored[(r.sensor_ids[i], float(r.target_ts[i]))] = (r.score[i], r.anomalous[i], r.alerting[i],
                                                               r.expected[i], r.seen[i])
        events += r.events
    return scored, events


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), channels=st.integers(1, 2), cuts=st.lists(st.integers(0, 160), max_size=8))
def test_windowed_results_do_not_depend_on_batching(windowed, seed, channels, cuts):
    stream = _stream(sensors=3, steps=50, channels=channels, seed=seed)
    one_by_one, ev1 = _run(windowed, stream, list(range(1, len(stream))), channels)
    batched, ev2 = _run(windowed, stream, sorted(set(cuts)), channels)
    assert one_by_one.keys() == batched.keys()
    delay = windowed.network.lookahead
    assert len(one_by_one) == len(stream) - 3 * delay  # every reading but each sensor's last `delay`
    for key, a in one_by_one.items():
        b = batched[key]
        np.testing.assert_allclose(a[0], b[0], atol=1e-5)
        assert a[1:3] == b[1:3]
        np.testing.assert_allclose(a[3], b[3], rtol=1e-5, atol=1e-5 * 10.0 ** int(key[0][1:]))
        np.testing.assert_array_equal(a[4], b[4])
    key = lambda e: (e.sensor_id, e.ts, e.kind)
    assert sorted(map(key, ev1)) == sorted(map(key, ev2))


def test_a_reading_is_scored_with_its_own_values_and_time(windowed):
    rng = np.random.default_rng(0)
    values = rng.normal(5, 1, (80, 1))
    ts = 1000.0 + np.arange(80) * 2.0
    r = Detector(windowed, channels=1).score_arrays(["a"] * 80, ts, values)
    d = windowed.network.lookahead
    assert r.delay == d
    assert np.isnan(r.target_ts[:d]).all() and not r.released[:d].any()  # nothing to release yet
    np.testing.assert_array_equal(r.target_ts[d:], ts[: 80 - d])
    np.testing.assert_array_equal(r.seen[d:], values[: 80 - d])
    np.testing.assert_allclose(r.residual[d:], r.seen[d:] - r.expected[d:])


def test_bidirectional_scores_never_use_more_than_k_future_readings():
    torch.manual_seed(1)
    model = Model(name="bidir", network=build_network({"architecture": "bidir", "hidden_size": 6, "lookahead": K}))
    rng = np.random.default_rng(2)
    base = rng.normal(0, 1, (120, 1))
    changed = base.copy()
    t = 70
    changed[t + K + 1 :] += 25.0  # a change after position t + K
    ts = np.arange(120.0)
    a = Detector(model, config=CONFIG, channels=1).score_arrays(["s"] * 120, ts, base)
    b = Detector(model, config=CONFIG, channels=1).score_arrays(["s"] * 120, ts, changed)
    upto = a.released & (a.target_ts <= t)
    assert upto.sum() == t + 1
    np.testing.assert_array_equal(a.score[upto], b.score[upto])
    np.testing.assert_array_equal(a.expected[upto], b.expected[upto])
    # ... and the change does reach the scores of the readings just before it, within the look-ahead
    within = b.released & (b.target_ts > t) & (b.target_ts <= t + K)
    assert not np.array_equal(a.expected[within], b.expected[within])


def test_a_gap_drops_the_pending_readings_and_restarts_the_look_ahead():
    torch.manual_seed(1)
    model = Model(name="bidir", network=build_network({"architecture": "bidir", "hidden_size": 6, "lookahead": K}))
    ts = np.r_[np.arange(30.0), 10_000 + np.arange(30.0)]  # a gap longer than max_gap (3600 s)
    values = np.random.default_rng(0).normal(0, 1, (60, 1))
    r = Detector(model, channels=1).score_arrays(["s"] * 60, ts, values)
    assert r.released[30 - K : 30].all()  # released on their own schedule
    assert not r.released[30 : 30 + K].any()  # after the gap the line refills: the last K before it are never scored
    np.testing.assert_array_equal(r.target_ts[30 + K :], ts[30 : 60 - K])


def test_a_network_estimating_further_ahead_than_the_next_reading_is_refused():
    class TwoAhead(Network):
        architecture = "two-ahead"
        target_offset = 2
        state_per_lane = 1

    with pytest.raises(ModelError, match="2 steps ahead"):
        Detector(Model(name="x", network=TwoAhead(hidden_size=2, layers=1)), channels=1)


def test_windowed_state_round_trips_through_export_and_import(windowed):
    values = np.random.default_rng(3).normal(0, 1, (60, 2))
    ts = np.arange(60.0)
    whole = Detector(windowed, config=CONFIG, channels=2).score_arrays(["s"] * 60, ts, values)
    first = Detector(windowed, config=CONFIG, channels=2)
    first.score_arrays(["s"] * 40, ts[:40], values[:40])
    second = Detector(windowed, config=CONFIG, channels=2)
    report = second.engine.import_state(["s"], first.engine.export_state(["s"]))
    assert report.restored == 1
    rest = second.score_arrays(["s"] * 20, ts[40:], values[40:])
    np.testing.assert_array_equal(rest.target_ts, whole.target_ts[40:])
    np.testing.assert_allclose(rest.score, whole.score[40:], atol=1e-6)
