"""Kafka messages (key, value bytes) to the engine's arrays, and why a message cannot be scored.

Accepted values (JSON, decoded with orjson): one reading per message,

    {"sensor_id": "pump-7", "ts": 1700000000.5, "value": 3.2}
    {"sensor_id": "pump-7", "ts": 1700000000500, "values": [3.2, 41.0]}
    {"ts": "2023-11-14T22:13:20Z", "values": {"temp": 41.0, "flow": 3.2}}

or a batch of readings per message, either an array of reading objects or one
sensor's readings under `readings` (a reading's own `sensor_id` wins over the
envelope's, which wins over the key):

    [{"sensor_id": "pump-7", "ts": 1700000000, "value": 3.2}, {"sensor_id": "fan-2", ...}]
    {"sensor_id": "pump-7", "readings": [{"ts": 1700000000, "value": 3.2}, {"ts": 1700000001, "value": 3.3}]}

or one sensor's readings as columns, the cheapest form to decode (`ts` is an array, and `value`
an array, `values` an array of rows or an object of arrays by channel name):

    {"sensor_id": "pump-7", "ts": [1700000000, 1700000001], "value": [3.2, 3.3]}
    {"sensor_id": "pump-7", "ts": [1700000000, 1700000001], "values": {"temp": [41.0, 41.2], "flow": [3.2, 3.3]}}

- sensor id: the `sensor_id` field, else the message key (UTF-8);
- ts: the one timestamp rule of `detector.readings.timestamps`: an epoch number in seconds,
  milliseconds, microseconds or nanoseconds (read from its size), or an ISO-8601 string
  (naive = UTC), exactly as the Python API and files read it;
- `value` (one channel) or `values`: a list in channel order, or an object by
  channel name; `"value": null` is `not_numeric` (there, but not a number), a reading
  without either field `missing_field`. Channel names belong to a sensor (consumers/channels.py): a
  configured `channel_names` names every sensor's channels; without it a sensor takes the sorted keys of
  its own first object, and its later objects with another key set are `wrong_channels` (its own, never
  another sensor's). The channel count is the model's, or learnt from the first decodable reading.

Decoding never raises: every reading gets a row, either for the engine or with a
`DeadLetterReason` and a human-readable detail. A message that cannot be read at all
(not JSON, too large, empty or over-long batch) is one dead row; a bad reading in a
batch is dead on its own, its siblings are scored.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from enum import StrEnum
from numbers import Real

import numpy as np
import orjson

from consumers.channels import ChannelNames, valid_channel_name
from consumers.singles import BAD_TS_DETAIL, singles
from detector.readings.coerce import MAX_ABS_VALUE, coerce_sensor_id, coerce_values
from detector.readings.reasons import SCORED, RejectReason
from detector.readings.timestamps import ahead_of_clock, epoch_numbers, to_seconds

MAX_CHANNELS = 1024
MAX_READINGS_PER_MESSAGE = 4_000
"""Most readings of a batched message (`max_readings_per_message`): below the 5,000 or so of the most compact
columnar readings (a 10-digit ts and a one-digit value: 13 bytes) that fit in the default 65,536 bytes, so the
limit is reached before the size limit and says what is wrong."""
_LONG_INTEGER_ID = re.compile(rb'"sensor_id"\s*:\s*-?[0-9]{20}')


DeadLetterReason = StrEnum("DeadLetterReason", {r.name: r.label for r in RejectReason}, module=__name__)
"""Why a message (or a reading of a batch) went to the dead-letter topic: the `reason` header.

The labels of `detector.readings.reasons.RejectReason`, which defines every reason once; `DeadLetterReason[r.name]`
is the dead-letter reason of the engine's reason `r`."""


