"""Surprise: how improbable a reading is, as −log10 of its tail probability, computed in log space.

Every view (forecast error, level, correlation, stuck value) ends in a tail probability `q`: the
chance of seeing something at least this extreme under the sensor's own history. The score users
see is 1 − q, in [0, 1]; but in float32, or as 1 − q in float64, every q below about 1e-8 (or
1e-16) is the same 1.0, so the far tail loses its order and a threshold on the score cannot tell
a large anomaly from a huge one. So the views compute `surprise = −log10 q` from log-probabilities
(`log_ndtr`, `log1p`, `expm1`) in float64: 3 means q = 0.001, 9 means one in a billion, and it keeps
growing where the score has long reached 1. `to_score` turns it back into the score.
"""

from __future__ import annotations

import math

import numpy as np
import torch

LN10 = math.log(10.0)


def _log_ndtr(x: np.ndarray) -> np.ndarray:
    return torch.special.log_ndtr(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))).numpy()


def normal_upper(z: np.ndarray) -> np.ndarray:
    """Surprise of P(Z ≥ z) for a standard normal Z."""
    return -_log_ndtr(-np.asarray(z, dtype=np.float64)) / LN10


def normal_two_sided(z: np.ndarray) -> np.ndarray:
    """Surprise of P(|Z| ≥ |z|) for a standard normal Z."""
    return -(math.log(2.0) + _log_ndtr(-np.abs(np.asarray(z, dtype=np.float64)))) / LN10


def any_of(surprise: np.ndarray, tests: int) -> np.ndarray:
    """Surprise of the most surprising of `tests` independent tests (Šidák): q' = 1 − (1 − q)^tests.

    So a sensor with many channels does not alarm more often just because it has more of them.
    """
    s = np.asarray(surprise, dtype=np.float64)
    if tests == 1:
        return s
    q = np.power(10.0, -s)
    exact = -np.log10(np.maximum(-np.expm1(tests * np.log1p(-np.minimum(q, 1.0 - 1e-16))), 1e-300))
    return np.where(s > 12.0, s - math.log10(tests), exact)  # q' ≈ tests · q, where 1 − q is 1 in float64


def chi2_upper(t2: np.ndarray, dof: int) -> np.ndarray:
    """Surprise of P(χ²_dof ≥ t2); far in the tail, from the leading term of the upper incomplete gamma."""
    a = dof / 2.0
    x = np.maximum(np.asarray(t2, dtype=np.float64), 0.0) / 2.0
    tail = torch.special.gammaincc(torch.tensor(a, dtype=torch.float64), torch.from_numpy(x)).numpy()
    asymptotic = ((a - 1.0) * np.log(np.maximum(x, 1e-300)) - x - math.lgamma(a)) / -LN10
    with np.errstate(divide="ignore"):
        direct = -np.log10(tail)
    return np.where(tail > 1e-280, direct, np.maximum(asymptotic, 280.0))


def of_score(score: float) -> float:
    """The surprise at which the score reaches `score` (e.g. a threshold of 0.999 is surprise 3)."""
    return -math.log10(1.0 - score)


def to_score(surprise: np.ndarray) -> np.ndarray:
    """The calibrated score 1 − q in [0, 1], float64."""
    return -np.expm1(-np.asarray(surprise, dtype=np.float64) * LN10)
