"""What one wave of `Engine.step` passes between its stages: its readings and state, what it scores, the verdict.

A wave holds at most one reading per sensor (see `detector.state.waves`); row i of each is one reading.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detector.state.pool import Rows


@dataclass(slots=True)
class Wave:
    """One wave of a step: at most one reading per sensor, with its sensor's state; row i is one reading.

    `state` is a gathered copy of the sensors' state, updated in place and scattered back at the end.
    """

    positions: np.ndarray  # the readings' rows of the batch (and of its StepResult)
    slots: np.ndarray  # their sensors' pool slots
    state: Rows
    ts: np.ndarray
    values: np.ndarray  # [n, C]
    prev: np.ndarray  # [n, C] the sensor's previous reading (meaningless where count is 0)
    count: np.ndarray  # readings the sensor had accepted before this one
    dt: np.ndarray  # seconds since its previous reading (0 for its first)
    gap: np.ndarray  # silent longer than `max_gap`: its hidden state was reset
    mean: np.ndarray  # the reading's frame: the normalisation as it was before it
    var: np.ndarray
    step: np.ndarray
    std: np.ndarray


@dataclass(slots=True)
class Targets:
    """The readings a wave scores: a forecaster's are the wave's own; a look-ahead model's, those it releases.

    Row i is one reading, seen at `ts` with `values` in the frame (`mean`, `std`), and the network's
    `expected` ± `expected_std` for it.
    """

    positions: np.ndarray  # the rows of the StepResult that get their scores
    at: np.ndarray | slice  # their rows of the wave's state
    ts: np.ndarray
    values: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    count: np.ndarray  # readings the sensor had before this one
    expected: np.ndarray
    expected_std: np.ndarray
    has_estimate: np.ndarray  # an estimate from before it (and enough readings): it gets a score

    def take(self, index: np.ndarray | slice) -> Targets:
        """The targets at `index` (slice(None): all of them, as they are)."""
        if isinstance(index, slice):
            return self
        at = index if isinstance(self.at, slice) else self.at[index]
        return Targets(self.positions[index], at, self.ts[index], self.values[index], self.mean[index],
                       self.std[index], self.count[index], self.expected[index], self.expected_std[index],
                       self.has_estimate[index])


@dataclass(slots=True)
class Verdict:
    """What the views made of judged targets, row i for target i: the alert state's input."""

    score: np.ndarray  # the score of the largest of the views' surprises
    surprise: np.ndarray  # that surprise
    anomalous: np.ndarray
    cause: np.ndarray  # the view that made it (`Cause` codes)
    channel: np.ndarray  # the channel it names
    expected: np.ndarray  # what was expected on it: the forecast, or for LEVEL and CORRELATION its usual level
    seen: np.ndarray  # what was seen on it
    err_mean: np.ndarray  # the sensor's error distribution, for `threshold_error`
    err_var: np.ndarray
    held: np.ndarray | None  # a channel's level is still off (`clear_level`): an open alert may not clear
