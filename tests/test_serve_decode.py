"""Decoding Kafka messages for the service: formats, timestamps, every dead-letter reason; never raises."""

from __future__ import annotations

import json
import math

import numpy as np
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from consumers.decode import DeadLetterReason, Decoder
from detector.readings.reasons import RejectReason


def one(decoder: Decoder, value: bytes | None, key: bytes | None = b"k1"):
    out = decoder.decode([(key, value)])
    return out, out.dead[0], out.status[0]


def names_of(decoder: Decoder, out, row: int) -> list[str] | None:
    """The channel names of row `row`'s sensor after that reading (None: none)."""
    return decoder.names.names(int(out.channel_set[row]))


def reason(decoder: Decoder, value: bytes | None, key: bytes | None = b"k1") -> str | None:
    out, dead, status = one(decoder, value, key)
    if dead is not None:
        return dead[0].value
    return None if status == 0 else RejectReason(int(status)).label


def test_value_and_key_fallback():
    d = Decoder()
    out, dead, status = one(d, b'{"sensor_id": "pump-7", "ts": 1700000000.5, "value": 3.25}')
    assert dead is None and status == 0
    assert out.sensor_ids == ["pump-7"] and out.ts[0] == 1700000000.5 and out.values[0, 0] == 3.25
    assert d.channels == 1
    out, dead, status = one(d, b'{"ts": 1700000001, "value": 1}', key=b"from-key")
    assert out.sensor_ids == ["from-key"] and status == 0
    out, dead, status = one(d, b'{"sensor_id": 42, "ts": 1700000001, "value": 1}')
    assert out.sensor_ids == ["42"]


def test_timestamps_seconds_millis_iso():
    d = Decoder(channels=1)
    out = d.decode([
        (b"a", b'{"ts": 1700000000, "value": 1}'),
        (b"a", b'{"ts": 1700000000500, "value": 1}'),
        (b"a", b'{"ts": "2023-11-14T22:13:20Z", "value": 1}'),
        (b"a", b'{"ts": "2023-11-14T22:13:20", "value": 1}'),
        (b"a", b'{"ts": "yesterday", "value": 1}'),
        (b"a", b'{"ts": true, "value": 1}'),
    ])
    assert out.ts[0] == 1700000000.0
    assert out.ts[1] == 1700000000.5
    assert out.ts[2] == out.ts[3] == 1700000000.0
    assert list(out.status[4:]) == [RejectReason.BAD_TIMESTAMP] * 2


def test_values_list_and_object():
    d = Decoder()
    out = d.decode([
        (b"a", b'{"ts": 1, "values": {"temp": 41.0, "flow": 3.5}}'),
        (b"a", b'{"ts": 2, "values": {"flow": 1.0, "temp": 2.0}}'),
        (b"a", b'{"ts": 3, "values": [7.0, 8.0]}'),
        (b"a", b'{"ts": 4, "values": {"flow": 1.0, "pressure": 2.0}}'),
        (b"a", b'{"ts": 5, "values": [1.0]}'),
    ])
    assert d.channels == 2 and [names_of(d, out, i) for i in range(5)] == [["flow", "temp"]] * 5
    assert out.values[0].tolist() == [3.5, 41.0]
    assert out.values[1].tolist() == [1.0, 2.0]
    assert out.values[2].tolist() == [7.0, 8.0]
    assert list(out.status) == [0, 0, 0, RejectReason.WRONG_CHANNELS, RejectReason.WRONG_CHANNELS]


def test_configured_channel_names_fix_the_order():
    d = Decoder(channel_names=["temp", "flow"])
    out = d.decode([(b"a", b'{"ts": 1, "values": {"flow": 3.5, "temp": 41.0}}')])
    assert out.values[0].tolist() == [41.0, 3.5]


