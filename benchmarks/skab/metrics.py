"""SKAB's evaluation metrics, re-implemented in numpy from the benchmark's own code.

Source of the definitions: waico/SKAB `core/metrics.py` (the TSAD `chp_score` function) as called by
the SKAB notebooks behind the current ("proposed") leaderboard:

    chp_score(true_outlier, predicted_outlier, metric="binary")
    chp_score(true_cp, predicted_cp, metric="nab", window_width="60s", anomaly_window_destination="righter")

with, per file, the first 400 rows as the training part and only the remaining rows scored, and
`predicted_cp = abs(prediction.diff()); predicted_cp.iloc[0] = prediction.iloc[0]`.

Outlier detection ("binary"): one confusion matrix pooled over all files,
    F1 = TP / (TP + (FN + FP) / 2),   FAR = FP / (FP + TN) · 100 %,   MAR = FN / (FN + TP) · 100 %.

Changepoint detection ("nab", NAB with SKAB's "improved" scoring function):
- one detection window per true change point, from the change point to 60 s after it ("righter");
  where two windows overlap, the later one starts where the earlier one ends ("cut right window");
- inside a window only the FIRST predicted change point counts; it earns
  y = (A_tp − A_fp)/2 · (−tanh(x) / tanh(π/2)) + (A_tp − A_fp)/2 + A_fp with
  x = linspace(−π/2, π/2, 1000)[int(1000 · relative position in the window)], i.e. A_tp at the change
  point falling along a tanh to A_fp at the window's end; further predictions in that window are ignored;
- a window without a prediction costs A_fn; each prediction outside every window costs A_fp;
- profiles (A_tp, A_fp, A_fn): standard (1, −0.11, −1), low FP (1, −0.22, −1), low FN (1, −0.11, −2);
- scores, the null score (n_windows · A_fn) and the perfect score (n_windows · A_tp) are summed over
  files, and each profile is reported as 100 · (S − S_null) / (S_perfect − S_null).

The leaderboard's "Number of Missed CPs" and "Number of FPs" columns are not counted in those 60 s
windows: they come from `chp_score(..., metric="average_time", anomaly_window_destination="righter",
portion=1)` without a window width, whose window after each change point is as long as the file's
test part divided by (its number of change points + 1) (`count_window`). Both sets of counts are
reported; the NAB scores use the 60 s windows only.

Timestamps are float seconds; windows are in seconds, not rows (SKAB rows are ~1 s apart but not exactly).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

TRAIN_ROWS = 400
"""Rows at the start of every file that form the training part (never scored)."""

NAB_WINDOW_SECONDS = 60.0
"""Width of the detection window after each true change point."""

NAB_DETAIL = 1000
"""Resolution of SKAB's tanh scoring curve (`detalization`)."""

PROFILES: dict[str, tuple[float, float, float]] = {
    "standard": (1.0, -0.11, -1.0),
    "low_fp": (1.0, -0.22, -1.0),
    "low_fn": (1.0, -0.11, -2.0),
}
"""NAB application profiles: (A_tp, A_fp, A_fn)."""


# ------------------------------------------------------------------------------------ outliers


@dataclass(frozen=True)
class Confusion:
    """Per-row confusion counts; add them to pool files."""

    tp: int = 0
    tn: int = 0
    fp: int = 0
    fn: int = 0

    def __add__(self, other: Confusion) -> Confusion:
        return Confusion(self.tp + other.tp, self.tn + other.tn, self.fp + other.fp, self.fn + other.fn)


def confusion(true: np.ndarray, pred: np.ndarray) -> Confusion:
    """Per-row confusion of binary labels `true` and predictions `pred` (1 / True = anomalous)."""
    t = np.asarray(true) == 1
    p = np.asarray(pred) == 1
    if t.shape != p.shape:
        raise ValueError(f"labels {t.shape} and predictions {p.shape} differ in shape")
    return Confusion(
        tp=int(np.count_nonzero(t & p)),
        tn=int(np.count_nonzero(~t & ~p)),
        fp=int(np.count_nonzero(~t & p)),
        fn=int(np.count_nonzero(t & ~p)),
    )


