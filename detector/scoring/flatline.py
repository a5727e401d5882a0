"""Stuck values: how improbable is a run of exactly repeated readings on a channel, given its own history?

A sensor that freezes keeps sending its last value. A forecaster barely notices
(the frozen value is close to what it expected), so the engine scores runs of
repeated values separately. Each channel keeps μ, the mean length of the run of
identical readings that a reading belongs to (1 for a channel that always
changes; large for a quantised channel that sits on one value for a while, or one
that steps between a few levels; being weighted by readings, not runs, many short
runs do not hide a few long ones). Modelling run lengths as geometric with that
mean, a run has tail probability (1 − 1/μ)^k for the k readings by which it outlasts
the longest run the channel has finished; its surprise is −log10 of that. So a channel
that idles at one value for hours, and has done so before, is not stuck when it does it
again. Runs shorter than `stuck_after` never score, and a finished run can raise the
longest at most RUN_CLIP-fold, so one stuck episode does not teach that stuck is normal.

"Stuck" means a channel that used to move has frozen: μ is learnt from finished
runs only, so a channel that has been constant since its first reading (a spare
input, a setpoint, an idle counter) has no history of moving and is normal until
it changes; after its first change, its runs are judged against the runs it has had.
"""

from __future__ import annotations

import numpy as np

RUN_ALPHA = 0.02
"""Learning rate of the running mean run length per reading of a finished run (the first run sets it)."""

RUN_CLIP = 4.0
"""A finished run teaches at most RUN_CLIP × the usual length, so one stuck episode cannot teach that stuck is normal."""

MAX_RUN = np.iinfo(np.uint16).max

MAX_LONGEST = 65_504.0
"""Largest `run_max` kept (the state holds it as float16)."""

MIN_USUAL = 1.1
"""Floor of μ in the tail: a channel that always changed makes a run of `stuck_after` a finite surprise
(about 9 at the default 10), not an infinite one."""


def update(
    last: np.ndarray,
    repeats: np.ndarray,
    run_mean: np.ndarray,
    run_max: np.ndarray,
    x: np.ndarray,
    seen: np.ndarray,
    stuck_after: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Advance run lengths with readings `x` [n, C]; `seen` marks sensors with a previous reading.

    Returns (new repeats [n, C], new run_mean [n, C], new run_max [n, C], run surprise [n], channel of that
    surprise [n]). A channel without a finished run yet (constant since its first reading) scores 0, and a run
    scores only for the readings by which it outlasts the longest the channel has finished (`run_max`).
    """
    same = (x == last) & seen[:, None]
    finished = ~same & (repeats > 0)
    usual = np.maximum(run_mean, 1.0)
    run = np.minimum(repeats, RUN_CLIP * usual)
    # A run of r readings counts r times: the fixed point is E[r²]/E[r], the run length seen by a reading.
    rate = np.minimum(RUN_ALPHA * run, 0.5)
    learned = np.where(run_mean == 0, repeats, usual + rate * (run - usual))
    new_run_mean = np.where(finished, learned, run_mean).astype(np.float32)
    longest = np.where(run_max == 0, repeats, np.maximum(run_max, np.minimum(repeats, RUN_CLIP * run_max)))
    new_run_max = np.where(finished, np.minimum(longest, MAX_LONGEST), run_max).astype(run_max.dtype)
    new_repeats = np.where(same, np.minimum(repeats.astype(np.int64) + 1, MAX_RUN), 1).astype(np.uint16)
    per_reading = -np.log10(1.0 - 1.0 / np.maximum(usual.astype(np.float64), MIN_USUAL))
    moved = run_mean > 0  # has finished a run: it used to move
    longer = new_repeats - np.maximum(run_max.astype(np.float64), 1.0)  # than any run it has finished
    per_channel = np.where((new_repeats >= stuck_after) & moved & (longer > 0), longer * per_reading, 0.0)
    channel = per_channel.argmax(axis=1)
    return new_repeats, new_run_mean, new_run_max, per_channel.max(axis=1), channel