@dataclass
class Decoded:
    """One batch of messages as rows, one per reading, in message order (and reading order within a message).

    sensor_ids/ts/values/status: the engine's inputs (status: 0 or a RejectReason found while decoding);
    rows whose `dead[i]` is set never reach the engine.
    dead: (reason, detail) of readings rejected before the engine, else None.
    details: a detail for rows rejected with a RejectReason while decoding.
    message: the index of the row's message in the decoded list.
    index: the reading's position in its batched message; -1 for a one-reading message, or a message
        dead-lettered as a whole. Its dead letter and outputs say so (`source_index`).
    items: the reading's parsed JSON for batched rows (a dead letter carries that reading, not the batch);
        None for the rows of a columnar batch, whose reading is rebuilt from `columns` when needed.
    columns: the parsed JSON of each columnar batch decoded in one go, by message index.
    channel_set: the id (`ChannelNames`) of the name set the row's sensor goes by after this reading; 0 = none.
    bindings: the sensors that took a name set in this batch, and its id; `ChannelNames.bind` keeps them once
        the engine holds the sensors.
    """

    sensor_ids: list[str]
    ts: np.ndarray
    values: np.ndarray
    status: np.ndarray
    dead: list[tuple[DeadLetterReason, str] | None]
    details: list[str | None]
    message: np.ndarray
    index: np.ndarray
    items: list[object]
    channel_set: np.ndarray
    columns: dict[int, dict] = field(default_factory=dict)
    bindings: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.sensor_ids)

    def dead_letter_value(self, row: int, original: bytes | None) -> bytes | None:
        """The bytes a dead letter of `row` carries: the message's own, or the batched reading's JSON."""
        if self.index[row] < 0:
            return original
        if self.items[row] is None and int(self.message[row]) in self.columns:
            return orjson.dumps(_column_reading(self.columns[int(self.message[row])], int(self.index[row])))
        try:  # the stdlib writes NaN/Infinity back as they came, where orjson would write null
            return json.dumps(self.items[row], separators=(",", ":")).encode()
        except (ValueError, TypeError, RecursionError):  # too deeply nested to write back: keep the whole message
            return original

    @cached_property
    def engine_rows(self) -> np.ndarray:
        """Indices of the rows that go to the engine (scored or rejected there); read once the batch is decoded."""
        return np.array([i for i, d in enumerate(self.dead) if d is None], dtype=np.int64)