def test_every_dead_letter_reason():
    d = Decoder(channels=1, max_message_bytes=1000)
    cases = {
        b"{not json": "malformed_json",
        b"\xff\xfe": "malformed_json",
        b"": "malformed_json",
        b"[1, 2]": "not_an_object",
        b'"text"': "not_an_object",
        b'{"sensor_id": "a", "value": 1}': "missing_field",
        b'{"sensor_id": "a", "ts": 1}': "missing_field",
        b'{"sensor_id": "a", "ts": 1, "value": "abc"}': "not_numeric",
        b'{"sensor_id": "a", "ts": 1, "value": true}': "not_numeric",
        b'{"sensor_id": "a", "ts": 1, "value": NaN}': "not_finite",
        b'{"sensor_id": "a", "ts": 1, "value": Infinity}': "not_finite",
        b'{"sensor_id": "a", "ts": 1, "value": 1e999}': "not_finite",
        b'{"sensor_id": "a", "ts": 1, "values": [1, 2]}': "wrong_channels",
        b'{"sensor_id": "a", "ts": "noon", "value": 1}': "bad_timestamp",
        b'{"sensor_id": [1], "ts": 1, "value": 1}': "bad_sensor_id",
        b'{"sensor_id": "", "ts": 1, "value": 1}': "bad_sensor_id",
        b'{"sensor_id": "' + b"x" * 300 + b'", "ts": 1, "value": 1}': "bad_sensor_id",
        b'{"sensor_id": "a", "ts": 1, "value": 1, "pad": "' + b"x" * 1000 + b'"}': "too_large",
        None: "not_an_object",
    }
    for value, expected in cases.items():
        assert reason(d, value) == expected, value
    assert reason(d, b'{"ts": 1, "value": 1}', key=None) == "missing_field"
    assert reason(d, b'{"ts": 1, "value": 1}', key=b"\xff") == "bad_sensor_id"
    assert {r.value for r in DeadLetterReason} >= {r.label for r in RejectReason}


def test_channels_unknown_and_no_valid_message():
    d = Decoder()
    out = d.decode([(b"a", b'{"ts": 1, "value": "x"}'), (b"a", b"nope")])
    assert d.channels is None
    assert out.status[0] == RejectReason.NOT_NUMERIC and out.dead[1][0] is DeadLetterReason.MALFORMED_JSON


def test_batch_rows_line_up():
    d = Decoder(channels=1)
    msgs = [(f"s{i}".encode(), orjson.dumps({"ts": i, "value": i * 1.5})) for i in range(5)]
    msgs.insert(2, (b"s9", b"garbage"))
    out = d.decode(msgs)
    assert out.engine_rows.tolist() == [0, 1, 3, 4, 5]
    assert out.sensor_ids[3] == "s2" and out.values[3, 0] == 3.0
    assert math.isnan(out.ts[2])


def test_batch_array_each_reading_on_its_own():
    """An array of readings: every reading is a row; a bad one is dead alone, with its own JSON."""
    d = Decoder(channels=1)
    value = (b'[{"sensor_id": "a", "ts": 1, "value": 1.5}, {"sensor_id": "b", "ts": 2, "value": "x"},'
             b' 7, {"ts": 3, "value": NaN}, {"sensor_id": "c", "ts": 4, "value": 2.5}]')
    out = d.decode([(b"k", b'{"sensor_id": "z", "ts": 9, "value": 9}'), (b"key", value)])
    assert len(out) == 6
    assert out.message.tolist() == [0, 1, 1, 1, 1, 1] and out.index.tolist() == [-1, 0, 1, 2, 3, 4]
    assert out.sensor_ids[1] == "a" and out.ts[1] == 1 and out.values[1, 0] == 1.5
    assert out.sensor_ids[4] == "key"  # no sensor_id: the message key
    assert out.status[2] == RejectReason.NOT_NUMERIC and out.details[2]
    assert out.dead[3] == (DeadLetterReason.NOT_AN_OBJECT, "reading 2: JSON int, expected an object")
    assert out.status[4] == RejectReason.NOT_FINITE
    assert out.status[5] == 0 and out.values[5, 0] == 2.5
    assert out.engine_rows.tolist() == [0, 1, 2, 4, 5]
    # a dead letter carries the reading, not the batch; a one-reading message keeps its bytes
    assert json.loads(out.dead_letter_value(2, value)) == {"sensor_id": "b", "ts": 2, "value": "x"}
    assert out.dead_letter_value(3, value) == b"7"
    assert out.dead_letter_value(4, value) == b'{"ts":3,"value":NaN}'
    assert out.dead_letter_value(0, b"orig") == b"orig"


