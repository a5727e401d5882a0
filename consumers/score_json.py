"""Per-reading score records as JSON, written a column at a time.

The bytes are exactly `orjson.dumps` of the record's dict (tests/test_score_json.py checks them against it):
each numeric column of the batch is written by one `orjson.dumps` of its float64 (or bool) array, whose
elements orjson writes as it writes the same Python floats (shortest round-trip repr, NaN and ±inf as null),
and split at the commas (a number has none); a record is then one bytes formatting of its fields. The sensor
id's JSON and key are kept per sensor (`SensorText`), for the sensors seen recently.
"""

from __future__ import annotations

import numpy as np
import orjson

OPT = orjson.OPT_SERIALIZE_NUMPY
FIELDS = (b'{"sensor_id":%b,"ts":%b,"score":%b,"surprise":%b,"anomalous":%b,"alerting":%b,'
          b'"expected":[%b],"values":[%b],"model":')


class SensorText:
    """Each sensor id's JSON string and its UTF-8 key, for up to `limit` sensors (then forgotten and begun again)."""

    def __init__(self, limit: int = 1_000_000) -> None:
        self.limit = limit
        self._text: dict[str, tuple[bytes, bytes]] = {}

    def of(self, sensors: list[str]) -> tuple[list[bytes], list[bytes]]:
        """(JSON, key) of each sensor."""
        text = self._text
        if len(text) > self.limit:
            text.clear()
        out = []
        for s in sensors:
            t = text.get(s)
            if t is None:
                t = text[s] = (orjson.dumps(s), s.encode())
            out.append(t)
        if not out:
            return [], []
        json_ids, keys = zip(*out)
        return list(json_ids), list(keys)


def numbers(column: np.ndarray) -> list[bytes]:
    """The JSON of each element of a 1-D float, integer or bool array, as `orjson.dumps` writes its `tolist()`."""
    if column.size == 0:
        return []
    kind = np.bool_ if column.dtype == np.bool_ else np.int64 if column.dtype.kind in "iu" else np.float64
    return orjson.dumps(np.ascontiguousarray(column, dtype=kind), option=OPT)[1:-1].split(b",")


def rows(block: np.ndarray) -> list[bytes]:
    """The JSON of each row of a 2-D float array, without its brackets (`1.5,2.0`)."""
    if block.shape[0] == 0:
        return []
    text = orjson.dumps(np.ascontiguousarray(block, dtype=np.float64), option=OPT)
    return text[2:-2].split(b"],[")


def records(json_ids: list[bytes], ts: np.ndarray, score: np.ndarray, surprise: np.ndarray, anomalous: np.ndarray,
            alerting: np.ndarray, expected: np.ndarray, seen: np.ndarray, model_id: str, weights_version: int,
            delay: int) -> list[bytes]:
    """The score records' JSON, byte for byte `orjson.dumps({"sensor_id", "ts", "score", "surprise", "anomalous",
    "alerting", "expected", "values", "model", "weights_version"[, "delay"]})` with the channels as lists."""
    tail = orjson.dumps(model_id) + b',"weights_version":' + orjson.dumps(weights_version)
    if delay:
        tail += b',"delay":' + orjson.dumps(delay)
    template = FIELDS + tail.replace(b"%", b"%%") + b"}"
    columns = zip(json_ids, numbers(ts), numbers(score), numbers(surprise), numbers(anomalous), numbers(alerting),
                  rows(expected), rows(seen))
    return [template % fields for fields in columns]
