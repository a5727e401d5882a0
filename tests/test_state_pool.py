"""The state pool: slots, growth, eviction by idleness and by capacity."""

from __future__ import annotations

import numpy as np
import pytest

from detector import Detector, DetectorConfig
from detector.state.pool import StatePool


def test_growth_keeps_existing_state_and_doubles():
    pool = StatePool(state_size=4, channels=1, capacity=100, initial_capacity=2)
    slots = pool.assign(["a", "b"])
    pool.hidden[slots] = [[1, 1, 1, 1], [2, 2, 2, 2]]
    pool.assign(["c", "d", "e"])
    assert pool.allocated == 8 and pool.stats.grown == 1  # one doubling step to fit the batch
    np.testing.assert_array_equal(pool.hidden[pool.slot_of("b")], [2, 2, 2, 2])
    assert len(pool) == 5


def test_same_new_id_twice_in_one_batch_gets_one_slot():
    pool = StatePool(state_size=2, channels=1, capacity=10, initial_capacity=4)
    slots = pool.assign(["x", "x", "y"])
    assert slots[0] == slots[1] != slots[2]
    assert len(pool) == 2


def test_capacity_evicts_the_sensor_with_the_oldest_reading_and_counts():
    pool = StatePool(state_size=2, channels=1, capacity=4, initial_capacity=4)
    for t, name in enumerate("abcd"):
        pool.last_ts[pool.assign([name])] = float(t)
    pool.last_ts[pool.assign(["a"])] = 10.0  # a is now the most recent; b the oldest
    pool.assign(["e"])
    assert pool.slot_of("b") is None
    assert all(pool.slot_of(s) is not None for s in "acde")
    assert len(pool) == 4
    assert pool.stats.evicted_capacity == 1


def test_sensors_of_the_current_batch_are_never_evicted():
    pool = StatePool(state_size=2, channels=1, capacity=3, initial_capacity=3)
    for t, name in enumerate("abc"):
        pool.last_ts[pool.assign([name])] = float(t)
    slots = pool.assign(["a", "new"])  # a is the oldest, but it is in this batch
    assert (slots >= 0).all() and pool.slot_of("a") is not None and pool.slot_of("b") is None


def test_a_new_sensor_starts_from_fresh_state_in_a_reused_slot():
    pool = StatePool(state_size=2, channels=1, capacity=1, initial_capacity=1)
    slot = pool.assign(["a"])[0]
    pool.hidden[slot] = 5.0
    pool.count[slot] = 9
    new = pool.assign(["b"])[0]
    assert new == slot
    assert pool.count[slot] == 0 and not pool.hidden[slot].any()


def test_more_distinct_sensors_in_one_batch_than_capacity_is_a_clear_error():
    pool = StatePool(state_size=2, channels=1, capacity=2, initial_capacity=2)
    with pytest.raises(OverflowError, match="raise capacity"):
        pool.assign(["a", "b", "c"])


def test_idle_sensors_are_evicted_by_event_time(small_model):
    det = Detector(small_model, config=DetectorConfig(idle_ttl=100.0), channels=1)
    det.score_one("old", 0.0, 1.0)
    for t in range(0, 300, 10):
        det.score_one("busy", float(t), 1.0 + t % 3)
    assert det.engine.pool.slot_of("old") is None
    assert det.engine.pool.slot_of("busy") is not None
    assert det.engine.pool.stats.evicted_idle == 1
    # An evicted sensor that comes back starts over instead of failing.
    assert det.score_one("old", 400.0, 1.0).rejected is None


def test_flood_of_new_ids_stays_within_capacity(small_model):
    det = Detector(small_model, config=DetectorConfig(capacity=500, initial_capacity=64), channels=1)
    for start in range(0, 5000, 250):
        ids = [f"s{i}" for i in range(start, start + 250)]
        det.score_arrays(ids, np.full(250, float(start)), np.ones((250, 1)))
    assert len(det) <= 500
    assert det.engine.pool.allocated == 500
    assert det.engine.pool.stats.evicted_capacity >= 4500


def test_remove_forgets_sensors(small_model):
    det = Detector(small_model, channels=1)
    det.score_many(["a", "b"], [1.0, 1.0], [1.0, 2.0])
    assert det.forget(["a", "zzz"]) == 1
    assert len(det) == 1


def test_bytes_per_sensor_matches_the_arrays():
    pool = StatePool(state_size=64, channels=1, capacity=1000, initial_capacity=1000)
    assert pool.bytes_per_sensor * 1000 == pool.nbytes
    assert pool.bytes_per_sensor < 420  # 407 at H = 64: the statistics, 12 of bookkeeping, 4 of channel-name set id


def test_daily_profiles_cost_bins_plus_three_floats_per_channel():
    off = StatePool(state_size=4, channels=8, capacity=10, initial_capacity=10)
    on = StatePool(state_size=4, channels=8, capacity=10, initial_capacity=10, season_bins=24)
    assert on.bytes_per_sensor - off.bytes_per_sensor == 4 * (24 + 3) * 8


