"""Decoding Kafka messages for the service: formats, timestamps, every dead-letter reason; never raises."""

from __future__ import annotations

import json
import math

import numpy as np
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from consumers.decode import DeadLetterReason, Decoder
from detector.validation import RejectReason


def one(decoder: Decoder, value: bytes | None, key: bytes | None = b"k1"):
    out = decoder.decode([(key, value)])
    return out, out.dead[0], out.status[0]


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
    assert d.channels == 2 and d.channel_names == ["flow", "temp"]
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
    assert d.channel_names == ["f", "t"]
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
    for value, why in cases.items():
        out = d.decode([(b"k", value)])
        assert len(out) == 1 and out.index[0] == -1 and out.dead[0][0].value == why, value
        assert out.dead_letter_value(0, value) == value
    out = d.decode([(b"k", three)])
    assert len(out) == 3 and list(out.status) == [0, 0, 0] and not any(out.dead)


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
    assert d.channels == 4 and d.channel_names is None
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