def test_batch_envelope_of_one_sensor():
    d = Decoder()
    value = orjson.dumps({"sensor_id": "pump-7", "readings": [
        {"ts": 1, "values": {"t": 1.0, "f": 2.0}},
        {"ts": 2, "values": {"t": 3.0, "f": 4.0}},
        {"sensor_id": "fan-2", "ts": 2, "values": [5.0, 6.0]},  # its own id wins
        {"ts": 3},
    ]})
    out = d.decode([(b"key", value)])
    assert [names_of(d, out, i) for i in range(3)] == [["f", "t"], ["f", "t"], None]  # fan-2 has no names
    assert out.sensor_ids[:3] == ["pump-7", "pump-7", "fan-2"]
    assert out.values[:3].tolist() == [[2.0, 1.0], [4.0, 3.0], [5.0, 6.0]]
    assert out.dead[3] == (DeadLetterReason.MISSING_FIELD, "reading 3: no value or values field")
    # without an envelope id, the key
    out = d.decode([(b"key", b'{"readings": [{"ts": 1, "values": [1, 2]}]}')])
    assert out.sensor_ids == ["key"] and out.status[0] == 0


def test_batch_dead_as_a_whole():
    d = Decoder(channels=1, max_readings=3)
    four = orjson.dumps([{"sensor_id": "a", "ts": t, "value": 1.0} for t in range(4)])
    three = orjson.dumps([{"sensor_id": "a", "ts": t, "value": 1.0} for t in range(3)])
    cases = {
        four: "too_many_readings",
        b"[]": "missing_field",
        b'{"sensor_id": "a", "readings": []}': "missing_field",
        b'{"sensor_id": "a", "readings": {"ts": 1, "value": 2}}': "not_an_object",
        b"42": "not_an_object",
    }
    assert_dead_as_a_whole(d, cases)
    out = d.decode([(b"k", three)])
    assert len(out) == 3 and list(out.status) == [0, 0, 0] and not any(out.dead)


def assert_dead_as_a_whole(d: Decoder, cases: dict[bytes, str]) -> None:
    """Each message is one dead row with the reason given, and its dead letter is the message itself."""
    for value, why in cases.items():
        out = d.decode([(b"k", value)])
        assert len(out) == 1 and out.index[0] == -1 and out.dead[0][0].value == why, value
        assert out.dead_letter_value(0, value) == value


_json_docs = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=5),
    lambda c: st.lists(c, max_size=3)
    | st.dictionaries(st.sampled_from(["sensor_id", "ts", "value", "values", "readings", "x"]), c, max_size=4),
).map(lambda v: json.dumps(v).encode())  # stdlib: NaN, Infinity and huge integers included


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.none() | st.binary(max_size=20), st.none() | st.binary(max_size=200) | _json_docs),
                max_size=8))
def test_decode_never_raises(messages):
    d = Decoder()
    out = d.decode(messages)
    # every message has rows, in order: one, or one per reading of a batch
    assert sorted(set(out.message.tolist())) == list(range(len(messages)))
    assert np.all(np.diff(out.message) >= 0)
    for i in range(len(out)):
        assert (out.dead[i] is None) or isinstance(out.dead[i][0], DeadLetterReason)
        if out.dead[i] is None and out.status[i] == 0:
            assert out.sensor_ids[i] and np.all(np.isfinite(out.values[i])) and np.isfinite(out.ts[i])
        if out.dead[i] is not None or out.status[i] != 0:
            value = out.dead_letter_value(i, messages[out.message[i]][1])
            assert value is None or isinstance(value, bytes)


