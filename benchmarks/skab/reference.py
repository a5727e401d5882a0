"""Non-engine detectors scored by the same harness: the always-alarm baseline and SKAB's T² reference.

`t2_reference` re-implements the leaderboard's "T-squared" pipeline (waico/SKAB `core/t2.py` with
`T2(scaling=True, using_pca=False)`, notebook `t2_SKAB.ipynb`): per file, standardise with the mean
and std of the first 400 rows, Hotelling's T² with the inverse covariance of those rows, upper control
limit UCL = m(n−1)(n+1)/(n(n−m)) · F⁻¹(0.999; m, n−m) found on SKAB's grid linspace(0, 15, 10000),
a rolling median of 5 rows, and an alarm where it exceeds 2 · UCL. It is causal (a streaming detector
that is fitted once on the training part) and serves as a check of the harness: its scores here can be
set against the published T-squared row.
"""

from __future__ import annotations

import math

import numpy as np

from benchmarks.skab.metrics import TRAIN_ROWS


def always_alarm(n: int) -> np.ndarray:
    """Alarm on every row."""
    return np.ones(n, dtype=bool)


def _f_cdf(x: np.ndarray, d1: int, d2: int) -> np.ndarray:
    """CDF of the F(d1, d2) distribution on a grid x ≥ 0, by integrating its density (no SciPy needed)."""
    grid = np.linspace(0.0, float(x.max()), 200_001)
    with np.errstate(divide="ignore", invalid="ignore"):
        power = np.where(grid > 0, (0.5 * d1 - 1) * np.log(grid), 0.0 if d1 == 2 else -np.inf)
    log_pdf = (
        0.5 * d1 * math.log(d1) + 0.5 * d2 * math.log(d2) + power
        - 0.5 * (d1 + d2) * np.log(d1 * grid + d2)
        - (math.lgamma(d1 / 2) + math.lgamma(d2 / 2) - math.lgamma((d1 + d2) / 2))
    )
    pdf = np.exp(log_pdf)
    cdf = np.concatenate([[0.0], np.cumsum((pdf[1:] + pdf[:-1]) / 2 * np.diff(grid))])
    return np.interp(x, grid, cdf)


def t2_ucl(m: int, n: int, p_value: float = 0.999) -> float:
    """SKAB's T² upper control limit for m channels and n training rows."""
    grid = np.linspace(0, 15, 10000)
    c_alpha = grid[_f_cdf(grid, m, n - m) < p_value][-1]
    return float(m * (n - 1) * (n + 1) / (n * (n - m)) * c_alpha)


def t2_reference(
    values: np.ndarray, train_rows: int = TRAIN_ROWS, window: int = 5, factor: float = 2.0
) -> tuple[np.ndarray, np.ndarray]:
    """(alarm per row, T² statistic per row) for one file; rows before `train_rows` never alarm."""
    train = values[:train_rows]
    keep = np.any(train != train[0], axis=0)  # SKAB drops channels constant in the training part
    train, values = train[:, keep], values[:, keep]
    mean, std = train.mean(axis=0), train.std(axis=0)
    z_train = (train - mean) / std
    inv_cov = np.linalg.inv(np.atleast_2d(np.cov(z_train.T)))
    z = (values[train_rows:] - mean) / std
    t2 = np.einsum("ij,jk,ik->i", z, inv_cov, z)
    smoothed = np.full(t2.shape, np.nan)
    if t2.size >= window:
        smoothed[window - 1 :] = np.median(np.lib.stride_tricks.sliding_window_view(t2, window), axis=1)
    ucl = t2_ucl(z.shape[1], train_rows)
    alarm = np.zeros(len(values), dtype=bool)
    alarm[train_rows:] = np.nan_to_num(smoothed, nan=0.0) > factor * ucl
    stat = np.full(len(values), np.nan)
    stat[train_rows:] = smoothed
    return alarm, stat
