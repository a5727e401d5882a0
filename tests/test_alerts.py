"""Hysteresis and calibration in isolation."""

from __future__ import annotations

import numpy as np

from detector import alerts
from detector.scoring import calibration
from detector.scoring.surprise import to_score


def _run(pattern: str, k: int = 3, n: int = 5, m: int = 4) -> list[str]:
    flags = np.zeros(1, np.uint32)
    active = np.zeros(1, bool)
    calm = np.zeros(1, np.uint16)
    peak = np.zeros(1, np.float32)
    out = []
    for ch in pattern:
        t = alerts.update(flags, active, calm, peak, np.array([ch == "x"]), np.array([0.5], np.float32), k, n, m)
        flags, active, calm, peak = t.flags, t.active, t.calm, t.peak
        out.append("R" if t.raised[0] else "C" if t.cleared[0] else ".")
    return out


def test_k_of_n_raises_once_and_m_normal_readings_clear():
    assert "".join(_run("x.x.x....x..xxxx.....")) == "....R...C....R.....C."


def test_isolated_anomalies_never_raise():
    assert "R" not in _run("x...x...x...x...x...")


def test_an_anomaly_during_calm_resets_the_clear_countdown():
    got = _run("xxx" + "..." + "x" + "...." + "......")
    assert got.count("R") == 1
    assert got.index("C") == 3 + 3 + 1 + 3  # four calm readings after the last x


def test_scores_are_roughly_uniform_for_a_sensor_behaving_as_usual():
    rng = np.random.default_rng(0)
    short = mean = var = np.zeros(1, np.float32)
    seen = np.zeros(1, np.int32)
    scores = []
    for t in range(20000):
        err = rng.chisquare(1, 1).astype(np.float32)
        s, short, mean, var = calibration.score(err, short, mean, var, seen, 3.0, 1000.0)
        s = to_score(s)
        seen = seen + 1
        if t > 2000:
            scores.append(s[0])
    scores = np.array(scores)
    assert 0.0 <= scores.min() and scores.max() <= 1.0
    assert 0.35 < np.median(scores) < 0.65
    assert np.mean(scores >= 0.999) < 0.01  # false flag rate stays near the nominal tail


def test_a_burst_of_large_errors_scores_near_one():
    rng = np.random.default_rng(1)
    short = mean = var = np.zeros(1, np.float32)
    seen = np.zeros(1, np.int32)
    for _ in range(2000):
        _, short, mean, var = calibration.score(rng.chisquare(1, 1).astype(np.float32), short, mean, var, seen, 3.0, 1000.0)
        seen = seen + 1
    s, *_ = calibration.score(np.array([200.0], np.float32), short, mean, var, seen, 3.0, 1000.0)
    s = to_score(s)
    assert s[0] > 0.999


def test_readings_between_the_clear_and_raise_thresholds_neither_raise_nor_clear():
    # Score per reading: "x" = above the raise threshold, "~" = between the clear and raise thresholds,
    # "." = below the clear threshold (quiet).
    flags, active = np.zeros(1, np.uint32), np.zeros(1, bool)
    calm, peak = np.zeros(1, np.uint16), np.zeros(1, np.float32)
    out = []
    for ch in "xxx" + "~~~~~~" + "..." + "~" + "...." + "~~~~":
        t = alerts.update(flags, active, calm, peak, np.array([ch == "x"]), np.array([0.5], np.float32), 3, 5, 4,
                          quiet=np.array([ch == "."]))
        flags, active, calm, peak = t.flags, t.active, t.calm, t.peak
        out.append("R" if t.raised[0] else "C" if t.cleared[0] else ".")
    got = "".join(out)
    assert got.count("R") == 1 and got.index("R") == 2
    assert got.count("C") == 1 and got.index("C") == 3 + 6 + 3 + 1 + 3  # the "~" restarted the countdown
    assert "R" not in got[got.index("C"):]  # "~" alone never raises
