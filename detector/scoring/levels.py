"""Sustained shifts: how far has each channel's recent level moved from its usual one?

A forecaster follows a level shift after one reading: its errors return to
normal while the plant stays in the wrong state (SKAB's valve faults are such
shifts). So each channel also keeps its recent level, an exponential average of
its normalised value over about `level_window` readings, and the usual spread of
that level. The level score is 1 − the two-sided tail probability of the current
level under that spread, 2Φ(|level| / σ) − 1, on the same [0, 1] scale as the
other scores (computed as a surprise, −log10 of the tail, `detector.scoring.surprise`). A sensor's level score is that of its most unusual channel, corrected
for having looked at C channels (Šidák): the probability that the largest of C
independent channels' levels stays within this one's, (2Φ(|level| / σ) − 1)^C, so a
sensor with many channels does not alarm more often just because it has more of them. The normalisation's mean moves slowly (`norm_window`), so a
shift keeps scoring for a while before it becomes the new normal. Updates of
the spread are winsorised at 3σ so a shift does not widen it much.
"""

from __future__ import annotations

import numpy as np

from detector.scoring import surprise

SPREAD_FLOOR = 0.05
"""Smallest spread of a level (in normalised units)."""


def update(
    level: np.ndarray,
    spread: np.ndarray,
    z: np.ndarray,
    count: np.ndarray,
    window: float,
    long_window: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Advance levels [n, C] with normalised readings z [n, C]; `count` is readings seen before these.

    Returns (new level, new spread, level surprise [n], channel of that surprise [n], that channel's own
    surprise [n] without the correction for C channels: how far off the sensor's most shifted channel is on
    its own). A sensor's surprise is 0 until it has 2 × `window` readings (its level is still settling).
    """
    new_level = np.where(count[:, None] > 0, level + (z - level) / window, 0.0).astype(np.float32)
    sigma = np.maximum(np.sqrt(spread), SPREAD_FLOOR)
    per_channel = surprise.normal_two_sided(new_level / sigma)
    settled = count >= 2 * window
    per_channel = np.where(settled[:, None], per_channel, 0.0)
    alpha = np.maximum(1.0 / (count.astype(np.float64) + 1.0), 1.0 / long_window)[:, None]
    learn = np.minimum(new_level * new_level, 9.0 * sigma * sigma)
    new_spread = (spread + alpha * (learn - spread)).astype(np.float32)
    channel = per_channel.argmax(axis=1)
    worst = per_channel.max(axis=1)
    return new_level, new_spread, surprise.any_of(worst, z.shape[1]), channel, worst


def two_scales(
    slow_worst: np.ndarray, slow_channel: np.ndarray, fast_worst: np.ndarray, fast_channel: np.ndarray, channels: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Combine the level view at two time scales: (surprise [n], channel [n], most shifted channel's own [n]).

    `*_worst` are the per-sensor largest per-channel surprises of each scale (`update`'s last output). The
    result is the largest of the 2C per-channel surprises corrected for 2C tests (Šidák; conservative, since
    the two scales of one channel are correlated), so adding a scale does not add chance alarms.
    """
    fast = fast_worst > slow_worst
    worst = np.maximum(slow_worst, fast_worst)
    return surprise.any_of(worst, 2 * channels), np.where(fast, fast_channel, slow_channel), worst

