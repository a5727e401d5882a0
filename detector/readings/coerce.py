"""Turning loose Python values (ids, timestamps, values) into the engine's arrays, or a `RejectReason`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real

import numpy as np

from detector.readings.reasons import RejectReason
from detector.readings.timestamps import to_seconds

MAX_SENSOR_ID_LENGTH = 256
MAX_ABS_VALUE = 1e15
"""Largest |value| accepted. Sensor state keeps variances in float32 (at most 3.4e38): one reading far beyond
this would overflow them and leave the sensor's scores NaN for good, so such readings are rejected as not_finite."""


def valid_sensor_id(text: object) -> bool:
    """The one id rule: a printable string of 1 to MAX_SENSOR_ID_LENGTH characters (the state pool's key)."""
    return isinstance(text, str) and 0 < len(text) <= MAX_SENSOR_ID_LENGTH and text.isprintable()


def coerce_sensor_id(sensor_id: object) -> str | None:
    """The sensor id as a string by the one id rule, or None.

    A string is taken as it is; an integer of any size (a JSON integer, a numpy integer) as its decimal
    digits, so `123` and `"123"` are the same sensor. Booleans, floats and anything else are not ids.
    """
    if isinstance(sensor_id, str):
        text = sensor_id
    elif isinstance(sensor_id, Integral) and not isinstance(sensor_id, (bool, np.bool_)):
        try:
            text = str(int(sensor_id))
        except ValueError:  # more digits than Python converts to text (sys.get_int_max_str_digits)
            return None
    else:
        return None
    return text if valid_sensor_id(text) else None


def coerce_timestamp(ts: object) -> float | None:
    """Seconds since the epoch by the one timestamp rule (`detector.readings.timestamps`); None if unusable."""
    seconds = to_seconds(ts)
    return seconds if math.isfinite(seconds) else None


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
