"""consumers/singles.py: a batch of plain one-reading messages decodes in one pass to exactly what the general path
makes of it, and any other message sends the whole batch to the general path."""

from __future__ import annotations

import time

import numpy as np
import orjson
import pytest

from consumers.decode import Decoded, Decoder
from consumers.singles import singles
from detector.readings.reasons import RejectReason

NOW = time.time()


def msg(doc: object, key: bytes | None = b"k-1") -> tuple[bytes | None, bytes]:
    return key, orjson.dumps(doc)


PLAIN = [
    msg({"sensor_id": "pump-7", "ts": 1_700_000_000.5, "value": 3.2}),
    msg({"sensor_id": "pump-7", "ts": 1_700_000_010, "value": -4}),  # integer ts and value
    msg({"sensor_id": 12345, "ts": 1_700_000_000_500, "value": 1e14}),  # integer id; milliseconds
    msg({"ts": 1_700_000_000_000_000, "value": 0.0}, key=b"from-key"),  # the key's id; microseconds
    msg({"sensor_id": "fan-2", "ts": 1_700_000_000_000_000_000, "value": 1.5, "unit": "C"}),  # ns; an extra field
    msg({"sensor_id": "fan-2", "ts": -5, "value": 1.0}),  # before the epoch: bad_timestamp
    msg({"sensor_id": "fan-2", "ts": 1e300, "value": 1.0}),  # beyond the year 5138: bad_timestamp
    msg({"sensor_id": "fan-3", "ts": NOW + 86_400, "value": 2.0}),  # ahead of the clock (with max_future_seconds)
    msg({"sensor_id": "fan-3", "ts": 0, "value": 2.0, "values": None, "readings": None}),
]


def general(decoder: Decoder, batch: list) -> object:
    """The general path's rows of `batch`: a tombstone after it keeps the batch off the fast path."""
    return decoder.decode([*batch, (None, None)])


def same_rows(fast, slow, n: int) -> None:
    assert fast.sensor_ids == slow.sensor_ids[:n]
    np.testing.assert_array_equal(fast.ts, slow.ts[:n])
    np.testing.assert_array_equal(fast.values, slow.values[:n])
    np.testing.assert_array_equal(fast.status, slow.status[:n])
    assert fast.dead == slow.dead[:n] and fast.details == slow.details[:n] and fast.items == slow.items[:n]
    np.testing.assert_array_equal(fast.message, slow.message[:n])
    np.testing.assert_array_equal(fast.index, slow.index[:n])
    np.testing.assert_array_equal(fast.channel_set, slow.channel_set[:n])
    np.testing.assert_array_equal(fast.engine_rows, slow.engine_rows[:n])
    assert fast.columns == slow.columns == {} and fast.bindings == slow.bindings == {}


@pytest.mark.parametrize("channels", [None, 1])
@pytest.mark.parametrize("future", [None, 3600.0])
def test_plain_batch_decodes_in_one_pass_to_what_the_general_path_makes_of_it(channels, future):
    fast_decoder = Decoder(channels=channels, max_future_seconds=future)
    assert singles(fast_decoder, PLAIN, Decoded) is not None
    fast = fast_decoder.decode(PLAIN)
    slow = general(Decoder(channels=channels, max_future_seconds=future), PLAIN)
    same_rows(fast, slow, len(PLAIN))
    assert fast_decoder.channels == 1
    bad = {RejectReason.BAD_TIMESTAMP: [5, 6] + ([7] if future else [])}
    assert np.flatnonzero(fast.status).tolist() == bad[RejectReason.BAD_TIMESTAMP]
    assert fast.sensor_ids[2:4] == ["12345", "from-key"]
    assert fast.ts[:5].tolist() == [1_700_000_000.5, 1_700_000_010.0, 1_700_000_000.5, 1_700_000_000.0,
                                    1_700_000_000.0]


