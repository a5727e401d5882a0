"""Which view made a reading's score, and so raised an alert: `Cause`.

The engine scores each reading with four views (forecast error, correlation, level, stuck value) and
keeps the largest score. The view that made it is carried as a small int array of `Cause` codes next
to the score; an alert names the cause of the most surprising reading of its run of anomalies.

A sensor's state keeps that reading's surprise as one float32, `cause_z`, in records that checkpoints
already hold: a forecast's |z|, or for the other views a value above any |z| that ranks them
(`pack`). `unpack` reads the cause back. Nothing else needs to know how.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

import numpy as np


class Cause(StrEnum):
    """A view, ranked: a reading made by a later one is more surprising than any made by an earlier one.

    The value is the word alert events carry in `cause` (public format: do not change it).
    """

    FORECAST = "forecast"  # far from the forecast
    CORRELATION = "correlation"  # the channels' levels together are unusual (names the one contributing most)
    LEVEL = "level"  # the channel's level shifted
    STUCK = "stuck"  # the channel repeats one value

    @property
    def code(self) -> int:
        """Its code in a cause array: its rank (0 = forecast)."""
        return _CODES[self]

    @property
    def label(self) -> str:
        """What alert events say: "forecast", "correlation", "level" or "stuck"."""
        return self.value

    @classmethod
    def of(cls, code: int) -> Cause:
        return _BY_CODE[code]


_BY_CODE = tuple(Cause)
_CODES = {cause: code for code, cause in enumerate(_BY_CODE)}

_CORRELATION_STORED, _LEVEL_STORED = 1e20, 1e30
"""What the state keeps for a reading made by the correlation or level view (a stuck value's: inf): above any
forecast error's |z|, in rank order. Checkpoint records hold these values: do not change them."""


def choose(cause: np.ndarray, by_cause: Mapping[Cause, np.ndarray | float]) -> np.ndarray:
    """Per reading, the entry of `by_cause` (one per Cause: an array with a row per reading, or a number) for its
    cause (codes)."""
    return np.choose(cause, [by_cause[c] for c in _BY_CODE])


def pack(cause: np.ndarray, surprise: np.ndarray) -> np.ndarray:
    """The float the state keeps for readings of `cause` (codes) with forecast surprise |z| `surprise`.

    Ordered like (cause, |z|), so one `>` finds the more surprising of two readings.
    """
    return choose(cause, {Cause.FORECAST: surprise, Cause.CORRELATION: _CORRELATION_STORED,
                          Cause.LEVEL: _LEVEL_STORED, Cause.STUCK: np.inf})


def unpack(stored: float) -> Cause:
    """The cause of the reading the state keeps, from its `pack`ed surprise.

    A forecast error's |z| of 1e20 or more (only where a channel that was exactly constant jumps by many orders
    of magnitude) reads back as a correlation: the float cannot tell them apart.
    """
    if np.isinf(stored):
        return Cause.STUCK
    if stored >= _LEVEL_STORED:
        return Cause.LEVEL
    return Cause.CORRELATION if stored >= _CORRELATION_STORED else Cause.FORECAST
