"""Online per-channel normalisation, shared by the engine and by training.

Each sensor's channels are standardised with a running mean and variance, so a
pressure in pascals and a vibration in g give comparable inputs and scores. The
running statistics are a Welford average for the first `window` readings and an
exponentially weighted one after that, so they follow slow drift.

A quantised or step-like channel (a valve, a mode, a count that moves in whole
units) sits on one value for long stretches: its running variance decays towards
zero between changes, and its next ordinary change would look like a 10σ jump.
So each channel also keeps its usual *step*, the running mean size of its
non-zero changes, and its scale is at least STEP_FRACTION of it: a change of
the size the channel usually makes is never news, while a sustained move to a
new value still shifts its level (`detector.scoring.levels`). On a continuous
channel (every reading differs) the step is about the noise and the floor
does not bind; a channel constant since its first reading has no step yet.

Training calls the very same functions over whole histories, so the network
sees exactly the inputs the engine will feed it.
"""

from __future__ import annotations

import numpy as np

Z_CLIP = 10.0
"""Normalised inputs and targets are clipped to ±Z_CLIP so one wild value cannot saturate the network."""

DT_CLIP = 3.0
"""The log time-delta feature is clipped to ±DT_CLIP."""

STEP_FRACTION = 0.5
"""A channel's scale is at least this fraction of its usual non-zero change (`update_step`)."""

STEP_ALPHA = 0.05
"""Learning rate of the usual step, per non-zero change (the first change sets it)."""


def scale(mean: np.ndarray, var: np.ndarray, step: np.ndarray | None = None) -> np.ndarray:
    """Standard deviation used to normalise, floored so constant channels do not divide by zero and at
    least STEP_FRACTION of the channel's usual `step` where it has one."""
    floor = np.maximum(np.abs(mean) * 1e-9, 1e-12)
    if step is not None:
        floor = np.maximum(floor, STEP_FRACTION * step)
    return np.maximum(np.sqrt(var), floor).astype(np.float32)


def update_step(step: np.ndarray, x: np.ndarray, prev: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """The usual size of a channel's non-zero changes after reading `x` [n, C] that follows `prev`.

    `seen` [n] marks sensors whose `prev` is a real previous reading. Equal readings teach nothing, so a
    channel that idles for hours keeps the step of its last moves.
    """
    change = np.abs(x - prev)
    moved = seen[:, None] & (change > 0) & np.isfinite(change)
    learned = np.where(step > 0, step + STEP_ALPHA * (change - step), change)
    return np.where(moved, learned, step).astype(np.float32)


def update(
    mean: np.ndarray, var: np.ndarray, count: np.ndarray, x: np.ndarray, window: float
) -> tuple[np.ndarray, np.ndarray]:
    """Return the running (mean, var) after seeing `x`; `count` is readings seen before `x`.

    Shapes: mean, var, x are [n, C]; count is [n].
    """
    alpha = np.maximum(1.0 / (count.astype(np.float64) + 1.0), 1.0 / window)[:, None]
    diff = x - mean
    new_mean = mean + alpha * diff
    new_var = (1.0 - alpha) * (var + alpha * diff * diff)
    return new_mean, new_var.astype(np.float32)


def time_feature(dt: np.ndarray, dt_mean: np.ndarray) -> np.ndarray:
    """Log ratio of this reading's time delta to the sensor's usual one (0 = on schedule)."""
    ratio = np.maximum(dt, 1e-9) / np.maximum(dt_mean, 1e-9)
    return np.clip(np.log(ratio), -DT_CLIP, DT_CLIP).astype(np.float32)


def update_dt_mean(dt_mean: np.ndarray, dt: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Running mean of the time delta between readings; `count` is readings seen before this one."""
    first = count <= 1
    alpha = np.maximum(1.0 / np.maximum(count.astype(np.float64), 1.0), 0.01)
    return np.where(first, dt, dt_mean + alpha * (dt - dt_mean)).astype(np.float32)


def observe(
    mean: np.ndarray,
    var: np.ndarray,
    step: np.ndarray,
    dt_mean: np.ndarray,
    count: np.ndarray,
    x: np.ndarray,
    prev: np.ndarray,
    dt: np.ndarray,
    window: float,
    gap: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One reading per row: network features, then the statistics updated with it.

    `count` is readings seen before `x`; `prev` the reading before `x` (ignored where count is 0);
    `dt` the seconds since it; `gap` marks rows whose time delta must not teach the usual delta.
    Returns (z [n, C], time feature [n], new mean, new var, new step, new dt_mean).
    The first reading of a sensor has z = 0: it only defines the mean.
    """
    std = scale(mean, var, step)
    z = np.where(count[:, None] > 0, np.clip((x - mean) / std, -Z_CLIP, Z_CLIP), 0.0).astype(np.float32)
    tfeat = np.where(count >= 2, time_feature(dt, dt_mean), 0.0).astype(np.float32)
    learn_dt = count >= 1 if gap is None else (count >= 1) & ~gap
    new_dt_mean = np.where(learn_dt, update_dt_mean(dt_mean, dt, count), dt_mean).astype(np.float32)
    new_mean, new_var = update(mean, var, count, x, window)
    return z, tfeat, new_mean, new_var, update_step(step, x, prev, count > 0), new_dt_mean