def test_a_sensor_id_pattern_is_checked_on_the_fast_path():
    batch = [msg({"sensor_id": "pump-7", "ts": 1_700_000_000, "value": 1.0})]
    assert singles(Decoder(sensor_id_pattern=r"pump-\d+"), batch, Decoded) is not None
    assert singles(Decoder(sensor_id_pattern=r"fan-\d+"), batch, Decoded) is None  # its dead letter says why
    dead = Decoder(sensor_id_pattern=r"fan-\d+").decode(batch).dead[0]
    assert dead is not None and dead[0].value == "bad_sensor_id"


OTHERS = {
    "tombstone": (b"k", None),
    "not JSON": (b"k", b"{nope"),
    "NaN (lenient JSON)": (b"k", b'{"sensor_id": "a", "ts": 1700000000, "value": NaN}'),
    "an array": msg([{"sensor_id": "a", "ts": 1_700_000_000, "value": 1.0}]),
    "an envelope": msg({"sensor_id": "a", "readings": [{"ts": 1_700_000_000, "value": 1.0}]}),
    "columns": msg({"sensor_id": "a", "ts": [1_700_000_000], "value": [1.0]}),
    "values": msg({"sensor_id": "a", "ts": 1_700_000_000, "values": [1.0]}),
    "a null value": msg({"sensor_id": "a", "ts": 1_700_000_000, "value": None}),
    "a boolean value": msg({"sensor_id": "a", "ts": 1_700_000_000, "value": True}),
    "a value too large": msg({"sensor_id": "a", "ts": 1_700_000_000, "value": 1e16}),
    "an ISO ts": msg({"sensor_id": "a", "ts": "2023-11-14T22:13:20Z", "value": 1.0}),
    "no ts": msg({"sensor_id": "a", "value": 1.0}),
    "a float id": msg({"sensor_id": 1.5, "ts": 1_700_000_000, "value": 1.0}),
    "a boolean id": msg({"sensor_id": True, "ts": 1_700_000_000, "value": 1.0}),
    "an empty id": msg({"sensor_id": "", "ts": 1_700_000_000, "value": 1.0}),
    "an unprintable id": msg({"sensor_id": "a\nb", "ts": 1_700_000_000, "value": 1.0}),
    "an id too long": msg({"sensor_id": "a" * 257, "ts": 1_700_000_000, "value": 1.0}),
    "no id and no key": msg({"ts": 1_700_000_000, "value": 1.0}, key=None),
    "no id and a key not UTF-8": msg({"ts": 1_700_000_000, "value": 1.0}, key=b"\xff\xfe"),
    "a key too long": msg({"sensor_id": "a", "ts": 1_700_000_000, "value": 1.0}, key=b"k" * 2000),
    "a message too large": msg({"sensor_id": "a", "ts": 1_700_000_000, "value": 1.0, "pad": "x" * 70_000}),
    "a 21-digit integer id": (b"k", b'{"sensor_id": 123456789012345678901, "ts": 1700000000, "value": 1.0}'),
}


@pytest.mark.parametrize("what", list(OTHERS))
def test_any_other_message_sends_the_whole_batch_to_the_general_path(what):
    batch = [*PLAIN[:3], OTHERS[what], *PLAIN[3:5]]
    decoder = Decoder()
    assert singles(decoder, batch, Decoded) is None
    assert decoder.channels is None  # nothing learnt or changed by the attempt
    decoded = decoder.decode(batch)
    assert len(decoded) == len(batch)
    same_rows(decoder.decode(PLAIN[:3]), decoded, 3)  # the plain messages before it decode as they would alone


def test_a_stream_of_several_channels_never_takes_the_fast_path():
    assert singles(Decoder(channels=2), PLAIN, Decoded) is None
    named = Decoder(channel_names=["temp"])  # one configured name: a plain value is that channel's
    assert singles(named, PLAIN, Decoded) is not None
    same_rows(named.decode(PLAIN), general(Decoder(channel_names=["temp"]), PLAIN), len(PLAIN))
