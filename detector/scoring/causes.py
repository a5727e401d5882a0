"""Which view made a reading's score, and so raised an alert: `Cause`.

The engine scores each reading with four views (forecast error, correlation, level, stuck value) and
keeps the most surprising. The view that made it is carried as a small int array of `Cause` codes next
to the score; a sensor's state keeps the code, channel and surprise of the most surprising reading of
its current run of anomalies, which is what its alert names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum

import numpy as np


class Cause(StrEnum):
    """A view (in a fixed order: a tie between views goes to the earlier one).

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


def choose(cause: np.ndarray, by_cause: Mapping[Cause, np.ndarray | float]) -> np.ndarray:
    """Per reading, the entry of `by_cause` (one per Cause: an array with a row per reading, or a number) for its
    cause (codes)."""
    return np.choose(cause, [by_cause[c] for c in _BY_CODE])


def largest(score: np.ndarray, views: Sequence[tuple[Cause, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """The largest of the forecast view's `score` and the other views' (in order; a tie goes to the earlier
    one), and which view made it: (score, `Cause` codes)."""
    cause = np.zeros(len(score), dtype=np.int8)  # Cause.FORECAST
    for view, view_score in views:
        cause[view_score > score] = view.code
        score = np.maximum(score, view_score)
    return score, cause
