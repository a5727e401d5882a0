"""SKAB metrics (benchmarks/skab/metrics.py) on tiny hand-made label arrays with hand-computed results."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.skab.metrics import (
    Confusion,
    NabCounts,
    confusion,
    count_window,
    detection_windows,
    evaluate_file,
    nab_counts,
    nab_credit,
    nab_curve,
    nab_scores,
    outlier_scores,
    predicted_changepoints,
    summarise,
)
from benchmarks.skab.reference import _f_cdf, always_alarm


# ----------------------------------------------------------------------------------- outliers


def test_confusion_and_scores_of_one_file():
    true = np.array([0, 0, 1, 1, 1, 0])
    pred = np.array([0, 1, 1, 0, 1, 0])
    c = confusion(true, pred)
    assert c == Confusion(tp=2, tn=2, fp=1, fn=1)
    s = outlier_scores(c)
    assert s["f1"] == pytest.approx(2 / 3)  # TP / (TP + (FN + FP) / 2) = 2 / 3
    assert s["far"] == pytest.approx(100 / 3)  # FP / (FP + TN) = 1 / 3
    assert s["mar"] == pytest.approx(100 / 3)  # FN / (FN + TP) = 1 / 3


def test_confusion_is_pooled_over_files_not_averaged():
    a = confusion(np.array([1, 1, 1, 1]), np.array([1, 1, 1, 1]))  # TP 4
    b = confusion(np.array([0, 0]), np.array([1, 0]))  # FP 1, TN 1
    s = outlier_scores(a + b)
    assert s["f1"] == pytest.approx(4 / 4.5)
    assert s["far"] == pytest.approx(50.0)
    assert s["mar"] == pytest.approx(0.0)


def test_always_alarm_and_never_alarm():
    true = np.array([0, 1, 1])
    s = outlier_scores(confusion(true, always_alarm(3)))
    assert (s["f1"], s["far"], s["mar"]) == (pytest.approx(0.8), 100.0, 0.0)  # 2 / (2 + 1/2)
    s = outlier_scores(confusion(true, np.zeros(3)))
    assert (s["f1"], s["far"], s["mar"]) == (0.0, 0.0, 100.0)


def test_confusion_accepts_bools_and_float_labels():
    assert confusion(np.array([0.0, 1.0]), np.array([True, True])) == Confusion(tp=1, tn=0, fp=1, fn=0)
    with pytest.raises(ValueError):
        confusion(np.zeros(3), np.zeros(2))


# ------------------------------------------------------------------------------ change points


def test_predicted_changepoints_are_switches_and_a_leading_one():
    assert predicted_changepoints(np.array([1, 1, 0, 0, 1])).tolist() == [True, False, True, False, True]
    assert predicted_changepoints(np.array([0, 0, 1])).tolist() == [False, False, True]
    assert predicted_changepoints(np.array([], dtype=int)).tolist() == []


def test_detection_windows_open_to_the_right_and_cut_the_later_one():
    ts = np.arange(0.0, 200.0, 10.0)
    cp = np.isin(ts, [0.0, 100.0]).astype(int)
    assert detection_windows(ts, cp, 60.0) == [[0.0, 60.0], [100.0, 160.0]]
    cp = np.isin(ts, [0.0, 30.0]).astype(int)
    assert detection_windows(ts, cp, 60.0) == [[0.0, 60.0], [60.0, 90.0]]


def test_nab_curve_runs_from_tp_weight_to_fp_weight():
    y = nab_curve(1.0, -0.11)
    assert y[0] == pytest.approx(1.0) and y[-1] == pytest.approx(-0.11)
    assert (y[499] + y[500]) / 2 == pytest.approx((1.0 - 0.11) / 2)  # symmetric about the middle
    assert np.all(np.diff(y) < 0)


def test_nab_credit_by_position_in_the_window():
    assert nab_credit(0.0, 0.0, 60.0, 1.0, -0.11) == pytest.approx(1.0)
    assert nab_credit(0.0, 60.0, 60.0, 1.0, -0.11) == pytest.approx(-0.11)  # index 1000 clipped to 999
    # Half-way: index 500 of linspace(-pi/2, pi/2, 1000): x = pi (500/999 - 1/2) = 0.0015724;
    # y = 0.555 * -tanh(x) / tanh(pi/2) + 0.555 - 0.11 = 0.445 - 0.555 * 0.0015724 / 0.917152 = 0.444048
    assert nab_credit(0.0, 30.0, 60.0, 1.0, -0.11) == pytest.approx(0.444048, abs=1e-5)


def test_nab_one_file_hand_computed():
    ts = np.arange(200.0)
    true_cp = (ts == 50).astype(int)
    # t=10: before the window (FP); t=50: first in [50, 110] (full credit);
    # t=80: second in the window (ignored); t=150: after the window (FP).
    pred_cp = np.isin(ts, [10, 50, 80, 150]).astype(int)
    n = nab_counts(ts, true_cp, pred_cp, 60.0)
    assert (n.windows, n.missed, n.false_positives, n.delays) == (1, 0, 2, [0.0])
    s = nab_scores(n)
    assert s["standard"] == pytest.approx(100 * (1 - 0.22 + 1) / 2)  # raw 0.78, null -1, perfect 1 -> 89.0
    assert s["low_fp"] == pytest.approx(100 * (1 - 0.44 + 1) / 2)  # 78.0
    assert s["low_fn"] == pytest.approx(100 * (1 - 0.22 + 2) / 3)  # 92.667


def test_nab_never_firing_scores_zero_and_exact_detection_scores_hundred():
    ts = np.arange(300.0)
    true_cp = np.isin(ts, [20, 150]).astype(int)
    s = nab_scores(nab_counts(ts, true_cp, np.zeros(300), 60.0))
    assert (s["standard"], s["low_fp"], s["low_fn"], s["missed"]) == (0.0, 0.0, 0.0, 2)
    s = nab_scores(nab_counts(ts, true_cp, true_cp, 60.0))
    assert (s["standard"], s["low_fp"], s["low_fn"], s["missed"]) == (100.0, 100.0, 100.0, 0)


def test_nab_detection_on_a_shared_window_edge_counts_in_both_windows():
    # Windows [0, 60] and [60, 90] after the cut; one prediction at t=60 is the end of the first
    # (credit A_fp = -0.11) and the start of the second (credit 1), as in SKAB's code.
    ts = np.arange(0.0, 120.0)
    true_cp = np.isin(ts, [0, 30]).astype(int)
    n = nab_counts(ts, true_cp, (ts == 60).astype(int), 60.0)
    assert (n.missed, n.false_positives) == (0, 0)
    assert nab_scores(n)["standard"] == pytest.approx(100 * (0.89 + 2) / 4)  # raw -0.11 + 1, null -2, perfect 2


def test_nab_file_without_change_points_only_costs_false_positives():
    ts = np.arange(10.0)
    n = nab_counts(ts, np.zeros(10), (ts == 3).astype(int), 60.0)
    assert (n.windows, n.false_positives) == (0, 1)
    assert n.score.tolist() == pytest.approx([-0.11, -0.22, -0.11])
    both = n + nab_counts(ts, (ts == 0).astype(int), (ts == 0).astype(int), 60.0)
    # pooled: raw -0.11 + 1, null -1, perfect 1
    assert nab_scores(both)["standard"] == pytest.approx(100 * (0.89 + 1) / 2)


def test_nab_is_pooled_over_files():
    ts = np.arange(100.0)
    cp = (ts == 10).astype(int)
    hit, miss = nab_counts(ts, cp, cp, 60.0), nab_counts(ts, cp, np.zeros(100), 60.0)
    assert nab_scores(hit + miss)["standard"] == pytest.approx(50.0)  # raw 1 - 1, null -2, perfect 2
    assert math.isnan(nab_scores(NabCounts())["standard"])  # no windows at all: undefined


def test_count_window_is_duration_over_changepoints_plus_one():
    ts = np.arange(100.0)
    assert count_window(ts, np.isin(ts, [10, 40, 70]).astype(int)) == pytest.approx(99 / 4)


# ------------------------------------------------------------------------------ whole files


def test_evaluate_file_scores_only_the_test_part():
    ts = np.arange(10.0)
    anomaly = np.array([1, 1, 0, 0, 0, 1, 1, 1, 0, 0])
    changepoint = np.array([1, 0, 0, 0, 0, 1, 0, 0, 1, 0])
    pred = np.array([1, 1, 1, 1, 0, 0, 1, 1, 1, 0])  # the first 3 rows (training part) are ignored
    e = evaluate_file(ts, anomaly, changepoint, pred, train_rows=3, width=2.0)
    # test rows 3..9: anomaly 0 0 1 1 1 0 0, pred 1 0 0 1 1 1 0
    assert e.confusion == Confusion(tp=2, tn=2, fp=2, fn=1)
    # predicted CPs in the test part: t=3 (leading 1), t=4, t=6, t=9; windows [5, 7] and [8, 10]
    assert (e.nab.windows, e.nab.missed, e.nab.false_positives, e.nab.delays) == (2, 0, 2, [1.0, 1.0])
    s = summarise([e])
    assert s["f1"] == pytest.approx(2 / 3.5) and s["far"] == pytest.approx(50.0) and s["mar"] == pytest.approx(100 / 3)
    assert s["nab_missed"] == 0 and s["nab_false_positives"] == 2
    # leaderboard-style counts: windows of 6 / 3 = 2 s, the same here
    assert (s["cp_missed"], s["cp_false_positives"]) == (0, 2)


def test_f_cdf_matches_closed_form_for_two_numerator_degrees():
    # F(2, d2) has CDF 1 - (1 + 2x / d2) ** (-d2 / 2)
    x = np.array([0.0, 0.5, 1.0, 3.0, 7.0])
    assert _f_cdf(x, 2, 20) == pytest.approx(1 - (1 + 2 * x / 20) ** -10, abs=1e-6)
    assert math.isclose(float(_f_cdf(np.array([0.0, 15.0]), 8, 392)[1]), 1.0, abs_tol=1e-6)


def test_error_buckets_split_misses_and_false_alarms_by_where_they_are():
    from benchmarks.skab.evaluate import error_buckets

    #              train | test ...
    anomaly = np.array([0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 0, 0, 0])
    pred = np.array(   [1, 1, 0, 0, 1, 0, 0, 1, 1, 0, 0, 0, 0, 0, 1, 1])
    b = error_buckets(anomaly, pred, train_rows=2)
    # segment 3–7: first alarm at row 4 (1 late row), rows 5 and 6 missed after it (2 gap rows);
    # segment 11–12 never alarmed (2 rows); the alarm 7–8 outlasts its anomaly by row 8; 14–15 overlaps none.
    assert b == {"late": 1, "gap": 2, "never": 2, "early": 0, "overrun": 1, "alone": 2}
    early = error_buckets(np.array([0, 0, 1, 1]), np.array([1, 1, 1, 0]), train_rows=0)
    assert early == {"late": 0, "gap": 1, "never": 0, "early": 2, "overrun": 0, "alone": 0}
