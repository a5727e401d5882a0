"""The engine: batching invariance, bad input, gaps, scale invariance, alerts."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector import Detector, DetectorConfig, RejectReason
from detector.alerts import AlertKind
from tests.conftest import noisy_sine

CONFIG = DetectorConfig(warmup=5, raise_k=2, raise_n=3, clear_m=3, threshold=0.9)


def _stream(sensors: int, steps: int, channels: int, seed: int) -> list[tuple[str, float, np.ndarray]]:
    """Readings of several sensors, each in time order, interleaved at random."""
    rng = np.random.default_rng(seed)
    per_sensor = {
        f"s{i}": (np.cumsum(rng.uniform(0.5, 2.0, steps)), noisy_sine(steps, channels, seed=seed + i, scale=10.0**i))
        for i in range(sensors)
    }
    cursors = {s: 0 for s in per_sensor}
    out = []
    while cursors:
        sensor = list(cursors)[rng.integers(len(cursors))]
        k = cursors[sensor]
        ts, values = per_sensor[sensor]
        if rng.random() < 0.05:  # a spike now and then so alerts fire
            values = values.copy()
            values[k] += 50 * 10.0 ** int(sensor[1:])
        out.append((sensor, float(ts[k]), values[k]))
        cursors[sensor] = k + 1
        if k + 1 == steps:
            del cursors[sensor]
    return out


def score_in_cuts(det: Detector, stream, cuts: list[int]):
    """Score `stream` (sensor, ts, values) in batches cut at `cuts`; yields each batch's StepResult."""
    bounds = [0, *cuts, len(stream)]
    for a, b in zip(bounds, bounds[1:]):
        part = stream[a:b]
        if part:
            yield det.score_arrays([p[0] for p in part], np.array([p[1] for p in part]), np.stack([p[2] for p in part]))


def _run(model, stream, cuts: list[int], channels: int):
    det = Detector(model, config=CONFIG, channels=channels)
    per_reading, events = [], []
    for r in score_in_cuts(det, stream, cuts):
        for i in range(len(r)):
            per_reading.append((r.sensor_ids[i], r.ts[i], r.score[i], r.anomalous[i], r.alerting[i], r.expected[i]))
        events += r.events
    return per_reading, events


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    channels=st.integers(1, 3),
    cuts=st.lists(st.integers(0, 240), max_size=12),
)
def test_results_do_not_depend_on_batching(small_model, seed, channels, cuts):
    stream = _stream(sensors=4, steps=60, channels=channels, seed=seed)
    one_by_one, events_single = _run(small_model, stream, list(range(1, len(stream))), channels)
    batched, events_batched = _run(small_model, stream, sorted(cuts), channels)
    whole, _ = _run(small_model, stream, [], channels)
    for a, b, c in zip(one_by_one, batched, whole):
        assert a[0] == b[0] == c[0] and a[1] == b[1] == c[1]
        np.testing.assert_allclose([a[2], b[2]], [c[2], c[2]], atol=1e-5)
        assert a[3] == b[3] == c[3] and a[4] == b[4] == c[4]
        np.testing.assert_allclose(np.stack([a[5], b[5]]), np.stack([c[5], c[5]]), rtol=1e-5, atol=1e-5 * 10.0 ** int(a[0][1:]))
    key = lambda e: (e.sensor_id, e.ts, e.kind)
    assert sorted(map(key, events_single)) == sorted(map(key, events_batched))


def test_same_sensor_twice_in_one_batch_is_stepped_in_order(small_model):
    values = noisy_sine(20)
    det_a = Detector(small_model, config=CONFIG, channels=1)
    det_b = Detector(small_model, config=CONFIG, channels=1)
    together = det_a.score_arrays(["x"] * 20, np.arange(20.0), values)
    apart = [det_b.score_arrays(["x"], np.array([t]), values[t : t + 1]) for t in range(20)]
    np.testing.assert_allclose(together.score, [r.score[0] for r in apart], atol=1e-6)
    assert (together.status == 0).all()


