"""Turn per-row predictions into SKAB metrics (pooled, per subset, per file) and engine diagnostics."""

from __future__ import annotations

from collections import Counter

import numpy as np

from benchmarks.skab.data import SUBSETS, SkabFile
from benchmarks.skab.metrics import TRAIN_ROWS, evaluate_file, summarise
from benchmarks.streaming import EngineOutput
from detector.alerts import AlertKind

ONSET_BINS = ((0.0, 60.0), (60.0, 180.0), (180.0, float("inf")))
"""Seconds since the anomaly's onset, for the share of anomalous rows alerting."""

RECOVERY_SECONDS = 120.0
"""False alarms up to this long after the labelled anomaly ends are counted as on the recovery transient."""


def false_alarm_positions(f: SkabFile, alerting: np.ndarray) -> dict[str, int]:
    """Test rows alerting while labelled normal: before the anomaly, on its recovery, or later."""
    rows = np.arange(len(f))
    fp = alerting & (rows >= TRAIN_ROWS) & (f.anomaly == 0)
    idx = np.flatnonzero(f.anomaly == 1)
    if not idx.size:
        return {"before_onset": int(fp.sum()), "recovery": 0, "later": 0}
    after = rows > idx[-1]
    recovery = after & (f.ts - f.ts[idx[-1]] <= RECOVERY_SECONDS)
    return {
        "before_onset": int(np.count_nonzero(fp & (rows < idx[0]))),
        "recovery": int(np.count_nonzero(fp & recovery)),
        "later": int(np.count_nonzero(fp & after & ~recovery)),
    }


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of each run of True in a 1-D bool array, end exclusive."""
    d = np.diff(np.r_[0, mask.astype(np.int8), 0])
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))


def error_buckets(anomaly: np.ndarray, pred: np.ndarray, train_rows: int = TRAIN_ROWS) -> dict[str, int]:
    """Where one file's missed and false-alarm test rows are (rows from `train_rows` on).

    Missed anomalous rows: `late` (before the first alarm of their anomaly segment), `gap` (after it, once
    the alarm has closed again), `never` (in a segment with no alarm at all). False-alarm rows: `early` (an
    alarm that opened before an anomaly and runs into it), `overrun` (an alarm that outlasts the anomaly it
    overlaps), `alone` (an alarm that overlaps no anomaly).
    """
    a = np.asarray(anomaly)[train_rows:] == 1
    p = np.asarray(pred)[train_rows:].astype(bool)
    out = dict.fromkeys(("late", "gap", "never", "early", "overrun", "alone"), 0)
    for s, e in _runs(a):
        hit = np.flatnonzero(p[s:e])
        if not hit.size:
            out["never"] += e - s
        else:
            out["late"] += int(hit[0])
            out["gap"] += int(np.count_nonzero(~p[s + hit[0]:e]))
    for s, e in _runs(p):
        inside = np.flatnonzero(a[s:e])
        if not inside.size:
            out["alone"] += e - s
            continue
        out["early"] += int(np.count_nonzero(~a[s:s + inside[0]]))
        out["overrun"] += int(np.count_nonzero(~a[s + inside[0]:e]))
    return out


def evaluate(files: list[SkabFile], preds: list[np.ndarray]) -> dict:
    """SKAB metrics of per-row predictions: pooled over all files, per subset and per file."""
    evals = [evaluate_file(f.ts, f.anomaly, f.changepoint, p) for f, p in zip(files, preds)]
    out = {"all": summarise(evals)}
    for subset in SUBSETS:
        out[subset] = summarise(e for f, e in zip(files, evals) if f.subset == subset)
    out["files"] = {f.key: summarise([e]) for f, e in zip(files, evals)}
    return out


def nines(score: np.ndarray) -> np.ndarray:
    """−log10(1 − score): 3 for 0.999; capped at 7 (float32 scores saturate near 1)."""
    return np.minimum(-np.log10(np.maximum(1.0 - score.astype(np.float64), 1e-7)), 7.0)


def _frac(mask: np.ndarray, of: np.ndarray) -> float | None:
    return float(mask[of].mean()) if of.any() else None


def diagnose_file(f: SkabFile, out: EngineOutput) -> dict:
    """How the engine behaved on one file's test part: where it alerted, how fast, on which channel."""
    rows = np.arange(len(f))
    test = rows >= TRAIN_ROWS
    anom = test & (f.anomaly == 1)
    normal = test & (f.anomaly == 0)
    onset_rows = np.flatnonzero(f.anomaly == 1)
    onset = int(onset_rows[0]) if onset_rows.size else None
    d: dict = {
        "alert_in_anomaly": _frac(out.alerting, anom),
        "alert_in_normal": _frac(out.alerting, normal),
        "flag_in_anomaly": _frac(out.anomalous, anom),
        "flag_in_normal": _frac(out.anomalous, normal),
        "median_nines_anomaly": float(np.median(nines(out.score[anom]))) if anom.any() else None,
        "median_nines_normal": float(np.median(nines(out.score[normal]))) if normal.any() else None,
    }
    # Delay from the onset to the first open alert inside the anomaly (only for onsets in the test part).
    d["onset_row"] = onset
    d["first_alert_delay_s"] = None
    if onset is not None and onset >= TRAIN_ROWS:
        hit = np.flatnonzero(out.alerting & (f.anomaly == 1) & (rows >= onset))
        d["first_alert_delay_s"] = float(f.ts[hit[0]] - f.ts[onset]) if hit.size else None
    since = np.where(anom, f.ts - (f.ts[onset] if onset is not None else 0.0), np.nan)
    d["alert_by_time_since_onset"] = {
        f"{lo:g}-{hi:g}s": _frac(out.alerting, anom & (since >= lo) & (since < hi)) for lo, hi in ONSET_BINS
    }
    raises = [e for e in out.events if e.kind is AlertKind.RAISE and e.ts >= f.ts[TRAIN_ROWS]]
    in_anom = [e for e in raises if f.anomaly[np.searchsorted(f.ts, e.ts)] == 1]
    d["raises_test"] = len(raises)
    d["raises_in_anomaly"] = len(in_anom)
    d["raise_channels_anomaly"] = dict(Counter(f.channels[e.channel] for e in in_anom))
    d["raise_channels_normal"] = dict(Counter(f.channels[e.channel] for e in raises if e not in in_anom))
    d["raise_causes"] = dict(Counter(e.cause for e in raises))
    # Lengths (rows) of alert episodes in the test part.
    a = out.alerting[test].astype(np.int8)
    edges = np.diff(np.concatenate([[0], a, [0]]))
    lengths = np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)
    d["false_alarm_rows"] = false_alarm_positions(f, out.alerting)
    d["episodes_test"] = int(lengths.size)
    d["median_episode_rows"] = float(np.median(lengths)) if lengths.size else None
    return d


