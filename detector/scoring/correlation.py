"""Joint shifts: is the sensor's recent level vector unusual given how its channels move together?

The level score (`levels`) looks at each channel on its own. A fault often moves several
channels a little at once (a valve closing: flow down, temperature up), or breaks a
relation that normally holds (flow and current always rise together; now only one does),
and neither shows on a single channel. So each sensor also keeps the recent level of every
channel (an exponential average of its normalised value over about `window` readings) and
the usual covariance of that level vector. The correlation score is the Hotelling T² of the
current level vector under that covariance, T² = lᵀ Σ⁻¹ l, turned into a tail probability
with the χ² distribution with C degrees of freedom: on the same [0, 1] scale as the other
scores, and for one channel exactly the level score's 2Φ(|l| / σ) − 1.

Σ is shrunk towards its diagonal (channels that are perfectly correlated or constant stay
invertible) and its updates are winsorised (a level vector with a large T² teaches only as
much as one at the limit), so a fault does not quickly become the usual covariance. The
channel an alert names is the one contributing most to T², lᵢ · (Σ⁻¹ l)ᵢ.

State is C² floats per sensor, and a C × C solve per reading: sensors with more channels
than `correlation_max_channels` skip this view.
"""

from __future__ import annotations

import numpy as np

from detector.scoring import surprise

SPREAD_FLOOR = 0.05
"""Smallest standard deviation of a channel's level (normalised units), as in `levels`."""

SHRINK = 0.05
"""Weight of the identity in the shrunk correlation matrix: keeps Σ invertible."""


def learn_limit(channels: int) -> float:
    """T² above which a level vector teaches the covariance only as much as one at this limit (≈ 3σ in 1-D)."""
    return float(channels + 3.0 * np.sqrt(2.0 * channels))


def update(
    level: np.ndarray,
    cov: np.ndarray,
    z: np.ndarray,
    count: np.ndarray,
    window: float,
    long_window: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Advance level vectors [n, C] and their covariances [n, C·C] with normalised readings z [n, C].

    `count` is readings seen before these. Returns (new level, new covariance, surprise [n], channel [n]).
    A sensor scores 0 until it has 2 × `window` readings (its level is still settling).
    """
    n, c = z.shape
    new_level = np.where(count[:, None] > 0, level + (z - level) / window, 0.0).astype(np.float32)
    sigma2 = cov.reshape(n, c, c).astype(np.float64)
    d = np.sqrt(np.maximum(np.diagonal(sigma2, axis1=1, axis2=2), SPREAD_FLOOR**2))
    corr = sigma2 / (d[:, :, None] * d[:, None, :])
    eye = np.eye(c)
    corr = (1.0 - SHRINK) * np.where(eye > 0, 1.0, corr) + SHRINK * eye
    u = new_level / d
    w = np.linalg.solve(corr, u[:, :, None])[:, :, 0]
    contribution = u * w
    t2 = contribution.sum(axis=1)
    score = np.where(count >= 2 * window, surprise.chi2_upper(t2, c), 0.0)

    limit = learn_limit(c)
    shrink = np.sqrt(np.minimum(1.0, limit / np.maximum(t2, 1e-12)))[:, None]
    learn = new_level * shrink
    alpha = np.maximum(1.0 / (count.astype(np.float64) + 1.0), 1.0 / long_window)[:, None, None]
    outer = learn[:, :, None] * learn[:, None, :]
    new_cov = (sigma2 + alpha * (outer - sigma2)).reshape(n, c * c).astype(np.float32)
    return new_level, new_cov, score, contribution.argmax(axis=1)