@pytest.mark.parametrize(
    ("values", "ts", "reason"),
    [
        (float("nan"), 100.0, RejectReason.NOT_FINITE),
        (float("inf"), 100.0, RejectReason.NOT_FINITE),
        ("12.5", 100.0, RejectReason.NOT_NUMERIC),
        (True, 100.0, RejectReason.NOT_NUMERIC),
        (None, 100.0, RejectReason.NOT_NUMERIC),
        ([1.0, 2.0], 100.0, RejectReason.WRONG_CHANNELS),
        (1.0, "yesterday", RejectReason.BAD_TIMESTAMP),
        (1.0, float("nan"), RejectReason.BAD_TIMESTAMP),
        (1.0, 5.0, RejectReason.OUT_OF_ORDER),
        (1.0, 9.0, RejectReason.DUPLICATE),
        (1e400, 100.0, RejectReason.NOT_FINITE),
        (-1e16, 100.0, RejectReason.NOT_FINITE),  # finite, but beyond MAX_ABS_VALUE: would poison float32 state
    ],
)
def test_bad_input_is_rejected_with_reason_and_leaves_state_untouched(small_model, values, ts, reason):
    det = Detector(small_model, config=CONFIG, channels=1)
    for t in range(10):
        det.score_one("s", float(t), float(np.sin(t)))
    pool = det.engine.pool
    slot = pool.slot_of("s")
    before = {name: getattr(pool, name)[slot].copy() for name in ("hidden", "norm_mean", "norm_var", "count", "last_ts", "forecast")}
    out = det.score_one("s", ts, values)
    assert out.rejected is reason
    assert np.isnan(out.score) and not out.is_anomaly  # issue 17: a rejected reading's score is NaN, not 0.0
    for name, value in before.items():
        np.testing.assert_array_equal(getattr(pool, name)[slot], value, err_msg=name)
    assert det.stats.rejected[reason] == 1
    assert det.score_one("s", 10.0, 0.5).rejected is None  # the sensor carries on


def test_bad_sensor_ids_are_rejected(small_model):
    det = Detector(small_model, config=CONFIG, channels=1)
    r = det.score_many(["", "x" * 300, None, 3.5, "ok\x00", "good"], [1.0] * 6, [1.0] * 6)
    assert [r.reason(i) for i in range(6)] == [RejectReason.BAD_SENSOR_ID] * 5 + [None]
    assert len(det) == 1


def test_a_batch_of_more_new_sensors_than_capacity_evicts_instead_of_failing(small_model):
    """A flood of distinct ids in one batch (hostile input): every reading scored, the pool stays bounded."""
    det = Detector(small_model, config=DetectorConfig(capacity=10, initial_capacity=4), channels=1)
    det.score_many(["keep"], [0.0], [1.0])
    r = det.score_many([f"flood-{i}" for i in range(95)] + ["keep"], [1.0] * 96, [1.0] * 96)
    assert all(r.reason(i) is None for i in range(96))
    pool = det.engine.pool
    assert len(pool) == 10 and pool.allocated == 10
    assert pool.stats.evicted_capacity == 96 - 10 + 1  # "keep" was evicted too and came back fresh


def test_bad_rows_do_not_disturb_others_in_the_batch(small_model):
    values = noisy_sine(30)
    clean = Detector(small_model, config=CONFIG, channels=1)
    dirty = Detector(small_model, config=CONFIG, channels=1)
    # the time axis starts at 1: the late reading of t = 0 is at 0.5, not before the epoch (that is bad_timestamp)
    ref = [clean.score_one("a", float(t + 1), float(values[t, 0])).score for t in range(30)]
    got = []
    for t in range(30):
        r = dirty.score_many(["a", "a", "b"], [float(t + 1), t + 0.5, float(t + 1)], [float(values[t, 0]), 1.0, "bad"])
        got.append(r.score[0])
        assert r.reason(1) in (RejectReason.OUT_OF_ORDER, None if t == 0 else RejectReason.OUT_OF_ORDER)
        assert r.reason(2) is RejectReason.NOT_NUMERIC
    np.testing.assert_allclose(got, ref, atol=1e-6)