def _ratio(num: float, den: float) -> float:
    return num / den if den else float("nan")


def outlier_scores(c: Confusion) -> dict[str, float]:
    """F1, FAR % and MAR % of a (pooled) confusion matrix, unrounded (SKAB rounds to 2 decimals)."""
    return {
        "f1": _ratio(c.tp, c.tp + (c.fn + c.fp) / 2),
        "far": 100.0 * _ratio(c.fp, c.fp + c.tn),
        "mar": 100.0 * _ratio(c.fn, c.fn + c.tp),
        "tp": c.tp,
        "tn": c.tn,
        "fp": c.fp,
        "fn": c.fn,
    }


# ------------------------------------------------------------------------------- change points


def predicted_changepoints(pred: np.ndarray) -> np.ndarray:
    """SKAB's change points of a per-row 0/1 output: every switch, and the first row if it is 1."""
    p = (np.asarray(pred) == 1).astype(np.int8)
    cp = np.zeros(p.shape, dtype=bool)
    if p.size:
        cp[0] = p[0] == 1
        cp[1:] = p[1:] != p[:-1]
    return cp


def detection_windows(ts: np.ndarray, true_cp: np.ndarray, width: float = NAB_WINDOW_SECONDS) -> list[list[float]]:
    """[start, end] (seconds) of the window after each true change point, overlaps cut from the later one."""
    ts = np.asarray(ts, dtype=np.float64)
    windows = [[float(t), float(t) + width] for t in ts[np.asarray(true_cp) == 1]]
    for i in range(len(windows) - 1):
        if windows[i][1] >= windows[i + 1][0]:
            windows[i + 1][0] = windows[i][1]
    return windows


def nab_curve(a_tp: float, a_fp: float, detail: int = NAB_DETAIL) -> np.ndarray:
    """SKAB's `my_scale` curve (scale_koef 1): A_tp at the window start, A_fp at its end."""
    x = np.linspace(-np.pi / 2, np.pi / 2, detail)
    half = (a_tp - a_fp) / 2
    return half * -np.tanh(x) / np.tanh(np.pi / 2) + half + a_fp


def nab_credit(start: float, detected: float, end: float, a_tp: float, a_fp: float, detail: int = NAB_DETAIL) -> float:
    """Credit of a first detection at `detected` inside the window [start, end]."""
    length = end - start
    event = int((detected - start) / length * detail) if length > 0 else 0
    return float(nab_curve(a_tp, a_fp, detail)[min(event, detail - 1)])


@dataclass
class NabCounts:
    """NAB outcome of one file (or, summed, of many): raw scores per profile and the counts behind them."""

    score: np.ndarray = field(default_factory=lambda: np.zeros(3))  # per profile, in PROFILES order
    null: np.ndarray = field(default_factory=lambda: np.zeros(3))
    perfect: np.ndarray = field(default_factory=lambda: np.zeros(3))
    windows: int = 0
    missed: int = 0
    false_positives: int = 0
    delays: list[float] = field(default_factory=list)  # seconds from window start to the first detection

    def __add__(self, other: NabCounts) -> NabCounts:
        return NabCounts(
            self.score + other.score,
            self.null + other.null,
            self.perfect + other.perfect,
            self.windows + other.windows,
            self.missed + other.missed,
            self.false_positives + other.false_positives,
            self.delays + other.delays,
        )


