"""Checkpoint records: a restored sensor continues exactly where it stopped."""

from __future__ import annotations

import numpy as np

from detector import Detector, DetectorConfig
from detector.model.store import untrained
from tests.conftest import noisy_sine

CONFIG = DetectorConfig(warmup=20, threshold=0.99)


def _feed(det: Detector, values: np.ndarray, start: int, stop: int, sensors=("a", "b")):
    out = []
    for t in range(start, stop):
        r = det.score_arrays(list(sensors), np.full(len(sensors), float(t)), values[t][None, :].repeat(len(sensors), 0))
        out.append(r.score.copy())
    return np.array(out)


def test_export_then_import_continues_identically(small_model):
    values = noisy_sine(300, channels=2, seed=9)
    values[250:260] += 5
    whole = Detector(small_model, config=CONFIG, channels=2)
    expected = _feed(whole, values, 0, 300)

    first = Detector(small_model, config=CONFIG, channels=2)
    _feed(first, values, 0, 150)
    records = first.engine.export_state(["a", "b", "unknown"])
    assert records[2] is None and len(records[0]) == first.engine.codec.record_size

    second = Detector(small_model, config=CONFIG, channels=2)
    report = second.engine.import_state(["a", "b"], records[:2])
    assert (report.restored, report.model_changed, report.refused) == (2, 0, 0)
    np.testing.assert_array_equal(_feed(second, values, 150, 300), expected[150:])


def test_records_from_other_weights_keep_statistics_but_restart_the_hidden_state(small_model):
    values = noisy_sine(100, seed=2)
    first = Detector(small_model, config=CONFIG, channels=1)
    _feed(first, values, 0, 80, sensors=("a",))
    records = first.engine.export_state(["a"])
    retrained = untrained(hidden_size=8, layers=2, seed=99)
    retrained.meta["sha256"] = "ff" * 32
    other = Detector(retrained, config=CONFIG, channels=1)
    report = other.engine.import_state(["a"], records)
    assert (report.restored, report.model_changed) == (1, 1)
    pool = other.engine.pool
    slot = pool.slot_of("a")
    assert pool.count[slot] == 80 and not pool.hidden[slot].any() and pool.since_reset[slot] == 0
    np.testing.assert_allclose(pool.norm_mean[slot], first.engine.pool.norm_mean[first.engine.pool.slot_of("a")])
    assert other.score_one("a", 80.0, float(values[80, 0])).rejected is None


def test_unreadable_records_are_refused_not_fatal(small_model):
    det = Detector(small_model, config=CONFIG, channels=1)
    det.score_one("a", 1.0, 1.0)
    good = det.engine.export_state(["a"])[0]
    two_channel = Detector(small_model, config=CONFIG, channels=2)
    report = two_channel.engine.import_state(["a", "b", "c"], [good, b"garbage", good[:-1]])
    assert (report.restored, report.refused) == (0, 3)
    assert len(two_channel) == 0


def test_a_reordered_layout_is_refused(small_model, monkeypatch):
    """Two fields of one width that trade places would be read into each other: the checksum must see it."""
    from detector.state import pool as pool_module

    det = Detector(small_model, config=CONFIG, channels=1)
    _feed(det, noisy_sine(40, seed=3), 0, 40, sensors=("a",))
    records = det.engine.export_state(["a"])
    names = list(pool_module._FIELDS)
    i, j = names.index("err_mean"), names.index("err_var")
    names[i], names[j] = names[j], names[i]
    monkeypatch.setattr(pool_module, "_FIELDS", {n: pool_module._FIELDS[n] for n in names})
    reordered = Detector(small_model, config=CONFIG, channels=1)
    assert reordered.engine.codec.record_size == det.engine.codec.record_size
    report = reordered.engine.import_state(["a"], records)
    assert (report.restored, report.refused) == (0, 1)