def test_hostile_input_limits():
    d = Decoder(channels=1, max_key_bytes=16, sensor_id_pattern=r"[a-z0-9-]+")
    ok = b'{"ts": 1, "value": 1}'
    assert reason(d, ok, key=b"k" * 16) is None
    _, dead, _ = one(d, ok, key=b"k" * 17)
    assert dead == (DeadLetterReason.TOO_LARGE, "key of 17 bytes > max_key_bytes 16")
    _, dead, _ = one(d, b'{"sensor_id": "Pump 7", "ts": 1, "value": 1}')
    assert dead[0] is DeadLetterReason.BAD_SENSOR_ID and "sensor_id_pattern" in dead[1]
    assert reason(d, ok, key=b"pump\xe2\x80\xae7") == "bad_sensor_id"  # the key is an id too (here with U+202E)
    assert reason(d, b'{"sensor_id": "pump-7", "ts": 1, "value": 1}') is None
    # an integer timestamp beyond float range (the stdlib parser reads any length)
    assert reason(d, b'{"sensor_id": "a", "ts": 1' + b"0" * 400 + b', "value": 1}') == "bad_timestamp"


def test_channel_count_and_names_are_learnt_only_within_limits():
    d = Decoder(max_channels=4)
    out = d.decode([(b"a", orjson.dumps({"ts": 1, "values": list(range(5))})),
                    (b"a", b'{"ts": 2, "values": {"\\ud800": 1, "b": 2}}'),  # a lone surrogate cannot be a name
                    (b"a", orjson.dumps({"ts": 3, "values": [1, 2, 3, 4]}))])
    assert d.channels == 4 and not out.channel_set.any() and not d.names.any_bound
    assert [RejectReason(int(s)).label if s else None for s in out.status] == ["wrong_channels", "wrong_channels", None]
    d = Decoder(max_channels=4)
    d.decode([(b"a", b'{"ts": 1, "values": {"\\ud800": 1, "b": 2}}')])
    assert d.channels is None  # not learnt from a name no output could carry


def test_far_future_timestamps_are_rejected_when_limited():
    import time

    now = time.time()
    d = Decoder(channels=1, max_future_seconds=3600)
    assert reason(d, orjson.dumps({"ts": now + 60, "value": 1})) is None
    assert reason(d, orjson.dumps({"ts": (now + 7200) * 1000, "value": 1})) == "bad_timestamp"  # in milliseconds too
    out, _, _ = one(d, orjson.dumps({"ts": 99e12, "value": 1}))
    assert "max_future_seconds 3600" in out.details[0]
    assert reason(Decoder(channels=1), orjson.dumps({"ts": 99e12, "value": 1})) is None  # no limit by default


# --- columnar batches ---------------------------------------------------------------


def _as_envelope(doc: dict) -> dict:
    """The columnar batch `doc` as the equivalent envelope of reading objects."""
    readings = []
    for j, ts in enumerate(doc["ts"]):
        reading = {"ts": ts}
        if "values" in doc:
            raw = doc["values"]
            reading["values"] = {k: v[j] for k, v in raw.items()} if isinstance(raw, dict) else raw[j]
        else:
            reading["value"] = doc["value"][j]
        readings.append(reading)
    envelope = {"readings": readings}
    if "sensor_id" in doc:
        envelope["sensor_id"] = doc["sensor_id"]
    return envelope


def _same_rows(a, b) -> None:
    assert len(a) == len(b)
    assert a.sensor_ids == b.sensor_ids
    np.testing.assert_array_equal(a.ts, b.ts)
    np.testing.assert_array_equal(a.values, b.values)
    assert a.status.tolist() == b.status.tolist()
    assert a.dead == b.dead and a.details == b.details
    assert a.message.tolist() == b.message.tolist() and a.index.tolist() == b.index.tolist()


