"""Why a reading is rejected, and turning loose Python values into the engine's arrays.

A rejected reading leaves its sensor's state untouched and is reported with one
`RejectReason`, so the service can dead-letter it and the metrics can count it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timezone
from enum import IntEnum
from numbers import Real

import numpy as np

MAX_SENSOR_ID_LENGTH = 256
MAX_ABS_VALUE = 1e15
"""Largest |value| accepted. Sensor state keeps variances in float32 (at most 3.4e38): one reading far beyond
this would overflow them and leave the sensor's scores NaN for good, so such readings are rejected as not_finite."""


class RejectReason(IntEnum):
    """Why a reading was not scored. 0 is reserved for "scored" in status arrays."""

    NOT_NUMERIC = 1
    NOT_FINITE = 2
    WRONG_CHANNELS = 3
    BAD_TIMESTAMP = 4
    OUT_OF_ORDER = 5
    DUPLICATE = 6
    BAD_SENSOR_ID = 7

    @property
    def label(self) -> str:
        """Lower-case name used in dead-letter headers, metrics labels and files."""
        return self.name.lower()


SCORED = 0


def coerce_sensor_id(sensor_id: object) -> str | None:
    """The sensor id as a non-empty string of at most MAX_SENSOR_ID_LENGTH characters, or None."""
    if isinstance(sensor_id, bool) or not isinstance(sensor_id, (str, int)):
        return None
    text = str(sensor_id)
    if not text or len(text) > MAX_SENSOR_ID_LENGTH or not text.isprintable():
        return None
    return text


def coerce_timestamp(ts: object) -> float | None:
    """Seconds since the epoch from a number, a datetime or an ISO-8601 string; None if unusable.

    Naive datetimes are taken as UTC.
    """
    if isinstance(ts, bool):
        return None
    if isinstance(ts, Real):
        value = float(ts)
        return value if math.isfinite(value) else None
    if isinstance(ts, str):
        try:
            ts = datetime.fromisoformat(ts.strip())
        except ValueError:
            return None
    if isinstance(ts, datetime):
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=timezone.utc)
        return ts.timestamp()
    return None


def coerce_values(values: object, channels: int) -> tuple[np.ndarray | None, RejectReason | None]:
    """A float row of `channels` values, or the reason it cannot be one.

    Accepts a number (one channel) or a sequence of numbers; booleans and strings are not numbers.
    """
    items: Sequence[object]
    if isinstance(values, (str, bytes, bool)) or values is None:
        return None, RejectReason.NOT_NUMERIC
    if isinstance(values, Real):
        items = (values,)
    elif isinstance(values, np.ndarray):
        items = values.ravel().tolist()
    elif isinstance(values, Sequence):
        items = values
    else:
        return None, RejectReason.NOT_NUMERIC
    if len(items) != channels:
        return None, RejectReason.WRONG_CHANNELS
    if not all(isinstance(v, Real) and not isinstance(v, bool) for v in items):
        return None, RejectReason.NOT_NUMERIC
    try:
        row = np.asarray(items, dtype=np.float64)
    except OverflowError:
        return None, RejectReason.NOT_FINITE
    if not np.all(np.abs(row) <= MAX_ABS_VALUE):  # NaN and inf fail too
        return None, RejectReason.NOT_FINITE
    return row, None


def to_arrays(
    sensor_ids: Sequence[object], timestamps: Sequence[object], values: Sequence[object], channels: int
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Coerce a batch of loose readings into (ids, ts, values [B, C], status) for `Engine.step`.

    Rows that fail get a RejectReason in `status` and NaN values; the others status 0.
    """
    n = len(sensor_ids)
    if len(timestamps) != n or len(values) != n:
        raise ValueError(f"sensor_ids, timestamps and values differ in length ({n}, {len(timestamps)}, {len(values)})")
    ids: list[str] = []
    ts = np.full(n, np.nan)
    out = np.full((n, channels), np.nan)
    status = np.zeros(n, dtype=np.int8)
    for i in range(n):
        sensor = coerce_sensor_id(sensor_ids[i])
        ids.append(sensor if sensor is not None else "")
        if sensor is None:
            status[i] = RejectReason.BAD_SENSOR_ID
            continue
        stamp = coerce_timestamp(timestamps[i])
        if stamp is None:
            status[i] = RejectReason.BAD_TIMESTAMP
            continue
        ts[i] = stamp
        row, reason = coerce_values(values[i], channels)
        if reason is not None:
            status[i] = reason
            continue
        out[i] = row
    return ids, ts, out, status
