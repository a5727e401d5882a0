"""The ASD benchmark (benchmarks/asd/): loader, event metrics on hand-made alerts, the PCA reference, run.py end to end.

Everything runs on a tiny synthetic ASD-like folder written to tmp_path; no test reads ../shared data.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from benchmarks.asd import data as asd_data
from benchmarks.asd.data import AsdFile, Segment, load, parse_interpretation
from benchmarks.asd.metrics import (
    Detection,
    EventCounts,
    evaluate,
    event_counts,
    event_scores,
)
from benchmarks.asd.reference import always_alarm, fit_pca, hysteresis, pca_reference, random_alerts
from benchmarks.ranking import roc_auc, top_tie_share

ROOT = Path(__file__).resolve().parent.parent
TRAIN, TEST, CHANNELS = 200, 100, 3


def correlated(rows: int, channels: int, seed: int) -> np.ndarray:
    """[rows, channels] in [0, 1]: one shared slow wave seen by every channel, plus a little noise."""
    rng = np.random.default_rng(seed)
    wave = 0.5 + 0.3 * np.sin(np.arange(rows) / 15.0)
    return np.clip(wave[:, None] + 0.01 * rng.standard_normal((rows, channels)), 0, 1)


def write_server(folder: Path, key: str, segments: list[tuple[int, int, list[int]]], seed: int) -> None:
    """One ASD-like CSV (2-decimal values, 5-min rows) whose segments move their first metric 0.4 off the others."""
    values = correlated(TRAIN + TEST, CHANNELS, seed)
    anomaly = np.zeros(TRAIN + TEST, dtype=int)
    for start, end, metrics in segments:
        rows = slice(TRAIN + start, TRAIN + end + 1)
        v = values[rows, metrics[0] - 1]
        values[rows, metrics[0] - 1] = np.where(v < 0.5, v + 0.4, v - 0.4)  # leaves the shared wave
        anomaly[rows] = 1
    t0 = datetime(2021, 1, 1)
    lines = ["timestamp," + ",".join(f"m{c + 1:02d}" for c in range(CHANNELS)) + ",split,anomaly"]
    for i in range(TRAIN + TEST):
        ts = (t0 + timedelta(minutes=5 * i)).strftime("%Y-%m-%d %H:%M:%S")
        cells = ",".join(f"{v:.2f}" for v in values[i])
        lines.append(f"{ts},{cells},{'train' if i < TRAIN else 'test'},{anomaly[i]}")
    (folder / f"{key}.csv").write_text("\n".join(lines) + "\n")
    (folder / "interpretation" / f"{key}.txt").write_text(
        "".join(f"{s}-{e}:{','.join(map(str, m))}\n" for s, e, m in segments))


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    folder = tmp_path / "asd"
    (folder / "interpretation").mkdir(parents=True)
    write_server(folder, "omi-1", [(40, 49, [2])], seed=1)
    write_server(folder, "omi-2", [(20, 24, [3, 1]), (70, 79, [1])], seed=2)
    return folder


# ------------------------------------------------------------------------------------ data


def test_loader_reads_any_number_of_channels_and_the_segments(tiny):
    files = load(tiny)
    assert [f.key for f in files] == ["omi-1", "omi-2"]
    f = files[1]
    assert f.channels == ["m01", "m02", "m03"] and f.values.shape == (TRAIN + TEST, CHANNELS)
    assert (f.train_rows, f.test_rows) == (TRAIN, TEST)
    assert f.segments == [Segment(20, 24, (0, 2)), Segment(70, 79, (0,))]  # metrics 1-based in, 0-based out
    assert np.all(np.diff(f.ts) == 300.0)
    assert f.anomaly[:TRAIN].sum() == 0 and f.anomaly[TRAIN:].sum() == 15


def test_loader_refuses_segments_that_disagree_with_the_anomaly_column(tiny):
    (tiny / "interpretation" / "omi-1.txt").write_text("40-48:2\n")
    with pytest.raises(ValueError, match="do not match"):
        load(tiny)


def test_interpretation_lines_are_checked():
    assert parse_interpretation("3-5:1,3\n\n9-9:2\n", 3) == [Segment(3, 5, (0, 2)), Segment(9, 9, (1,))]
    with pytest.raises(ValueError):
        parse_interpretation("5-3:1\n", 3)
    with pytest.raises(ValueError):
        parse_interpretation("3-5:4\n", 3)


def test_data_folder_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(asd_data.DATA_ENV, str(tmp_path))
    assert asd_data.default_data() == tmp_path
    monkeypatch.delenv(asd_data.DATA_ENV)
    assert asd_data.default_data() == asd_data.DEFAULT_DATA


# ---------------------------------------------------------------------------------- metrics

SEGMENTS = [Segment(10, 19, (1,)), Segment(50, 59, (0, 2))]
# (test row, channel): two alerts inside the first segment (one names a labelled metric), one false alarm
# between the segments, one two rows after the second segment's end.
OPENED = [(14, 0), (12, 1), (30, 2), (61, 0)]


def test_event_counts_catch_false_alarm_delay_and_reason():
    c = event_counts(SEGMENTS, OPENED, test_rows=576)
    assert (c.segments, c.caught, c.alerts, c.true_alerts, c.false_alerts) == (2, 1, 4, 2, 2)
    assert c.delays == [2]  # first alert at row 12, segment starts at 10
    assert c.reason_hits == 1  # row 12 names channel 1 (labelled); row 14 names channel 0 (not labelled)
    s = event_scores(c)
    assert s["precision"] == 0.5 and s["recall"] == 0.5 and s["f1"] == pytest.approx(0.5)
    assert s["false_per_day"] == pytest.approx(1.0)  # 2 false alarms in 576 rows = 2 server-days
    assert (s["median_delay_rows"], s["median_delay_min"]) == (2.0, 10.0)
    assert s["reason_hit_rate"] == 0.5


def test_grace_extends_a_segment_after_its_end():
    c = event_counts(SEGMENTS, OPENED, test_rows=576, grace=2)
    assert (c.caught, c.true_alerts, c.false_alerts) == (2, 3, 1)
    assert c.delays == [2, 11] and c.reason_hits == 2
    s = event_scores(c)
    assert s["mean_delay_rows"] == 6.5 and s["mean_delay_min"] == 32.5
    assert event_counts(SEGMENTS, OPENED, test_rows=576, grace=1).caught == 1


def test_no_alerts_is_no_precision_and_zero_recall():
    s = event_scores(event_counts(SEGMENTS, [], test_rows=288))
    assert np.isnan(s["precision"]) and s["recall"] == 0.0 and s["f1"] == 0.0 and s["false_per_day"] == 0.0
    total = EventCounts(segments=1, caught=1, delays=[4]) + EventCounts(segments=2, delays=[7])
    assert (total.segments, total.caught, total.delays) == (3, 1, [4, 7])


def test_only_alerts_that_open_in_the_test_part_count():
    n = 40
    f = AsdFile("s", np.arange(n) * 300.0, np.zeros((n, 2)), np.r_[np.zeros(25), np.ones(5), np.zeros(10)].astype(int),
                train_rows=20, segments=[Segment(5, 9, (1,))], channels=["m01", "m02"])
    score = np.r_[np.zeros(25), np.ones(5), np.zeros(10)]
    # one alert opened in the train part and stays open, one opens on test row 6 (file row 26) on channel 1
    d = Detection({"score": score}, np.ones(n, dtype=bool), [(3, 0), (26, 1)])
    m = evaluate([f], [d])
    assert (m["all"]["alerts"], m["all"]["caught"], m["all"]["reason_hits"]) == (1, 1, 1)
    assert m["all"]["median_delay_rows"] == 1.0
    assert m["all"]["auc_score"] == 1.0 and m["all"]["top_tie_score"] == pytest.approx(5 / 20)
    assert m["all"]["open_all_test"] == 1 and m["servers"]["s"]["alert_open_share"] == 1.0


def test_roc_auc_and_top_ties():
    label = np.array([0, 0, 1, 1])
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), label) == 0.75
    assert roc_auc(np.array([1.0, 2.0, 3.0, 4.0]), label) == 1.0
    assert roc_auc(np.array([4.0, 3.0, 2.0, 1.0]), label) == 0.0
    assert roc_auc(np.ones(4), label) == 0.5  # a saturated score ranks nothing
    assert roc_auc(np.array([0.0, 1.0, 1.0, 1.0]), label) == 0.75  # ties count half
    assert np.isnan(roc_auc(np.ones(3), np.zeros(3)))
    assert top_tie_share(np.array([1.0, 1.0, 0.5, 1.0])) == 0.75


# -------------------------------------------------------------------------------- reference


def test_hysteresis_opens_at_3_of_5_and_closes_after_5_quiet_rows():
    exceed = np.array([0, 1, 0, 1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 1], dtype=bool)
    alerting, opened = hysteresis(exceed)
    assert opened == [4, 13]
    assert np.flatnonzero(alerting).tolist() == [4, 5, 6, 7, 8, 13]  # the 5th quiet row (9) is closed


def test_pca_keeps_the_components_it_needs():
    x = correlated(500, 4, seed=0)
    x[:, 3] = 0.7  # a constant channel: guarded, adds no variance
    pca = fit_pca(x)
    assert pca.components.shape == (1, 4) and pca.std[3] == 1.0
    assert np.all(np.isfinite(pca.squared_residuals(x)))


def test_pca_reference_catches_an_injected_shift_and_names_its_channel():
    n_train, n_test = 600, 300
    values = correlated(n_train + n_test, 4, seed=5)
    values[n_train + 150 : n_train + 170, 2] += 0.4  # channel 2 leaves the shared wave for 20 rows
    anomaly = np.zeros(n_train + n_test, dtype=np.int8)
    anomaly[n_train + 150 : n_train + 170] = 1
    f = AsdFile("s", np.arange(n_train + n_test) * 300.0, values, anomaly, n_train, [Segment(150, 169, (2,))],
                [f"m{i + 1:02d}" for i in range(4)])
    det, info = pca_reference(f)
    m = evaluate([f], [det])["all"]
    assert m["caught"] == 1 and m["median_delay_rows"] <= 3
    assert m["reason_hit_rate"] == 1.0
    assert m["false_alerts"] <= 1 and m["auc_score"] > 0.95
    assert info["components"] >= 1 and info["threshold"] > 0


def test_baselines_are_seeded_and_always_alarm_never_opens_in_test(tiny):
    n = 288 * 20
    long = AsdFile("s", np.arange(n) * 300.0, np.zeros((n, 2)), np.zeros(n, dtype=np.int8), n // 2, [], ["a", "b"])
    a, b = random_alerts(long, 0), random_alerts(long, 0)
    assert a.opened == b.opened and np.array_equal(a.scores["score"], b.scores["score"])
    assert 5 <= len(a.opened) <= 40 and random_alerts(long, 1).opened != a.opened  # ~1 a day for 20 days
    f = load(tiny)[0]
    m = evaluate([f], [always_alarm(f)])["all"]
    assert m["alerts"] == 0 and m["recall"] == 0.0 and m["open_all_test"] == 1 and m["top_tie_score"] == 1.0


# ------------------------------------------------------------------------------ end to end


def test_run_py_end_to_end_on_a_tiny_folder(tiny, tmp_path):
    out = tmp_path / "results"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "asd" / "run.py"), "--data", str(tiny), "--out", str(out),
           "--name", "tiny", "--grace", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "asd.md", "baseline-PCA_reference.json", "baseline-always_alarm.json",
        "baseline-random_1_alert_server-day.json", "tiny.json"]
    run = json.loads((out / "tiny.json").read_text())
    assert run["kind"] == "engine" and run["grace"] == 1 and run["config"]["idle_ttl"] is None
    assert run["data"] == {"servers": 2, "channels": 3, "train_rows": 2 * TRAIN, "test_rows": 2 * TEST,
                           "anomalous_test_rows": 25, "segments": 3, "anomalous_runs": 3}
    assert set(run["metrics"]["servers"]) == {"omi-1", "omi-2"}
    assert run["metrics"]["all"]["segments"] == 3 and run["metrics"]["all"]["test_rows"] == 2 * TEST
    assert run["scoring_seconds"] > 0 and run["total_seconds"] >= run["scoring_seconds"]
    assert "--data" in run["command"] and "--grace 1" in run["command"]
    pca = json.loads((out / "baseline-PCA_reference.json").read_text())["metrics"]["all"]
    assert pca["caught"] >= 2 and pca["auc_score"] > 0.9
    md = (out / "asd.md").read_text()
    assert "## Per server" in md and "### tiny" in md and "### PCA reference" in md and "| omi-2 |" in md
    assert f"| tiny (grace 1) | {run['metrics']['all']['caught']} / 3 |" in md
    assert "Reproduce: `.venv/bin/python benchmarks/asd/run.py --model gru-default --name tiny --grace 1" in md
    assert "engine scoring" in done.stdout
