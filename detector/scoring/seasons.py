"""Daily cycles: what a channel usually reads at this time of day, so the level views judge what is left.

A server's load, a building's temperature or a plant's flow follow the clock. Measured against one running
mean, a clean daily cycle is a level that wanders far every day, so the level view learns a wide spread
and a cycle that stops (a flat day, a shifted peak) stays inside it. So each channel keeps a time-of-day
profile of its normalised value: `bins` equal slices of the UTC day, read and updated with linear
interpolation between the two nearest bin centres. Once the sensor has seen two days and the profile
explains at least half of the channel's variance (`GAIN`), the level and correlation views see the reading
minus its profile value; until then, or on a channel without a daily cycle, they see it as it is.

Each bin averages its readings over about the last `DAYS` days. While an alert is open the profile holds
still (as the normalisation does), so a broken cycle is not learnt as the new normal while it lasts.
While a channel is judged against its profile, its level views' spread is kept at most the mean square of
what is left after the profile (`bound_spread`), so the wide spread learnt from the raw cycle does not
linger for days.
Cost: (`bins` + 3) float32 per channel (108 bytes at 24 bins).
"""

from __future__ import annotations

import numpy as np

DAY = 86_400.0

DAYS = 3.0
"""Memory of each bin, in days."""

MIN_DAYS = 2.0
"""Days a sensor must have been seen before its profile is used."""

GAIN = 0.5
"""A profile is used where the variance left after it is at most this share of the variance before it."""


def _bins(ts: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The two bins each time `ts` [n] lies between: (lower [n, 1], upper [n, 1], weight of the upper [n, 1])."""
    position = (np.mod(ts, DAY) / DAY) * bins - 0.5  # bin centres at (i + 0.5) / bins of the day
    lower = np.floor(position)
    low = np.mod(lower, bins).astype(np.int64)
    return low[:, None], np.mod(low + 1, bins)[:, None], (position - lower).astype(np.float32)[:, None]


def _split(fit: np.ndarray, channels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The parts of a `fit` row block [n, 3C]: (mean square before the profile, after it, profile in use)."""
    return fit[:, :channels], fit[:, channels:2 * channels], fit[:, 2 * channels:] > 0


def update(
    profile: np.ndarray,
    fit: np.ndarray,
    z: np.ndarray,
    ts: np.ndarray,
    count: np.ndarray,
    dt_mean: np.ndarray,
    learn: np.ndarray,
    bins: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Deseasonalise normalised readings `z` [n, C] seen at `ts` and learn from them where `learn` [n].

    `profile` [n, C·bins] and `fit` [n, 3C] (the running mean square of z before and after the profile, and
    whether the profile was in use) are the sensors' state; `count` is readings seen before these, `dt_mean`
    the usual seconds between readings. Returns (z as the level views should see it [n, C], the profile value
    taken off [n, C], new profile, new fit, closed [n, C]: channels that stopped using their profile).
    """
    n, channels = z.shape
    low, high, weight = _bins(ts, bins)
    table = profile.reshape(n, channels, bins).copy()
    rows, cols = np.arange(n)[:, None], np.arange(channels)[None, :]
    value = (1.0 - weight) * table[rows, cols, low] + weight * table[rows, cols, high]
    left = z - value
    raw_fit, left_fit, used = _split(fit, channels)
    days = count * dt_mean.astype(np.float64) / DAY
    use = ((days >= MIN_DAYS)[:, None] & (left_fit <= GAIN * raw_fit))
    taken = np.where(use, value, 0.0).astype(np.float32)
    closed = used & ~use

    per_day = DAY / np.maximum(dt_mean.astype(np.float64), 1e-9)
    # each bin sees about per_day / bins readings a day: average over the days seen, at most DAYS
    alpha = 1.0 / np.maximum(1.0, per_day / bins * np.clip(days, 1.0, DAYS))
    step = (alpha[:, None] * left * learn[:, None]).astype(np.float32)
    table[rows, cols, low] += (1.0 - weight) * step
    table[rows, cols, high] += weight * step
    fit_alpha = (np.maximum(1.0 / (count + 1.0), 1.0 / np.maximum(per_day, 1.0)) * learn)[:, None]
    new_raw = raw_fit + fit_alpha * (z * z - raw_fit)
    new_left = left_fit + fit_alpha * (left * left - left_fit)
    new_fit = np.concatenate([new_raw, new_left, use], axis=1).astype(np.float32)
    return (z - taken).astype(np.float32), taken, table.reshape(n, channels * bins), new_fit, closed


def bound_spread(spread: np.ndarray, fit: np.ndarray, closed: np.ndarray) -> np.ndarray:
    """A level view's spread [n, C] kept consistent with what it averages (`fit` as `update` returns it).

    A level is an average of its inputs, so its variance is at most their mean square: where a channel is
    judged against its profile, its spread is at most the mean square left after it (so the wide spread learnt
    from the raw cycle does not linger); where it just stopped (`closed`), at least the raw mean square.
    """
    raw_fit, left_fit, use = _split(fit, spread.shape[1])
    bounded = np.where(use, np.minimum(spread, left_fit), spread)
    return np.where(closed, np.maximum(bounded, raw_fit), bounded).astype(np.float32)