def test_columnar_batch_one_sensor():
    d = Decoder()
    value = orjson.dumps({"sensor_id": "pump-7", "ts": [1, 2, 1_700_000_000_500], "value": [1.5, 2, -3.0]})
    out = d.decode([(b"k", b'{"sensor_id": "z", "ts": 9, "value": 9}'), (b"key", value)])
    assert d.channels == 1 and len(out) == 4
    assert out.sensor_ids == ["z", "pump-7", "pump-7", "pump-7"]
    assert out.ts.tolist() == [9, 1, 2, 1_700_000_000.5]  # milliseconds, as for one reading
    assert out.values[:, 0].tolist() == [9, 1.5, 2, -3.0]
    assert out.index.tolist() == [-1, 0, 1, 2] and out.message.tolist() == [0, 1, 1, 1]
    assert out.engine_rows.tolist() == [0, 1, 2, 3] and not any(out.dead)
    # a reading the engine rejects later is dead-lettered as the reading object an envelope would hold
    assert orjson.loads(out.dead_letter_value(2, value)) == {"ts": 2, "value": 2}


def test_columnar_named_channels_and_rows():
    d = Decoder()
    out = d.decode([(b"p", orjson.dumps({"ts": [1, 2], "values": {"t": [1.0, 3.0], "f": [2.0, 4.0]}}))])
    assert names_of(d, out, 1) == ["f", "t"] and out.sensor_ids == ["p", "p"]  # the key, as for readings
    assert out.values.tolist() == [[2.0, 1.0], [4.0, 3.0]]
    out = d.decode([(b"p", orjson.dumps({"sensor_id": "q", "ts": [3, 4], "values": [[5, 6], [7, 8]]}))])
    assert out.values.tolist() == [[5, 6], [7, 8]] and out.status.tolist() == [0, 0]


def test_columnar_batch_dead_as_a_whole():
    d = Decoder(channels=1, max_readings=3)
    cases = {
        b'{"sensor_id": "a", "ts": [], "value": []}': "missing_field",
        b'{"sensor_id": "a", "ts": [1, 2, 3, 4], "value": [1, 2, 3, 4]}': "too_many_readings",
        b'{"sensor_id": "a", "ts": [1, 2], "value": [1]}': "missing_field",
        b'{"sensor_id": "a", "ts": [1, 2]}': "missing_field",
        b'{"sensor_id": "a", "ts": [1, 2], "value": 3}': "not_an_object",
        b'{"sensor_id": "a", "ts": [1, 2], "values": {"x": [1, 2], "y": 3}}': "not_an_object",
    }
    assert_dead_as_a_whole(d, cases)


_cells = st.one_of(
    st.floats(-1e6, 1e6), st.integers(-10, 10), st.sampled_from([None, True, "x", 1e20, float("nan"), float("inf")]),
)


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 6),
    channels=st.integers(1, 3),
    form=st.sampled_from(["value", "rows", "named"]),
    data=st.data(),
)
def test_columnar_equals_its_envelope(n, channels, form, data):
    """A columnar batch decodes to exactly the rows, statuses, details and dead letters of its envelope."""
    clean = data.draw(st.booleans())
    cell = st.floats(-1e6, 1e6) if clean else _cells
    ts = data.draw(st.lists(st.integers(1, 10**12) | (st.just(True) if not clean else st.integers(1, 5)),
                            min_size=n, max_size=n))
    doc: dict = {"ts": ts}
    if data.draw(st.booleans()):
        doc["sensor_id"] = data.draw(st.sampled_from(["s1", "", 7, "ok"]) if not clean else st.just("s1"))
    if form == "value":
        doc["value"] = data.draw(st.lists(cell, min_size=n, max_size=n))
    elif form == "rows":
        width = data.draw(st.integers(channels, channels + (0 if clean else 1)))
        doc["values"] = data.draw(st.lists(st.lists(cell, min_size=width, max_size=width), min_size=n, max_size=n))
    else:
        doc["values"] = {f"c{c}": data.draw(st.lists(cell, min_size=n, max_size=n)) for c in range(channels)}
    known = data.draw(st.booleans())
    width = 1 if form == "value" else channels
    columnar = Decoder(channels=width if known else None).decode([(b"key", json.dumps(doc).encode())])
    envelope = Decoder(channels=width if known else None).decode([(b"key", json.dumps(_as_envelope(doc)).encode())])
    _same_rows(columnar, envelope)
    if clean:  # plain finite numbers of the right width: decoded in one go, not reading by reading
        assert list(columnar.columns) == [0]
    for i in range(len(columnar)):
        if columnar.dead[i] is not None or columnar.status[i] != 0:
            got = columnar.dead_letter_value(i, b"")
            want = envelope.dead_letter_value(i, b"")
            assert json.loads(got) == json.loads(want) or (got == want)


