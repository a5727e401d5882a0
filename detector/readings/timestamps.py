"""The one timestamp rule: which instant a reading's `ts` names, whether it came through the Python API,
a file or Kafka.

- A number is epoch time, in a unit read from its own size: below 1e11 it is seconds (1e11 s is the
  year 5138), below 1e14 milliseconds, below 1e17 microseconds, else nanoseconds. The rule is applied
  to each value on its own, so one reading means the same instant whatever else its file or message
  holds. Every epoch instant from 1973 to 5138 is read right in each of the four units.
- A string is a number written out (as in a CSV cell) or an ISO 8601 date or datetime; one without a
  time zone is UTC.
- A `datetime` (a pandas `Timestamp` is one) is its instant; a naive one is UTC. A `numpy.datetime64`
  is its instant in its own unit.
- Anything else (booleans, None, NaN, infinities, integers beyond float range, NaT) is unusable: the
  reading is rejected as `bad_timestamp`. So is an instant before the epoch (a negative number, a date
  before 1970) or from the year 5138 on (1e11 s): no sensor reads before 1970, and an instant past
  what the units can tell apart (1e300 read as nanoseconds is still 1e291 s) would move the engine's
  event-time clock so far that every other sensor ages out. The epoch itself (0) is usable: a
  relative time axis that starts at 0 (a simulation, seconds since a test began) is read as 1970.
- A reading stamped more than `max_future_seconds` (a `DetectorConfig` setting, a day by default)
  ahead of this machine's clock is `bad_timestamp` too (`usable_seconds`, `ahead_of_clock`): the
  engine, the Python API, replay and the Kafka decoder all apply this one check.

Everything returns seconds since the epoch as float64, the engine's time axis.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from datetime import datetime, timezone
from numbers import Real

import numpy as np

UNIT_LIMITS = ((1e11, 1.0), (1e14, 1e3), (1e17, 1e6))
"""(magnitude below which, divisor to seconds): seconds, milliseconds, microseconds; above them nanoseconds."""
NANOSECONDS = 1e9
SECONDS_BELOW = UNIT_LIMITS[0][0]
LATEST = SECONDS_BELOW
"""Instants from this many seconds after the epoch on (the year 5138) are unusable, as are those before the epoch."""


def epoch_number(value: float) -> float:
    """Seconds from one epoch number in seconds, milliseconds, microseconds or nanoseconds (by its size)."""
    size = abs(value)
    for limit, divisor in UNIT_LIMITS:
        if size < limit:
            return value / divisor
    return value / NANOSECONDS


def epoch_numbers(values: np.ndarray) -> np.ndarray:
    """`epoch_number` of each element of a float array; NaN where that is not a usable instant (`in_range`)."""
    size = np.abs(values)
    divisor = np.select([size < limit for limit, _ in UNIT_LIMITS], [d for _, d in UNIT_LIMITS], NANOSECONDS)
    seconds = values / divisor
    return np.where((seconds >= 0) & (seconds < LATEST), seconds, np.nan)


def in_range(seconds: float) -> float:
    """`seconds` if it is a usable instant (from the epoch to before the year 5138), else NaN."""
    return seconds if 0.0 <= seconds < LATEST else math.nan


def ahead_of_clock(ts: np.ndarray, max_future_seconds: float | None, now: float | None = None) -> np.ndarray:
    """Which of `ts` (seconds) lie more than `max_future_seconds` ahead of the clock (`now`, default this
    machine's); none when the bound is None. The one future check of the engine, the API, replay and Kafka."""
    if max_future_seconds is None:
        return np.zeros(np.shape(ts), dtype=bool)
    limit = (time.time() if now is None else now) + max_future_seconds
    return np.asarray(ts) > limit


def usable_seconds(ts: np.ndarray, max_future_seconds: float | None) -> np.ndarray:
    """Which of `ts` (seconds) the engine accepts: usable instants (`in_range`) not ahead of the clock."""
    ts = np.asarray(ts, dtype=np.float64)
    return (ts >= 0) & (ts < LATEST) & ~ahead_of_clock(ts, max_future_seconds)


def iso_seconds(text: str) -> float | None:
    """Seconds since the epoch of an ISO 8601 date or datetime string (naive = UTC), or None."""
    try:
        stamp = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    return datetime_seconds(stamp)


def datetime_seconds(stamp: datetime) -> float:
    """Seconds since the epoch of a datetime; a naive one is UTC."""
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    return stamp.timestamp()


def to_seconds(ts: object) -> float:
    """Seconds since the epoch of one timestamp by the rule above; NaN if it is unusable."""
    if type(ts) is float and 0.0 <= ts < SECONDS_BELOW:
        return ts  # the common case, before the (slower) abstract-class checks below
    return in_range(_read_seconds(ts))


def _read_seconds(ts: object) -> float:
    """Seconds since the epoch that `ts` names, before the range check; NaN if it names no instant."""
    if isinstance(ts, bool):
        return math.nan
    if isinstance(ts, Real):
        try:
            value = float(ts)
        except OverflowError:  # an integer beyond float range (JSON parsers read any length)
            return math.nan
        return epoch_number(value) if math.isfinite(value) else math.nan
    if isinstance(ts, str):
        try:
            value = float(ts)
        except ValueError:
            seconds = iso_seconds(ts)
            return math.nan if seconds is None else seconds
        return epoch_number(value) if math.isfinite(value) else math.nan
    if isinstance(ts, datetime):
        return datetime_seconds(ts)
    if isinstance(ts, np.datetime64):
        return math.nan if np.isnat(ts) else ts.astype("datetime64[ns]").astype(np.int64) / NANOSECONDS
    return math.nan


def column_seconds(cells: Sequence[object]) -> tuple[np.ndarray, list[str]]:
    """Seconds for each cell of a file's time column (NaN if unreadable) and, per cell, why not (else '').

    A whole column of numbers or of zone-less ISO dates is converted by numpy in one go (fast for
    1e6 rows); a column with bad or mixed cells is read one cell at a time by `to_seconds`. Both
    follow the same rule.
    """
    out = _vectorised(cells)
    if out is None:
        out = np.fromiter((to_seconds(c) for c in cells), dtype=np.float64, count=len(cells))
    reasons = [""] * len(cells)
    for i in np.flatnonzero(~np.isfinite(out)).tolist():
        cell = str(cells[i])[:40]
        if math.isfinite(_read_seconds(cells[i])):
            reasons[i] = f"timestamp {cell!r} is before 1970-01-01 or after the year 5138"
        else:
            reasons[i] = f"timestamp {cell!r} is neither an ISO 8601 date nor an epoch number"
    return out, reasons


def _vectorised(cells: Sequence[object]) -> np.ndarray | None:
    """Seconds if every cell is a finite number (or numeric text), or every cell a zone-less ISO date; else None."""
    if any(type(c) is bool for c in cells):
        return None
    try:
        numbers = np.asarray(cells, dtype=np.float64)
        if numbers.ndim == 1 and np.isfinite(numbers).all():
            return epoch_numbers(numbers)
    except (ValueError, TypeError, OverflowError):
        pass
    if not all(isinstance(c, str) for c in cells):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # numpy warns on time zones: those go the slow, exact way
            stamps = np.array(cells, dtype="datetime64[us]")
    except (ValueError, TypeError, OverflowError, Warning):
        return None
    if np.isnat(stamps).any():
        return None
    seconds = stamps.astype(np.int64) / 1e6
    return np.where((seconds >= 0) & (seconds < LATEST), seconds, np.nan)