def diagnose(files: list[SkabFile], outs: list[EngineOutput]) -> dict:
    """Per-file diagnostics and their totals (row-weighted where it is a share of rows)."""
    per_file = {f.key: diagnose_file(f, o) for f, o in zip(files, outs)}
    test = [np.arange(len(f)) >= TRAIN_ROWS for f in files]
    anom = np.concatenate([t & (f.anomaly == 1) for t, f in zip(test, files)])
    normal = np.concatenate([t & (f.anomaly == 0) for t, f in zip(test, files)])
    alerting = np.concatenate([o.alerting for o in outs])
    flagged = np.concatenate([o.anomalous for o in outs])
    score = np.concatenate([o.score for o in outs])
    since = np.concatenate(
        [
            np.where(t & (f.anomaly == 1), f.ts - f.ts[np.argmax(f.anomaly == 1)], np.nan)
            for t, f in zip(test, files)
        ]
    )
    channels: Counter = Counter()
    channels_normal: Counter = Counter()
    for d in per_file.values():
        channels.update(d["raise_channels_anomaly"])
        channels_normal.update(d["raise_channels_normal"])
    delays = [d["first_alert_delay_s"] for d in per_file.values() if d["onset_row"] and d["onset_row"] >= TRAIN_ROWS]
    totals = {
        "alert_in_anomaly": _frac(alerting, anom),
        "alert_in_normal": _frac(alerting, normal),
        "flag_in_anomaly": _frac(flagged, anom),
        "flag_in_normal": _frac(flagged, normal),
        "median_nines_anomaly": float(np.median(nines(score[anom]))),
        "median_nines_normal": float(np.median(nines(score[normal]))),
        "alert_by_time_since_onset": {
            f"{lo:g}-{hi:g}s": _frac(alerting, anom & (since >= lo) & (since < hi)) for lo, hi in ONSET_BINS
        },
        "flag_by_time_since_onset": {
            f"{lo:g}-{hi:g}s": _frac(flagged, anom & (since >= lo) & (since < hi)) for lo, hi in ONSET_BINS
        },
        "onsets_in_test": len(delays),
        "onsets_alerted": sum(1 for x in delays if x is not None),
        "median_first_alert_delay_s": float(np.median([x for x in delays if x is not None])) if any(
            x is not None for x in delays) else None,
        "raises_test": sum(d["raises_test"] for d in per_file.values()),
        "raises_in_anomaly": sum(d["raises_in_anomaly"] for d in per_file.values()),
        "raise_channels_anomaly": dict(channels.most_common()),
        "raise_channels_normal": dict(channels_normal.most_common()),
        "error_rows": dict(sum((Counter(error_buckets(f.anomaly, o.alerting)) for f, o in zip(files, outs)),
                               Counter())),
        "episodes_test": sum(d["episodes_test"] for d in per_file.values()),
        "false_alarm_rows": {
            k: sum(d["false_alarm_rows"][k] for d in per_file.values()) for k in ("before_onset", "recovery", "later")
        },
    }
    return {"totals": totals, "files": per_file}
