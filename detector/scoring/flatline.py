"""Stuck values: how improbable is a run of exactly repeated readings on a channel?

A sensor that freezes keeps sending its last value. A forecaster barely notices
(the frozen value is close to what it expected), so the engine scores runs of
repeated values separately. Each channel keeps μ, the mean length of the run of
identical readings that a reading belongs to (1 for a channel that always
changes; large for a quantised channel that sits on one value for a while; being
weighted by readings, not runs, many short runs do not hide a few long ones).
Modelling run lengths as geometric with that mean, a run of r readings has tail
probability (1 − 1/μ)^(r − 1); the run score is one minus that, on the same
[0, 1] scale as the forecast score. Runs shorter than `stuck_after` never score.
"""

from __future__ import annotations

import numpy as np

RUN_ALPHA = 0.02
"""Learning rate of the running mean run length per reading of a finished run (the first run sets it)."""

RUN_CLIP = 4.0
"""A finished run teaches at most RUN_CLIP × the usual length, so one stuck episode cannot teach that stuck is normal."""

MAX_RUN = np.iinfo(np.uint16).max


def update(
    last: np.ndarray,
    repeats: np.ndarray,
    run_mean: np.ndarray,
    x: np.ndarray,
    seen: np.ndarray,
    stuck_after: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Advance run lengths with readings `x` [n, C]; `seen` marks sensors with a previous reading.

    Returns (new repeats [n, C], new run_mean [n, C], run score [n], channel of that score [n]).
    """
    same = (x == last) & seen[:, None]
    finished = ~same & (repeats > 0)
    usual = np.maximum(run_mean, 1.0)
    run = np.minimum(repeats, RUN_CLIP * usual)
    # A run of r readings counts r times: the fixed point is E[r²]/E[r], the run length seen by a reading.
    rate = np.minimum(RUN_ALPHA * run, 0.5)
    learned = np.where(run_mean == 0, repeats, usual + rate * (run - usual))
    new_run_mean = np.where(finished, learned, run_mean).astype(np.float32)
    new_repeats = np.where(same, np.minimum(repeats.astype(np.int64) + 1, MAX_RUN), 1).astype(np.uint16)
    tail = (1.0 - 1.0 / usual) ** (new_repeats.astype(np.float64) - 1.0)
    per_channel = np.where(new_repeats >= stuck_after, 1.0 - tail, 0.0)
    channel = per_channel.argmax(axis=1)
    return new_repeats, new_run_mean, per_channel.max(axis=1).astype(np.float32), channel
