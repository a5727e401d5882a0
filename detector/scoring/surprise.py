"""Surprise: how improbable a reading is, as −log10 of its tail probability, computed in log space.

Every view (forecast error, level, correlation, stuck value) ends in a tail probability `q`: the
chance of seeing something at least this extreme under the sensor's own history. The score users
see is 1 − q, in [0, 1]; but in float32, or as 1 − q in float64, every q below about 1e-8 (or
1e-16) is the same 1.0, so the far tail loses its order and a threshold on the score cannot tell
a large anomaly from a huge one. So the views compute `surprise = −log10 q` from log-probabilities
(`log_ndtr`, `log1p`, `expm1`) in float64: 3 means q = 0.001, 9 means one in a billion, and it keeps
growing where 1 − q has long reached 1. `to_score` turns it back into the score, which is 1 − q down to
q = 1e-6 and compresses the tail beyond, so the score too keeps its order and never ties at 1.0.
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


KNEE = 6.0
"""Up to this surprise (q = 1e-6) the score is exactly 1 − q; beyond it the score keeps rising towards 1 as
1 − 1e-6 · KNEE / surprise, so it never rounds to 1.0 and keeps the surprise's order into the far tail."""
_KNEE_Q = 10.0 ** -KNEE


def of_score(score: float) -> float:
    """The surprise at which the score reaches `score` (e.g. a threshold of 0.999 is surprise 3); `to_score`'s
    inverse."""
    q = 1.0 - score
    return -math.log10(q) if q >= _KNEE_Q else KNEE * _KNEE_Q / max(q, 1e-300)


def to_score(surprise: np.ndarray) -> np.ndarray:
    """The calibrated score in [0, 1), float64: 1 − q for q ≥ 1e-6 (surprise ≤ `KNEE`), beyond that a monotone
    compression of the tail, so no two surprises below about 6e10 share a score."""
    s = np.asarray(surprise, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        tail = 1.0 - _KNEE_Q * KNEE / np.maximum(s, KNEE)
    return np.where(s <= KNEE, -np.expm1(-s * LN10), tail)
