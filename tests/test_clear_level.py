"""Alerts stay open while one channel's level is still shifted (`clear_level`), however many channels a sensor has."""

from __future__ import annotations

import numpy as np
import pytest

from detector import Detector, DetectorConfig


def _fault(seed: int, channels: int = 64) -> np.ndarray:
    """Noise on every channel; channel 0 jumps by 3 std for 100 readings, then stays 1.3 std off for 500."""
    values = np.random.default_rng(seed).normal(0.0, 1.0, (3000, channels))
    values[2000:2100, 0] += 3.0
    values[2100:2600, 0] += 1.3
    return values


@pytest.mark.parametrize("seed", [0, 1])
def test_an_alert_stays_open_while_one_channel_of_many_is_still_shifted(small_model, seed):
    values = _fault(seed)
    ids, ts = ["s"] * len(values), np.arange(len(values), dtype=float)

    def alerting(clear_level: float) -> np.ndarray:
        config = DetectorConfig(clear_m=3, clear_level=clear_level)
        return Detector(small_model, config=config, channels=values.shape[1]).score_arrays(ids, ts, values).alerting

    old, new = alerting(1.0), alerting(0.995)  # 1 = off
    assert new[2010:2100].all() and old[2010:2100].all()  # the jump raises an alert either way
    # With 64 channels the level score alone lets the alert clear while channel 0 is still ~3.6σ off; judged per
    # channel it stays open for more of the sustained shift.
    assert new[2100:2600].mean() > old[2100:2600].mean() + 0.05
    # ... and costs nothing where nothing is shifted.
    assert not new[1000:2000].any() and not new[2700:].any()


def test_clear_level_does_not_depend_on_batching(small_model):
    values = _fault(0, channels=8)
    ids, ts = ["s"] * len(values), np.arange(len(values), dtype=float)
    config = DetectorConfig()
    whole = Detector(small_model, config=config, channels=8).score_arrays(ids, ts, values)
    det = Detector(small_model, config=config, channels=8)
    parts = [det.score_arrays(ids[a : a + 333], ts[a : a + 333], values[a : a + 333]) for a in range(0, 3000, 333)]
    assert (np.concatenate([p.alerting for p in parts]) == whole.alerting).all()
    assert [(e.kind, e.ts) for p in parts for e in p.events] == [(e.kind, e.ts) for e in whole.events]