class Decoder:
    """Decodes batches; remembers the channel count once known (from config or first sight), and in `names`
    the channel names of each sensor (configured for all, or each sensor's own)."""

    def __init__(
        self,
        channels: int | None = None,
        channel_names: Sequence[str] | None = None,
        max_message_bytes: int = 65_536,
        max_readings: int = MAX_READINGS_PER_MESSAGE,
        max_key_bytes: int = 1024,
        max_channels: int = MAX_CHANNELS,
        sensor_id_pattern: str | None = None,
        max_future_seconds: float | None = None,
    ) -> None:
        if channel_names is not None:
            channel_names = list(channel_names)
            if channels is not None and channels != len(channel_names):
                raise ValueError(f"{len(channel_names)} channel names for {channels} channels")
            channels = len(channel_names)
        self.channels = channels
        self.names = ChannelNames(channel_names)
        self._sets: dict[str, int] = {}  # during a decode: set ids of its sensors with objects (`_order`)
        self.max_message_bytes = max_message_bytes
        self.max_readings = max_readings
        # hostile-input limits (docs/security.md): checked before anything is parsed or learnt
        self.max_key_bytes = max_key_bytes
        self.max_channels = max_channels
        self.sensor_id_pattern = re.compile(sensor_id_pattern) if sensor_id_pattern is not None else None
        self.max_future_seconds = max_future_seconds

    def decode(self, messages: Sequence[tuple[bytes | None, bytes | None]]) -> Decoded:
        """Decode (key, value) pairs into one row per reading; never raises."""
        fast = singles(self, messages, Decoded)  # a batch of plain one-reading messages, in one pass (consumers/singles.py)
        if fast is not None:
            return self._finish(fast)
        # in message order: a row (message, index in its batch or -1, parsed JSON of a batched reading,
        # (sensor id, ts, raw values) or why it is dead), or a columnar batch decoded in one go
        pieces: list[tuple[int, int, object, tuple] | _Block] = []
        for m, (key, value) in enumerate(messages):
            if key is not None and len(key) > self.max_key_bytes:
                pieces.append((m, -1, None, (
                    DeadLetterReason.TOO_LARGE, f"key of {len(key)} bytes > max_key_bytes {self.max_key_bytes}")))
                continue
            try:
                doc = self._load(value)
                if isinstance(doc, tuple):
                    pieces.append((m, -1, None, doc))
                    continue
                batch = self._batch(doc, key, m, pieces)
                if batch is None:
                    pieces.append((m, -1, None, self._reading(doc, None, key)))
                    continue
            except Exception as exc:  # noqa: BLE001 - decoding must never take the service down
                pieces.append((m, -1, None, (
                    DeadLetterReason.MALFORMED_JSON, f"undecodable: {type(exc).__name__}: {exc}"[:200])))
                continue
            if isinstance(batch, _Block):
                pieces.append(batch)
                continue
            if isinstance(batch[0], DeadLetterReason):
                pieces.append((m, -1, None, batch))
                continue
            items, envelope_id = batch
            for j, item in enumerate(items):
                try:
                    parsed = self._reading(item, envelope_id, key, where=f"reading {j}: ")
                except Exception as exc:  # noqa: BLE001 - one bad reading must not take down its siblings
                    parsed = (DeadLetterReason.MALFORMED_JSON, f"undecodable: {type(exc).__name__}: {exc}"[:200])
                pieces.append((m, j, item, parsed))
        if self.channels is None:
            for piece in pieces:
                if not isinstance(piece, _Block) and not isinstance(piece[3][0], DeadLetterReason):
                    self._learn_channels(piece[3][2])
                    if self.channels is not None:
                        break
        channels = self.channels or 1
        n = sum(p.size if isinstance(p, _Block) else 1 for p in pieces)
        out = Decoded(
            sensor_ids=[""] * n,
            ts=np.full(n, np.nan),
            values=np.full((n, channels), np.nan),
            status=np.zeros(n, dtype=np.int8),
            dead=[None] * n,
            details=[None] * n,
            message=np.empty(n, dtype=np.int64),
            index=np.empty(n, dtype=np.int64),
            items=[None] * n,
            channel_set=np.full(n, -1, dtype=np.int32),  # -1: the sensor's binding from before this batch
        )
        self._sets = {}  # from before this batch, or taken in it
        i = 0
        for piece in pieces:
            if isinstance(piece, _Block):
                rows = slice(i, i + piece.size)
                out.sensor_ids[rows] = [piece.sensor_id] * piece.size
                out.ts[rows], out.values[rows] = piece.ts, piece.values
                out.message[rows], out.index[rows] = piece.message, np.arange(piece.size)
                out.columns[piece.message] = piece.doc
                self._fill_block(out, rows, piece)
                i += piece.size
                continue
            out.message[i], out.index[i], out.items[i] = piece[0], piece[1], piece[2]
            self._fill(out, i, piece[3])
            i += 1
        return self._finish(out)

    def _finish(self, out: Decoded) -> Decoded:
        """The rows too far ahead of the clock, and the channel sets of rows whose sensor's is from before the batch."""
        self._check_future(out)
        earlier = np.flatnonzero(out.channel_set < 0)
        if self.names.any_bound:
            out.channel_set[earlier] = self.names.bound([out.sensor_ids[k] for k in earlier.tolist()])
        else:
            out.channel_set[earlier] = 0
        out.bindings = {s: set_id for s, set_id in self._sets.items() if set_id}
        return out

    def _check_future(self, out: Decoded) -> None:
        """Rows stamped more than `max_future_seconds` ahead of the clock are bad_timestamp, whatever their values
        (the engine's event-time clock is its largest ts: one far-future reading would age out every sensor).
        The check is the engine's own (`ahead_of_clock`); here it also says why."""
        ahead = np.flatnonzero(ahead_of_clock(out.ts, self.max_future_seconds))
        for i in ahead.tolist():
            out.status[i] = RejectReason.BAD_TIMESTAMP
            out.details[i] = f"ts {out.ts[i]:.0f} is more than max_future_seconds {self.max_future_seconds:g} ahead of now"

    def _fill(self, out: Decoded, i: int, item: tuple) -> None:
        """Row i of `out` from one parsed reading: (sensor id, ts, raw values), or why it is dead."""
        if isinstance(item[0], DeadLetterReason):
            out.dead[i] = (item[0], str(item[1]))
            out.channel_set[i] = 0
            return
        sensor_id, ts, raw = item
        out.sensor_ids[i] = sensor_id
        if sensor_id == "":
            out.channel_set[i] = 0
            out.status[i] = RejectReason.BAD_SENSOR_ID
            out.details[i] = "sensor id is not a printable string or integer of 1-256 characters"
            return
        if not math.isfinite(ts):
            out.status[i] = RejectReason.BAD_TIMESTAMP
            out.details[i] = BAD_TS_DETAIL
            return
        out.ts[i] = ts  # a ts too far ahead of the clock is found for the whole batch at once (`_check_future`)
        if self.channels is None:  # no message of the batch could say how many channels there are
            out.status[i] = RejectReason.NOT_NUMERIC
            out.details[i] = "values are not a number, a list of numbers or an object of numbers"
            return
        row, reason, detail = self._row(raw, sensor_id)
        if reason is not None:
            out.status[i] = reason
            out.details[i] = detail
        else:
            out.values[i] = row
        out.channel_set[i] = self._sets.get(sensor_id, -1)

    def _fill_block(self, out: Decoded, rows: slice, block: _Block) -> None:
        """The channel sets of a columnar batch's rows: all wrong_channels when its names are not its sensor's."""
        if block.names is not None:
            order, detail = self._order(block.sensor_id, block.names)
            if order is None:
                out.status[rows] = RejectReason.WRONG_CHANNELS
                out.details[rows] = [detail] * block.size
                out.values[rows] = np.nan
        out.channel_set[rows] = self._sets.get(block.sensor_id, -1)

    # --- one message ----------------------------------------------------------------
    def _load(self, value: bytes | None) -> object | tuple[DeadLetterReason, str]:
        """The message's JSON, or why the whole message is dead."""
        if value is None:
            return DeadLetterReason.NOT_AN_OBJECT, "null value (tombstone)"
        if len(value) > self.max_message_bytes:
            return DeadLetterReason.TOO_LARGE, f"{len(value)} bytes > max_message_bytes {self.max_message_bytes}"
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            doc = _lenient_json(value)
            if doc is None:
                return DeadLetterReason.MALFORMED_JSON, str(exc)[:200]
            return doc
        if _LONG_INTEGER_ID.search(value) is not None:
            # orjson reads an integer beyond 64 bits as a float, and an integer id of 20+ digits would lose its
            # digits (and be refused: a float is no id); the stdlib parser keeps integers exact
            exact = _lenient_json(value)
            return doc if exact is None else exact
        return doc

    def _batch(
        self, doc: object, key: bytes | None, message: int, earlier: list
    ) -> _Block | tuple[list, object] | tuple[DeadLetterReason, str] | None:
        """A batched message: a columnar block, or (readings, envelope sensor id); None for one reading; or why dead.

        `earlier`: the pieces decoded before this message, which a block's channels must not contradict.
        """
        if isinstance(doc, dict):
            if isinstance(doc.get("ts"), list):
                return self._columns(doc, key, message, earlier)
            if doc.get("readings") is None:
                return None
            items, envelope_id = doc["readings"], doc.get("sensor_id")
            if not isinstance(items, list):
                return DeadLetterReason.NOT_AN_OBJECT, f"readings is a JSON {type(items).__name__}, expected an array"
        elif isinstance(doc, list):
            items, envelope_id = doc, None
        else:
            return DeadLetterReason.NOT_AN_OBJECT, f"JSON {type(doc).__name__}, expected an object or an array"
        return self._checked_size(items) or (items, envelope_id)

    def _checked_size(self, items: list) -> tuple[DeadLetterReason, str] | None:
        if not items:
            return DeadLetterReason.MISSING_FIELD, "a batch without readings"
        if len(items) > self.max_readings:
            return DeadLetterReason.TOO_MANY_READINGS, (
                f"{len(items)} readings > max_readings_per_message {self.max_readings}"
            )
        return None

    def _columns(
        self, doc: dict, key: bytes | None, message: int, earlier: list
    ) -> _Block | tuple[list, object] | tuple[DeadLetterReason, str]:
        """A columnar batch: decoded in one go when every value is a plain finite number, else as reading objects."""
        ts = doc["ts"]
        dead = self._checked_size(ts)
        if dead is not None:
            return dead
        field_name = "values" if doc.get("values") is not None else "value"
        raw = doc.get(field_name)
        if raw is None:
            return DeadLetterReason.MISSING_FIELD, "a columnar batch (ts is an array) without value or values"
        columns = list(raw.values()) if isinstance(raw, dict) and field_name == "values" else [raw]
        for column in columns:
            if not isinstance(column, list):
                return DeadLetterReason.NOT_AN_OBJECT, (
                    f"{field_name} holds a JSON {type(column).__name__}; with ts an array, expected arrays"
                )
            if len(column) != len(ts):
                return DeadLetterReason.MISSING_FIELD, (
                    f"ts has {len(ts)} entries and {field_name} {len(column)}: one value per ts expected"
                )
        block = self._block(doc, key, message, field_name, raw, earlier)
        if block is not None:
            return block
        return [_column_reading(doc, j) for j in range(len(ts))], doc.get("sensor_id")

    def _block(
        self, doc: dict, key: bytes | None, message: int, field_name: str, raw: object, earlier: list
    ) -> _Block | None:
        """The columnar batch as arrays, or None when any part needs the reading-by-reading path."""
        raw_id = doc.get("sensor_id")
        if raw_id is None and key is not None:
            try:
                raw_id = key.decode("utf-8")
            except UnicodeDecodeError:
                return None
        sensor_id = coerce_sensor_id(raw_id)
        if sensor_id is None or (self.sensor_id_pattern is not None and not self.sensor_id_pattern.fullmatch(sensor_id)):
            return None
        names: list[str] | None = None
        if isinstance(raw, dict):
            names = sorted(raw)
            if not (1 <= len(names) <= self.max_channels and all(map(valid_channel_name, names))):
                return None
            configured = self.names.configured
            if configured is not None and names != sorted(configured):
                return None
            if configured is not None:
                columns, names = [raw[name] for name in configured], None  # nothing to check per sensor
            else:
                columns = [raw[name] for name in names]  # sorted, as the sensor's set: checked in `_fill_block`
        elif field_name == "value":
            columns = [raw]
        else:
            columns = None  # rows
        if self.channels is None:
            if any(not isinstance(p, _Block) and not isinstance(p[3][0], DeadLetterReason) for p in earlier):
                return None  # an earlier reading of this poll decides the channels
            width = len(columns) if columns is not None else (len(raw[0]) if isinstance(raw[0], list) else 0)
            if not 1 <= width <= self.max_channels:
                return None
        elif columns is not None and len(columns) != self.channels:
            return None
        ts = _plain_array(doc["ts"])
        if ts is None:
            return None
        if columns is not None:
            values = np.empty((len(ts), len(columns)))
            for c, column in enumerate(columns):
                col = _plain_array(column)
                if col is None:
                    return None
                values[:, c] = col
        else:
            if not all(type(row) is list for row in raw):
                return None
            values = _plain_array([v for row in raw for v in row])
            if values is None or values.size % len(ts) or any(len(row) != values.size // len(ts) for row in raw):
                return None
            values = values.reshape(len(ts), -1)
        ts = epoch_numbers(ts)
        if not (np.isfinite(ts).all() and np.isfinite(values).all() and (np.abs(values) <= MAX_ABS_VALUE).all()):
            return None
        if ahead_of_clock(ts, self.max_future_seconds).any():
            return None
        if self.channels is None:
            self.channels = values.shape[1]
        elif values.shape[1] != self.channels:
            return None
        return _Block(message, sensor_id, ts, values, doc, names)

    def _reading(
        self, doc: object, envelope_id: object, key: bytes | None, where: str = ""
    ) -> tuple[str, float, object] | tuple[DeadLetterReason, str]:
        """One reading object: (sensor id, ts, raw values), or why it is dead. `where` prefixes the details."""
        if not isinstance(doc, dict):
            return DeadLetterReason.NOT_AN_OBJECT, f"{where}JSON {type(doc).__name__}, expected an object"
        # sensor id: the field, else the batch's, else the key
        raw_id = doc.get("sensor_id")
        if raw_id is None:
            raw_id = envelope_id
        if raw_id is None:
            if key is None:
                return DeadLetterReason.MISSING_FIELD, f"{where}no sensor_id field and no message key"
            try:
                raw_id = key.decode("utf-8")
            except UnicodeDecodeError:
                raw_id = None
        sensor_id = coerce_sensor_id(raw_id) or ""
        if sensor_id and self.sensor_id_pattern is not None and not self.sensor_id_pattern.fullmatch(sensor_id):
            return DeadLetterReason.BAD_SENSOR_ID, (
                f"{where}sensor id {_short(sensor_id)} does not match sensor_id_pattern {self.sensor_id_pattern.pattern}"
            )
        if "ts" not in doc or doc["ts"] is None:
            return DeadLetterReason.MISSING_FIELD, f"{where}no ts field"
        if doc.get("values") is not None:
            raw = doc["values"]
        elif doc.get("value") is not None:
            raw = doc["value"]
        elif "value" not in doc and "values" not in doc:
            return DeadLetterReason.MISSING_FIELD, f"{where}no value or values field"
        else:
            raw = None  # `"value": null`: there, but not a number (`hiddenstate produce` writes bad cells so)
        return sensor_id, to_seconds(doc["ts"]), raw

    def _learn_channels(self, raw: object) -> None:
        if isinstance(raw, dict):
            if 1 <= len(raw) <= self.max_channels and all(map(valid_channel_name, raw)):
                self.channels = len(raw)
        elif isinstance(raw, list):
            if 1 <= len(raw) <= self.max_channels:
                self.channels = len(raw)
        elif isinstance(raw, Real) and not isinstance(raw, bool):
            self.channels = 1

    def _row(self, raw: object, sensor_id: str) -> tuple[object, RejectReason | None, str | None]:
        channels = self.channels
        assert channels is not None
        if channels == 1 and type(raw) in _PLAIN_NUMBERS and abs(raw) <= MAX_ABS_VALUE:
            return raw, None, None  # the common case, without numpy (NaN, inf and the rest take the full path)
        if isinstance(raw, dict):
            order, detail = self._order(sensor_id, raw)
            if order is None:
                return None, RejectReason.WRONG_CHANNELS, detail
            raw = [raw[name] for name in order]
        row, reason = coerce_values(raw, channels)
        if reason is None:
            return row, None, None
        if reason is RejectReason.WRONG_CHANNELS:
            return None, reason, f"{len(raw) if isinstance(raw, list) else 1} values for {channels} channels"
        if reason is RejectReason.NOT_NUMERIC:
            return None, reason, "value is null" if raw is None else f"values {_short(raw)} are not all numbers"
        return None, reason, f"values {_short(raw)} are not all finite"

    def _order(self, sensor_id: str, keys: Collection[object]) -> tuple[Sequence[str] | None, str]:
        """The channel order of an object's keys for this sensor, or why they are wrong_channels.

        The configured `channel_names`, else the sensor's own name set; a sensor without one takes the sorted
        keys here, when they are channel names, as many as the channels (the batch keeps it in `_sets`).
        """
        expected: Sequence[str] | None = self.names.configured
        whose = "the configured channel_names"
        if expected is None:
            set_id = self._sets.get(sensor_id)
            if set_id is None:
                set_id = self._sets[sensor_id] = int(self.names.bound([sensor_id])[0])
            if not set_id:
                if len(keys) != self.channels:
                    return None, f"{len(keys)} values for {self.channels} channels"
                if not all(map(valid_channel_name, keys)):
                    return None, f"keys {_short(list(keys)[:8])} are not all channel names (printable, 1-256 characters)"
                set_id = self.names.id_of(keys)  # type: ignore[arg-type]  # all str: checked above
                if set_id is None:
                    return None, (f"keys {sorted(keys)[:8]} would be channel-name set {self.names.max_sets + 1}: "
                                  f"more than this process takes (set channel_names)")
                self._sets[sensor_id] = set_id
            expected = self.names.sets[set_id]
            whose = f"the channels sensor {_short(sensor_id)} was first seen with"
        if len(keys) != len(expected) or any(name not in keys for name in expected):
            return None, f"keys {sorted(map(str, keys))[:8]} differ from {whose}: {list(expected)[:8]}"
        return expected, ""


_PLAIN_NUMBERS = (float, int)  # exact types: bool is an int subclass, and not a number here
_PLAIN_TYPES = frozenset(_PLAIN_NUMBERS)


@dataclass
class _Block:
    """One columnar batch decoded in one go: `ts` (n,) and `values` (n, channels) of one sensor."""

    message: int
    sensor_id: str
    ts: np.ndarray
    values: np.ndarray
    doc: dict
    names: list[str] | None  # the sorted names of `values`' columns, for its sensor's set; None: positional or
    # in the configured channel_names' order

    @property
    def size(self) -> int:
        return len(self.ts)


def _plain_array(items: list) -> np.ndarray | None:
    """A JSON array of plain numbers (no bools, no nulls, within float range) as float64, else None."""
    if not _PLAIN_TYPES.issuperset(map(type, items)):
        return None
    try:
        return np.array(items, dtype=np.float64)
    except OverflowError:
        return None


def _column_reading(doc: dict, j: int) -> dict:
    """Reading j of a columnar batch as a reading object, as an envelope would hold it (its dead letter)."""
    reading: dict[str, object] = {"ts": doc["ts"][j]}
    if doc.get("values") is not None:
        raw = doc["values"]
        reading["values"] = {name: column[j] for name, column in raw.items()} if isinstance(raw, dict) else raw[j]
    else:
        reading["value"] = doc["value"][j]
    return reading


def _lenient_json(value: bytes) -> object | None:
    """The stdlib parser accepts NaN/Infinity (as Python's json.dumps writes them), so they become not_finite."""
    try:
        return json.loads(value)
    except (ValueError, RecursionError):
        return None


def _short(raw: object) -> str:
    text = repr(raw)
    return text if len(text) <= 80 else text[:77] + "..."


def reason_of(status_code: int) -> DeadLetterReason | None:
    """The dead-letter reason for an engine status code (None if scored)."""
    return None if status_code == SCORED else DeadLetterReason[RejectReason(status_code).name]