def test_gather_and_scatter_round_trip_every_field():
    pool = StatePool(state_size=3, channels=2, capacity=10, initial_capacity=10)
    slots = pool.assign(["a", "b", "c"])
    rows = pool.gather(slots[[2, 0]])
    rows.hidden[:] = [[1, 2, 3], [4, 5, 6]]
    rows.norm_mean[0] = [7.5, 8.5]
    rows.count[:] = [11, 12]
    pool.scatter(slots[[2, 0]], rows)
    np.testing.assert_array_equal(pool.hidden[slots[0]], [4, 5, 6])
    np.testing.assert_array_equal(pool.norm_mean[slots[2]], [7.5, 8.5])
    assert pool.count[slots[2]] == 11 and pool.count[slots[0]] == 12 and pool.count[slots[1]] == 0
    assert np.isnan(pool.forecast[slots[1]]).all()  # a fresh sensor has no forecast


def test_id_map_survives_growth_removal_and_reuse():
    from detector.state.id_map import IdMap, hash_ids

    ids = [f"sensor-{i}" for i in range(20_000)]
    keys = hash_ids(ids)
    m = IdMap(8)
    m.insert(keys[:15_000], np.arange(15_000))
    m.remove(keys[:5_000])
    m.insert(keys[15_000:], np.arange(15_000, 20_000))
    np.testing.assert_array_equal(m.lookup(keys[:5_000]), -1)
    np.testing.assert_array_equal(m.lookup(keys[5_000:]), np.arange(5_000, 20_000))
    assert len(m) == 15_000
    assert m.nbytes / len(m) <= 64  # load 1/4..1/2; a dict of str ids costs ~100 B per entry plus the strings


def test_id_hashes_never_take_the_keys_reserved_for_empty_and_deleted_entries():
    from detector.state.id_map import hash_ids

    # Python hashes small ints to themselves (and -1 to -2): 0 and 1 are the reserved keys, nothing else moves
    assert hash_ids([0, 1, -1, 2, 3, -3]).tolist() == [2, 3, -2, 2, 3, -3]


def test_id_map_stays_between_a_quarter_and_half_full_as_it_grows():
    from detector.state.id_map import IdMap, hash_ids

    keys = hash_ids([f"sensor-{i}" for i in range(300_000)])
    m = IdMap(8)
    for start in range(0, keys.size, 3_000):
        m.insert(keys[start:start + 3_000], np.arange(start, min(keys.size, start + 3_000)))
        assert 24 <= m.nbytes / len(m) <= 48  # 12 bytes an entry at load 1/4..1/2
    np.testing.assert_array_equal(m.lookup(keys), np.arange(keys.size))


def test_float16_state_halves_the_network_share_of_a_row():
    full = StatePool(state_size=64, channels=1, capacity=10, initial_capacity=10)
    half = StatePool(state_size=64, channels=1, capacity=10, initial_capacity=10, hidden_dtype="float16")
    assert full.bytes_per_sensor - half.bytes_per_sensor == 64 * 2
    assert half.hidden.dtype == np.float16 and full.hidden.dtype == np.float32
    with pytest.raises(ValueError, match="float32 or float16"):
        StatePool(state_size=4, channels=1, capacity=10, hidden_dtype="bfloat16")


def test_float16_state_keeps_detection_and_batching_invariance():
    """Half-precision state moves scores a little, not what is detected; batching still does not matter."""
    from detector import Detector
    from detector.model.store import untrained

    model = untrained(16, 1, seed=1)
    rng = np.random.default_rng(4)
    t = np.arange(600)
    values = (np.sin(t / 9.0)[:, None] + 0.1 * rng.standard_normal((600, 3)))
    values[400:420, 1] += 3.0
    ids = ["a", "b", "c"]
    stream_ids = [ids[i % 3] for i in range(1800)]
    ts = np.repeat(t.astype(float), 3)
    vals = values.reshape(-1, 1)
    full = Detector(model, channels=1).score_arrays(stream_ids, ts, vals)
    half = Detector(model, channels=1, state_dtype="float16").score_arrays(stream_ids, ts, vals)
    assert np.abs(full.score - half.score).mean() < 0.01
    assert [(e.sensor_id, e.kind) for e in full.events] == [(e.sensor_id, e.kind) for e in half.events]
    cut = Detector(model, channels=1, state_dtype="float16")
    parts = [cut.score_arrays(stream_ids[a:a + 7], ts[a:a + 7], vals[a:a + 7]) for a in range(0, 1800, 7)]
    np.testing.assert_allclose(np.concatenate([p.score for p in parts]), half.score, atol=1e-4)
    assert [e.alert_id for p in parts for e in p.events] == [e.alert_id for e in half.events]
