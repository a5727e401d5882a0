"""Non-engine detectors scored by the same harness: a PCA reconstruction-error reference and two baselines.

PCA reference, per server, fitted once on the train part and then run causally over every row:
- standardise each channel with the train part's mean and std (a channel constant in the train part,
  std 0, keeps std 1: it is only centred, so in these [0, 1]-scaled data a later change of it weighs
  no more than its raw size);
- PCA by numpy SVD of the standardised train rows; keep the fewest components whose explained
  variance reaches 95 % (VARIANCE);
- score = squared reconstruction error (sum over channels of the squared residual after projecting on
  the kept components), divided by the threshold, so that 1 is the threshold on every server and the
  pooled ROC-AUC compares like with like (per server, the division changes nothing);
- threshold = the 99.9th percentile of the train part's errors (in sample);
- alert hysteresis: an alert opens on the row where 3 of the last 5 rows (that row included) are above
  the threshold, stays open, and closes on the 5th consecutive row at or below it (that row is not
  alerting); the alert's channel is the one with the largest squared residual on its opening row.

Baselines: `random_alerts` (seeded: uniform per-row scores, alerts opening at random rows, one per
server-day on average, each open for its row only, on a random channel) and `always_alarm` (one alert
open from the first row on: it opens in the train part, so it never opens in the test part).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from benchmarks.asd.data import ROWS_PER_DAY, AsdFile
from benchmarks.asd.metrics import Detection

VARIANCE = 0.95
QUANTILE = 99.9
RAISE_K, RAISE_N, CLEAR_M = 3, 5, 5
SEED = 0


@dataclass
class Pca:
    """Standardisation and principal axes fitted on one server's train part."""

    mean: np.ndarray  # [C]
    std: np.ndarray  # [C], 1 where the train part is constant
    components: np.ndarray  # [k, C], orthonormal rows

    def squared_residuals(self, values: np.ndarray) -> np.ndarray:
        """[N, C] squared residuals of the standardised rows after projecting them on the components."""
        z = (np.asarray(values, dtype=np.float64) - self.mean) / self.std
        return (z - z @ self.components.T @ self.components) ** 2


def fit_pca(train: np.ndarray, variance: float = VARIANCE) -> Pca:
    """Fit on [N, C] train rows, keeping the fewest components that explain at least `variance`."""
    train = np.asarray(train, dtype=np.float64)
    mean, std = train.mean(axis=0), train.std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)
    _, s, vt = np.linalg.svd((train - mean) / std, full_matrices=False)
    power = s**2
    k = 0 if power.sum() == 0 else int(np.searchsorted(np.cumsum(power) / power.sum(), variance - 1e-12) + 1)
    return Pca(mean, std, vt[: min(k, vt.shape[0])])


def hysteresis(exceed: np.ndarray, k: int = RAISE_K, n: int = RAISE_N, m: int = CLEAR_M
               ) -> tuple[np.ndarray, list[int]]:
    """(alert open after each row, rows where an alert opened): open at k of the last n, close after m quiet rows."""
    exceed = np.asarray(exceed, dtype=bool)
    recent = np.convolve(exceed.astype(np.int32), np.ones(n, dtype=np.int32))[: exceed.size]
    alerting = np.zeros(exceed.size, dtype=bool)
    opened: list[int] = []
    is_open, quiet = False, 0
    for t in range(exceed.size):
        if not is_open:
            if recent[t] >= k:
                is_open, quiet = True, 0
                opened.append(t)
        else:
            quiet = 0 if exceed[t] else quiet + 1
            is_open = quiet < m
        alerting[t] = is_open
    return alerting, opened


def pca_reference(f: AsdFile, variance: float = VARIANCE) -> tuple[Detection, dict]:
    """The PCA reference's output on one server, and what it fitted (components kept, threshold)."""
    pca = fit_pca(f.values[: f.train_rows], variance)
    sq = pca.squared_residuals(f.values)
    error = sq.sum(axis=1)
    threshold = float(np.percentile(error[: f.train_rows], QUANTILE))
    alerting, opened = hysteresis(error > threshold)
    detection = Detection(
        scores={"score": error / max(threshold, 1e-12)},
        alerting=alerting,
        opened=[(t, int(np.argmax(sq[t]))) for t in opened],
    )
    return detection, {"components": int(pca.components.shape[0]), "threshold": threshold}


def random_alerts(f: AsdFile, index: int, per_day: float = 1.0, seed: int = SEED) -> Detection:
    """Seeded chance level: uniform scores; alerts open at random rows (`per_day` per server-day) on random channels."""
    rng = np.random.default_rng([seed, index])
    score = rng.random(len(f))
    rows = np.flatnonzero(rng.random(len(f)) < per_day / ROWS_PER_DAY)
    channels = rng.integers(0, f.values.shape[1], rows.size)
    alerting = np.zeros(len(f), dtype=bool)
    alerting[rows] = True
    return Detection(scores={"score": score}, alerting=alerting, opened=list(zip(rows.tolist(), channels.tolist())))


def always_alarm(f: AsdFile) -> Detection:
    """One alert open from the first row on, constant score."""
    return Detection(scores={"score": np.ones(len(f))}, alerting=np.ones(len(f), dtype=bool), opened=[(0, 0)])
