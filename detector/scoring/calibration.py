"""Turn forecast errors into calibrated scores: a tail probability under each sensor's own errors.

A raw error means nothing on its own: 0.5 is huge for one sensor and noise for
another. As in Numenta's anomaly likelihood, each sensor keeps the running
distribution of its own (log, short-window smoothed) standardised error; the
score of a reading is how far into that distribution's upper tail it falls,
Φ((g − μ) / σ), a number in [0, 1] that means the same on every sensor.

Updates of the long-run distribution are winsorised at μ + 3σ so that an
anomaly does not quickly teach the sensor that anomalies are normal.
"""

from __future__ import annotations


import numpy as np

from detector.scoring import surprise

SIGMA_FLOOR = 0.1
"""Smallest spread (in log-error units) of the error distribution; keeps perfectly regular sensors from scoring 1 on noise."""

MIN_READINGS = 10
"""Readings a sensor must have before its errors are scored at all: the normalisation of
its first few readings is still settling, and their errors would distort the distribution."""

_SETTLED = 10
"""Errors seen before winsorising the updates starts."""

ERROR_FLOOR = 0.05
"""Added to the smoothed error before the log: a forecast far better than its own stated
uncertainty is not news, and without a floor such lucky readings would widen σ."""


def standardised_error(x: np.ndarray, expected: np.ndarray, expected_std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel standardised residuals [n, C] and their mean square per reading [n]."""
    z = (x - expected) / expected_std
    return z, np.mean(z * z, axis=1)


def score(
    err: np.ndarray,
    err_short: np.ndarray,
    err_mean: np.ndarray,
    err_var: np.ndarray,
    seen: np.ndarray,
    short_window: float,
    long_window: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Score errors and return (surprise, new err_short, new err_mean, new err_var).

    The surprise is −log10 of the upper tail 1 − Φ((g − μ) / σ), in float64 (`detector.scoring.surprise`).
    `seen` is how many errors each sensor scored before this one (0 = first). The surprise is 0
    for a sensor's first `_SETTLED` errors, while its error distribution is still unknown.
    """
    first = seen == 0
    short = np.where(first, err, err_short + (err - err_short) / short_window).astype(np.float32)
    g = np.log(short + ERROR_FLOOR)
    sigma = np.maximum(np.sqrt(err_var), SIGMA_FLOOR)
    z = np.where(first, 0.0, (g.astype(np.float64) - err_mean) / sigma)

    settled = seen >= _SETTLED
    g_learn = np.where(settled, np.minimum(g, err_mean + 3.0 * sigma), g)
    alpha = np.maximum(1.0 / (seen.astype(np.float64) + 1.0), 1.0 / long_window)
    diff = g_learn - err_mean
    new_mean = np.where(first, g, err_mean + alpha * diff).astype(np.float32)
    new_var = np.where(first, 0.0, (1.0 - alpha) * (err_var + alpha * diff * diff)).astype(np.float32)
    # Until a sensor has a few errors its spread is unknown: report 0 rather than a meaningless tail.
    return np.where(seen < _SETTLED, 0.0, surprise.normal_upper(z)), short, new_mean, new_var
