"""One-reading messages decoded in one pass: the common case of `Decoder.decode`, without its per-reading branches.

A batch qualifies when every message is a plain one-reading object of a univariate stream:

    {"sensor_id": "pump-7", "ts": 1700000000.5, "value": 3.2}       (sensor_id a string or an integer, or
                                                                     absent with a UTF-8 key; extra fields ignored)

with `ts` and `value` JSON numbers (`value` within ±MAX_ABS_VALUE), no `values` and no `readings`, a key and
a value within their size limits, the id valid (and matching `sensor_id_pattern` when set), and the stream of
one channel (configured, or learnt here from these readings). Such messages decode to exactly what the general
path makes of them (tests/test_decode_singles.py checks both on the same batches): the timestamps go through
`epoch_numbers`, the same unit rule as `to_seconds`, for the whole batch at once. Any other message makes
`singles` return None at once, and the batch is decoded by the general path.
"""

from __future__ import annotations

from collections.abc import Sequence
import numpy as np
import orjson

from detector.readings.coerce import MAX_ABS_VALUE, MAX_SENSOR_ID_LENGTH
from detector.readings.reasons import RejectReason
from detector.readings.timestamps import epoch_numbers

BAD_TS_DETAIL = "ts is not an epoch number or ISO-8601 string of an instant from 1970 to 5138"

_NUMBERS = (float, int)  # exact types: bool is an int subclass, and not a number here


def singles(decoder, messages: Sequence[tuple[bytes | None, bytes | None]], decoded: type):  # noqa: ANN001, ANN201
    """The rows of a batch of plain one-reading messages as a `decoded` (consumers.decode.Decoded, passed in: that
    module imports this one), before `Decoder._finish`; else None (nothing changed)."""
    if decoder.channels not in (None, 1) or not messages:
        return None
    max_key, max_bytes, pattern = decoder.max_key_bytes, decoder.max_message_bytes, decoder.sensor_id_pattern
    loads, numbers = orjson.loads, _NUMBERS
    ids: list[str] = []
    stamps: list[float | int] = []
    values: list[float | int] = []
    for key, value in messages:
        if value is None or len(value) > max_bytes or (key is not None and len(key) > max_key):
            return None
        try:
            doc = loads(value)
        except orjson.JSONDecodeError:
            return None
        if type(doc) is not dict:
            return None
        ts, v, sid = doc.get("ts"), doc.get("value"), doc.get("sensor_id")
        if type(ts) not in numbers or type(v) not in numbers or not -MAX_ABS_VALUE <= v <= MAX_ABS_VALUE:
            return None
        if doc.get("values") is not None or doc.get("readings") is not None:
            return None
        if type(sid) is not str:
            if type(sid) is int:
                sid = str(sid)  # orjson reads an integer beyond 64 bits as a float, which is no id: not here
            elif sid is None and key is not None:
                try:
                    sid = key.decode("utf-8")
                except UnicodeDecodeError:
                    return None
            else:
                return None
        if not (0 < len(sid) <= MAX_SENSOR_ID_LENGTH and sid.isprintable()):
            return None
        if pattern is not None and not pattern.fullmatch(sid):
            return None
        ids.append(sid)
        stamps.append(ts)
        values.append(v)
    try:
        raw = np.fromiter(map(float, stamps), dtype=np.float64, count=len(stamps))
    except OverflowError:  # an integer ts beyond float range: the general path says why
        return None
    n = len(ids)
    ts = epoch_numbers(raw)
    bad = np.isnan(ts)  # as `Decoder._fill` says of a ts that names no usable instant
    out = decoded(
        sensor_ids=ids, ts=ts, values=np.array(values, dtype=np.float64).reshape(n, 1),
        status=np.where(bad, np.int8(RejectReason.BAD_TIMESTAMP), np.int8(0)).astype(np.int8),
        dead=[None] * n, details=[None] * n, message=np.arange(n, dtype=np.int64),
        index=np.full(n, -1, dtype=np.int64), items=[None] * n,
        channel_set=np.full(n, -1, dtype=np.int32),  # the sensors' bindings from before this batch
    )
    out.values[bad] = np.nan
    for i in np.flatnonzero(bad).tolist():
        out.details[i] = BAD_TS_DETAIL
    out.__dict__["engine_rows"] = np.arange(n, dtype=np.int64)  # every row (its cached_property, already known)
    decoder._sets = {}  # no sensor takes channel names from a plain number
    if decoder.channels is None:
        decoder.channels = 1  # learnt from the first decodable reading, as the general path does
    return out
