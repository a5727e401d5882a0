"""The state pool: slots, growth, eviction by idleness and by capacity."""

from __future__ import annotations

import numpy as np
import pytest

from detector import Detector, DetectorConfig
from detector.state_pool import StatePool


def test_growth_keeps_existing_state_and_doubles():
    pool = StatePool(state_size=4, channels=1, capacity=100, initial_capacity=2)
    slots = pool.assign(["a", "b"])
    pool.hidden[slots] = [[1, 1, 1, 1], [2, 2, 2, 2]]
    pool.assign(["c", "d", "e"])
    assert pool.allocated == 8 and pool.stats.grown == 2
    np.testing.assert_array_equal(pool.hidden[pool.slot_of("b")], [2, 2, 2, 2])
    assert len(pool) == 5


def test_same_new_id_twice_in_one_batch_gets_one_slot():
    pool = StatePool(state_size=2, channels=1, capacity=10, initial_capacity=4)
    slots = pool.assign(["x", "x", "y"])
    assert slots[0] == slots[1] != slots[2]
    assert len(pool) == 2


def test_capacity_evicts_least_recently_seen_and_counts():
    pool = StatePool(state_size=2, channels=1, capacity=4, initial_capacity=4)
    for name in "abcd":
        pool.assign([name])
    pool.assign(["a"])  # a is now the most recent; b the least
    pool.assign(["e"])
    assert pool.slot_of("b") is None
    assert {"a", "c", "d", "e"} == set(pool.sensor_ids())
    assert pool.stats.evicted_capacity == 1


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
    arrays = [v for v in vars(pool).values() if isinstance(v, np.ndarray)]
    assert pool.bytes_per_sensor * 1000 == sum(a.nbytes for a in arrays)
    assert pool.bytes_per_sensor < 400