def nab_counts(
    ts: np.ndarray, true_cp: np.ndarray, pred_cp: np.ndarray, width: float = NAB_WINDOW_SECONDS
) -> NabCounts:
    """NAB scores of one file: true and predicted change points as 0/1 per row, `ts` in seconds."""
    ts = np.asarray(ts, dtype=np.float64)
    pred_times = np.sort(ts[np.asarray(pred_cp) == 1])
    windows = detection_windows(ts, true_cp, width)
    first: dict[int, float] = {}
    if windows:
        outside = np.count_nonzero(pred_times < windows[0][0])
        for i, (start, end) in enumerate(windows):
            inside = pred_times[(pred_times >= start) & (pred_times <= end)]
            if inside.size:
                first[i] = float(inside[0])
            if i + 1 < len(windows):
                outside += np.count_nonzero((pred_times > end) & (pred_times < windows[i + 1][0]))
        outside += np.count_nonzero(pred_times > windows[-1][1])
    else:
        outside = pred_times.size
    out = NabCounts(windows=len(windows), missed=len(windows) - len(first), false_positives=int(outside))
    for j, (a_tp, a_fp, a_fn) in enumerate(PROFILES.values()):
        s = a_fp * out.false_positives + a_fn * out.missed
        s += sum(nab_credit(windows[i][0], t, windows[i][1], a_tp, a_fp) for i, t in first.items())
        out.score[j] = s
        out.null[j] = len(windows) * a_fn
        out.perfect[j] = len(windows) * a_tp
    out.delays = [t - windows[i][0] for i, t in sorted(first.items())]
    return out


def nab_scores(counts: NabCounts) -> dict[str, float]:
    """Normalised NAB scores (0 = never fires, 100 = perfect) and the counts, from summed NabCounts."""
    out: dict[str, float] = {}
    for j, name in enumerate(PROFILES):
        den = counts.perfect[j] - counts.null[j]
        out[name] = 100.0 * (counts.score[j] - counts.null[j]) / den if den else float("nan")
    out["windows"] = counts.windows
    out["missed"] = counts.missed
    out["false_positives"] = counts.false_positives
    out["mean_delay_s"] = float(np.mean(counts.delays)) if counts.delays else float("nan")
    return out


def count_window(ts: np.ndarray, true_cp: np.ndarray) -> float:
    """Window width (s) behind the leaderboard's missed-CP and FP counts: duration / (change points + 1)."""
    ts = np.asarray(ts, dtype=np.float64)
    return float(ts[-1] - ts[0]) / (int(np.count_nonzero(np.asarray(true_cp) == 1)) + 1) if ts.size else 0.0


# ------------------------------------------------------------------------------------ together


@dataclass
class FileEval:
    """What one file contributes: its test rows' confusion, NAB counts (60 s) and leaderboard-style counts."""

    confusion: Confusion
    nab: NabCounts
    counts: NabCounts


def evaluate_file(
    ts: np.ndarray,
    anomaly: np.ndarray,
    changepoint: np.ndarray,
    pred: np.ndarray,
    train_rows: int = TRAIN_ROWS,
    width: float = NAB_WINDOW_SECONDS,
) -> FileEval:
    """Score a whole file's per-row predictions on its test part (rows from `train_rows` on)."""
    test = slice(train_rows, None)
    p = np.asarray(pred)[test]
    t, cp = np.asarray(ts)[test], np.asarray(changepoint)[test]
    pred_cp = predicted_changepoints(p)
    return FileEval(
        confusion=confusion(np.asarray(anomaly)[test], p),
        nab=nab_counts(t, cp, pred_cp, width),
        counts=nab_counts(t, cp, pred_cp, count_window(t, cp)),
    )


def summarise(files: Iterable[FileEval]) -> dict[str, float]:
    """Pooled outlier scores, NAB scores (nab_*) and leaderboard-style change-point counts (cp_*)."""
    c, n, w = Confusion(), NabCounts(), NabCounts()
    for f in files:
        c, n, w = c + f.confusion, n + f.nab, w + f.counts
    out = outlier_scores(c)
    out.update({f"nab_{k}": v for k, v in nab_scores(n).items()})
    wide = nab_scores(w)
    out.update(
        cp_missed=wide["missed"], cp_false_positives=wide["false_positives"], cp_mean_delay_s=wide["mean_delay_s"]
    )
    return out