# --- channel names per sensor -----------------------------------------------------


def test_channel_names_belong_to_each_sensor():
    """One sensor's object names another's nothing: a takes none, b "temp", c "flow"; b's other names are its own
    wrong_channels, and a's positional readings never take names from b."""
    d = Decoder()
    out = d.decode([
        (b"a", b'{"ts": 1, "value": 1.0}'),
        (b"b", b'{"ts": 1, "values": {"temp": 2.0}}'),
        (b"a", b'{"ts": 2, "value": 1.5}'),
        (b"c", b'{"ts": 1, "values": {"flow": 3.0}}'),
        (b"b", b'{"ts": 2, "values": {"flow": 4.0}}'),
        (b"b", b'{"ts": 3, "value": 5.0}'),  # positional: in b's channel order
    ])
    assert [RejectReason(int(s)).label if s else None for s in out.status] == [
        None, None, None, None, "wrong_channels", None]
    assert out.details[4] == "keys ['flow'] differ from the channels sensor 'b' was first seen with: ['temp']"
    assert [names_of(d, out, i) for i in range(6)] == [None, ["temp"], None, ["flow"], ["temp"], ["temp"]]
    assert out.values[:4, 0].tolist() == [1.0, 2.0, 1.5, 3.0]
    assert out.bindings == {"b": d.names.id_of(["temp"]), "c": d.names.id_of(["flow"])}


def test_columnar_names_are_checked_against_the_sensors_own_in_order():
    """A columnar batch whose names are not its sensor's is wrong_channels as a whole; the first names win."""
    d = Decoder()
    ts = [1, 2]
    out = d.decode([
        (b"p", orjson.dumps({"ts": ts, "values": {"t": [1.0, 2.0], "f": [3.0, 4.0]}})),
        (b"p", orjson.dumps({"ts": 3, "values": {"t": 5.0, "x": 6.0}})),  # one reading, other names
        (b"p", orjson.dumps({"ts": [4, 5], "values": {"x": [1.0, 2.0], "y": [3.0, 4.0]}})),
        (b"q", orjson.dumps({"ts": [4, 5], "values": {"x": [1.0, 2.0], "y": [3.0, 4.0]}})),
    ])
    labels = [RejectReason(int(s)).label if s else None for s in out.status]
    assert labels == [None, None, "wrong_channels", "wrong_channels", "wrong_channels", None, None]
    assert out.details[3] == "keys ['x', 'y'] differ from the channels sensor 'p' was first seen with: ['f', 't']"
    assert names_of(d, out, 5) == ["x", "y"] and out.values[5].tolist() == [1.0, 3.0]
    # the other way round: an object reading first, then a columnar batch of other names
    d = Decoder()
    out = d.decode([(b"p", b'{"ts": 1, "values": {"a": 1, "b": 2}}'),
                    (b"p", orjson.dumps({"ts": [2, 3], "values": {"x": [1.0, 2.0], "y": [3.0, 4.0]}}))])
    assert [RejectReason(int(s)).label if s else None for s in out.status] == [None, "wrong_channels", "wrong_channels"]


def test_configured_channel_names_name_every_sensor():
    d = Decoder(channel_names=["temp"])
    out = d.decode([(b"a", b'{"ts": 1, "value": 1.0}'), (b"b", b'{"ts": 1, "values": {"flow": 1.0}}')])
    assert out.status.tolist() == [0, RejectReason.WRONG_CHANNELS]
    assert out.details[1] == "keys ['flow'] differ from the configured channel_names: ['temp']"
    assert not d.names.any_bound and not out.bindings  # nothing bound per sensor