def test_long_gap_resets_hidden_state_and_is_counted(small_model):
    det = Detector(small_model, config=CONFIG.model_copy(update={"max_gap": 60.0}), channels=1)
    for t in range(20):
        det.score_one("s", float(t), float(np.sin(t)))
    slot = det.engine.pool.slot_of("s")
    assert np.abs(det.engine.pool.hidden[slot]).sum() > 0
    fresh = Detector(small_model, config=CONFIG, channels=1)
    fresh.score_one("s", 0.0, 5.0)  # only fixes normalisation; compare hidden states after one step from zero
    out = det.score_one("s", 1000.0, float(np.sin(20)))
    assert det.stats.gap_resets == 1
    assert np.isnan(out.expected[0])  # no forecast is carried over a reset
    assert out.score == 0.0
    assert det.engine.pool.since_reset[slot] == 1
    nxt = det.score_one("s", 1001.0, float(np.sin(21)))
    assert np.isfinite(nxt.expected[0])


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e6])
def test_scores_are_comparable_across_scales(small_model, scale):
    base = noisy_sine(400, seed=1)
    base[350:360] += 3.0

    def scores(s: float, offset: float) -> np.ndarray:
        det = Detector(small_model, config=CONFIG, channels=1)
        r = det.score_arrays(["x"] * 400, np.arange(400.0), base * s + offset)
        return r.score

    np.testing.assert_allclose(scores(scale, 7 * scale), scores(1.0, 7.0), atol=2e-3)


def test_an_obvious_anomaly_raises_one_alert_with_reason_and_clears(small_model):
    det = Detector(small_model, config=DetectorConfig(warmup=50, threshold=0.99), channels=2)
    values = noisy_sine(600, channels=2, seed=4)
    values[400:420, 1] += 8.0
    r = det.score_arrays(["pump"] * 600, np.arange(600.0), values)
    raises = [e for e in r.events if e.kind is AlertKind.RAISE]
    clears = [e for e in r.events if e.kind is AlertKind.CLEAR]
    assert len([e for e in raises if 400 <= e.ts < 425]) == 1
    alert = next(e for e in raises if 400 <= e.ts < 425)
    assert alert.channel == 1
    assert alert.seen > alert.expected + 4
    assert any(c.alert_id == alert.alert_id and c.ts > alert.ts for c in clears)
    assert r.score[400:405].max() > 0.99 > np.median(r.score[100:400])
    assert not r.anomalous[:50].any()  # warm-up


def test_no_alerts_during_warmup(small_model):
    det = Detector(small_model, config=DetectorConfig(warmup=100, threshold=0.9, raise_k=1, raise_n=1), channels=1)
    values = noisy_sine(100)
    values[20:40] += 30
    r = det.score_arrays(["s"] * 100, np.arange(100.0), values)
    assert not r.anomalous.any() and not r.events


def test_channels_inferred_from_first_reading(small_model):
    det = Detector(small_model, config=CONFIG)
    assert det.score_one("a", 1.0, [1.0, 2.0, 3.0]).rejected is None
    assert det.engine.channels == 3
    assert det.score_one("a", 2.0, [1.0]).rejected is RejectReason.WRONG_CHANNELS


def test_a_large_offset_does_not_cost_precision(small_model):
    values = 0.01 * noisy_sine(300, seed=2)

    def residuals(offset: float) -> np.ndarray:
        det = Detector(small_model, config=CONFIG, channels=1)
        return det.score_arrays(["s"] * 300, np.arange(300.0), values + offset).residual[50:, 0]

    np.testing.assert_allclose(residuals(1e6), residuals(0.0), atol=1e-6)


def test_a_stuck_sensor_raises_an_alert_naming_the_stuck_channel(small_model):
    values = noisy_sine(500, channels=2, seed=6)
    values[300:360, 0] = values[299, 0]
    det = Detector(small_model, config=DetectorConfig(warmup=50, stuck_after=10), channels=2)
    r = det.score_arrays(["s"] * 500, np.arange(500.0), values)
    raises = [e for e in r.events if e.kind is AlertKind.RAISE and 300 <= e.ts < 330]
    assert len(raises) == 1
    assert raises[0].cause == "stuck" and raises[0].channel == 0 and raises[0].seen == values[299, 0]
    assert r.score[312:360].min() > 0.999


def test_a_quantised_channel_that_often_repeats_is_not_stuck(small_model):
    rng = np.random.default_rng(0)
    runs = np.repeat(rng.integers(30, 34, 200).astype(float), rng.integers(5, 25, 200))[:2000]
    det = Detector(small_model, config=DetectorConfig(warmup=50, stuck_after=10), channels=1)
    r = det.score_arrays(["flow"] * runs.size, np.arange(float(runs.size)), runs[:, None])
    # Once it has seen a few dozen runs (here ~400 readings) it knows repeats are its normal behaviour.
    assert not any(e.cause == "stuck" for e in r.events if e.ts > 400)


def test_a_sustained_moderate_shift_raises_a_level_alert(small_model):
    rng = np.random.default_rng(3)
    values = rng.normal(0, 1, (1500, 2))
    values[1000:1400, 1] += 2.5  # 2.5 σ on one channel, held for 400 readings
    det = Detector(small_model, config=DetectorConfig(warmup=60, level_window=60), channels=2)
    r = det.score_arrays(["valve"] * 1500, np.arange(1500.0), values)
    raises = [e for e in r.events if e.kind is AlertKind.RAISE]
    inside = [e for e in raises if 1000 <= e.ts < 1400]
    assert inside and inside[0].cause == "level" and inside[0].channel == 1
    assert abs(inside[0].expected) < 0.5 and inside[0].seen > 1.0  # usual level vs what was seen
    assert r.alerting[1000:1400].mean() > 0.5
    assert r.alerting[300:1000].mean() < 0.05


def test_a_permanent_change_becomes_normal_and_its_alert_clears(small_model):
    rng = np.random.default_rng(5)
    values = rng.normal(0, 1, (3000, 1))
    values[1000:] += 4.0  # a new set point, for good
    det = Detector(small_model, config=DetectorConfig(warmup=60, norm_window=200), channels=1)
    r = det.score_arrays(["s"] * 3000, np.arange(3000.0), values)
    raised = [e.ts for e in r.events if e.kind is AlertKind.RAISE and e.ts >= 1000]
    cleared = [e.ts for e in r.events if e.kind is AlertKind.CLEAR and e.ts >= 1000]
    assert raised and raised[0] < 1010
    assert cleared and cleared[0] < 2000  # the reference moved on after ~norm_window readings of alert
    assert not r.alerting[2500:].any()


def test_an_alerts_reason_does_not_depend_on_the_rest_of_its_batch(small_model):
    """`threshold_error` is the sensor's error level before the reading, whether the sensor is alone in its
    batch or scored beside a sensor seen for the first time (it used to be the level after it when alone)."""
    values = noisy_sine(80)
    values[40:] += 30
    raised = []
    for with_new in (False, True):
        det = Detector(small_model, config=CONFIG, channels=1)
        events = []
        for t in range(80):
            ids, ts, rows = ["a"], [float(t)], [values[t]]
            if with_new and t >= 40:
                ids.append(f"new{t}")
                ts.append(float(t))
                rows.append([1.0])
            result = det.score_arrays(ids, np.array(ts), np.array(rows))
            events += [e.as_dict() for e in result.events if e.sensor_id == "a"]
        raised.append(events)
    assert raised[0] and raised[0] == raised[1]
