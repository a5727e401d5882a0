"""The library and replay guard a reading as the service does: one timestamp rule (range and future bound), one
value bound, one id rule, the same reasons; and a rejected reading never looks like a normal one (score NaN).

Issue 17, items 1, 2 and 4: `score_one(..., ts=1e300)` was accepted and aged out every other sensor, replay wrote
such a row as `scored` with an empty time, a rejected reading had score 0.0, `"value": null` was `missing_field`,
a 23-digit integer id was refused, and `too_many_readings` could not trigger with the default limits.
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path

import numpy as np
import orjson
import pytest

from consumers.config import ServiceConfig
from consumers.decode import DeadLetterReason, Decoder
from detector import Detector, RejectReason
from detector.engine import Engine
from detector.readings.timestamps import column_seconds, to_seconds
from detector.replay import replay_files, write_scores

T0 = 1_700_000_000.0
DAY = 86_400.0


def _warm(det: Detector, sensors=("a", "b", "c"), steps: int = 12) -> None:
    for t in range(steps):
        det.score_many(list(sensors), [T0 + t] * len(sensors), [float(np.sin(t))] * len(sensors))


@pytest.mark.parametrize("ts", [1e300, 1e20, "1e300", -1.0, -1_700_000_000_000, "1969-12-31T23:59:59Z"])
def test_an_unusable_ts_is_refused_by_the_api_and_harms_no_other_sensor(small_model, ts):
    det = Detector(small_model, channels=1)
    _warm(det)
    out = det.score_one("x", ts, 1.0)
    assert out.rejected is RejectReason.BAD_TIMESTAMP
    assert math.isnan(out.score) and not out.is_anomaly
    assert len(det) == 3 and det.engine.pool.stats.evicted_idle == 0
    assert det.score_one("a", T0 + 100, 0.5).rejected is None  # the others carry on


def test_the_future_bound_is_a_detector_setting_the_api_and_the_engine_apply(small_model):
    soon, later = time.time() + 0.5 * DAY, time.time() + 2 * DAY
    det = Detector(small_model, channels=1)
    assert det.score_one("s", soon, 1.0).rejected is None
    assert det.score_one("s", later, 1.0).rejected is RejectReason.BAD_TIMESTAMP
    arrays = det.score_arrays(["t", "u"], np.array([soon, later]), np.array([1.0, 1.0]))  # the fast path too
    assert [arrays.reason(0), arrays.reason(1)] == [None, RejectReason.BAD_TIMESTAMP]
    unbounded = Detector(small_model, channels=1, max_future_seconds=None)
    assert unbounded.score_one("s", later, 1.0).rejected is None
    assert unbounded.score_one("s", 1e300, 1.0).rejected is RejectReason.BAD_TIMESTAMP  # outside the rule's range


def test_the_epoch_itself_is_a_usable_instant_and_before_it_is_not():
    """Decided: ts < 0 (before 1970) is bad_timestamp everywhere; 0 is the epoch, a relative time axis's start."""
    assert to_seconds(0) == 0.0 and to_seconds(0.0) == 0.0 and to_seconds("1970-01-01T00:00:00Z") == 0.0
    for ts in (-0.5, -1, "-1", "1969-07-20T20:17:00Z", 1e20, 1e300):  # 1e20 ns is 1e11 s: the year 5138
        assert math.isnan(to_seconds(ts)), ts
    seconds, reasons = column_seconds(["0", "-5", "1e300", "soon"])
    assert seconds[0] == 0.0 and np.isnan(seconds[1:]).all()
    assert "before 1970" in reasons[1] and "before 1970" in reasons[2] and "neither" in reasons[3]


# (JSON reading, the reason the service gives it); the API must give the same for the same fields
SAME_REASONS = [
    ({"sensor_id": "s", "ts": 1e300, "value": 1.0}, "bad_timestamp"),
    ({"sensor_id": "s", "ts": -5, "value": 1.0}, "bad_timestamp"),
    ({"sensor_id": "s", "ts": "FUTURE", "value": 1.0}, "bad_timestamp"),
    ({"sensor_id": "s", "ts": T0, "value": 1e16}, "not_finite"),
    ({"sensor_id": "s", "ts": T0, "value": None}, "not_numeric"),
    ({"sensor_id": "s\x07", "ts": T0, "value": 1.0}, "bad_sensor_id"),
    ({"sensor_id": "x" * 257, "ts": T0, "value": 1.0}, "bad_sensor_id"),
    ({"sensor_id": True, "ts": T0, "value": 1.0}, "bad_sensor_id"),
    ({"sensor_id": 12345678901234567890123, "ts": T0, "value": 1.0}, None),
    ({"sensor_id": "s", "ts": 0, "value": 1.0}, None),
]


def _future(doc: dict) -> dict:
    return {**doc, "ts": time.time() + 2 * DAY} if doc["ts"] == "FUTURE" else doc


@pytest.mark.parametrize(("doc", "expected"), SAME_REASONS, ids=lambda v: repr(v)[:40])
def test_the_api_and_the_kafka_decoder_give_the_same_reason(small_model, doc, expected):
    doc = _future(doc)
    api = Detector(small_model, channels=1).score_many([doc["sensor_id"]], [doc["ts"]], [doc["value"]])
    api_reason = api.reason(0)
    assert (api_reason.label if api_reason else None) == expected
    service = ServiceConfig(detector={"channels": 1})
    decoder = Decoder(1, max_future_seconds=service.detector.max_future_seconds)
    decoded = decoder.decode([(None, json.dumps(doc).encode())])  # the stdlib writes a 23-digit integer exactly
    if decoded.dead[0] is not None:
        got = decoded.dead[0][0].value
    else:
        engine = Engine(small_model.network, service.detector, 1)
        result = engine.step(decoded.sensor_ids, decoded.ts, decoded.values, decoded.status)
        got = result.reason(0).label if result.reason(0) else None
    assert got == expected
    if expected is None:
        assert decoded.sensor_ids[0] == api.sensor_ids[0] == str(doc["sensor_id"])


def test_a_23_digit_integer_id_is_one_sensor_in_every_message_form():
    big = 12345678901234567890123
    forms = [
        b'{"sensor_id": %d, "ts": 1700000000, "value": 1.0}' % big,
        b'[{"sensor_id": %d, "ts": 1700000001, "value": 1.0}]' % big,
        b'{"sensor_id": %d, "readings": [{"ts": 1700000002, "value": 1.0}]}' % big,
        b'{"sensor_id": %d, "ts": [1700000003, 1700000004], "value": [1.0, 2.0]}' % big,
    ]
    out = Decoder(channels=1).decode([(None, m) for m in forms])
    assert out.sensor_ids == [str(big)] * 5 and not out.status.any() and not any(out.dead)


def test_value_null_is_not_numeric_and_a_missing_value_is_missing_field():
    decoder = Decoder(channels=1)
    out = decoder.decode([
        (b"k", b'{"ts": 1700000000, "value": null}'),
        (b"k", b'{"ts": 1700000001, "values": null}'),
        (b"k", b'[{"ts": 1700000002, "value": null}]'),
        (b"k", b'{"ts": [1700000003, 1700000004], "value": [1.0, null]}'),
        (b"k", b'{"ts": 1700000005}'),
    ])
    assert [RejectReason(s) if s else None for s in out.status[:5]] == [RejectReason.NOT_NUMERIC] * 3 + [
        None, RejectReason.NOT_NUMERIC]
    assert out.dead[5] == (DeadLetterReason.MISSING_FIELD, "no value or values field")  # rows 3, 4: the columns
    assert out.details[0] == "value is null"


def test_too_many_readings_triggers_with_the_default_limits():
    cfg = ServiceConfig()
    n = cfg.max_readings_per_message + 1
    message = orjson.dumps({"sensor_id": "p", "ts": [1_700_000_000 + i for i in range(n)], "value": [1] * n})
    assert len(message) <= cfg.max_message_bytes  # it fits, so the readings limit is what stops it
    decoder = Decoder(1, max_message_bytes=cfg.max_message_bytes, max_readings=cfg.max_readings_per_message)
    assert decoder.decode([(None, message)]).dead[0][0] is DeadLetterReason.TOO_MANY_READINGS


def test_replay_applies_the_same_guards_and_writes_no_score_for_a_rejected_row(small_model, tmp_path: Path):
    later = time.time() + 2 * DAY
    rows = [[T0 + i, float(np.sin(i))] for i in range(20)]
    rows[10] = [later, 1.0]  # far ahead of the clock: bad_timestamp, like the service
    rows[11] = [1e300, 1.0]  # no instant at all: left out, with its reason
    rows[12] = [T0 + 12, 1e16]  # beyond the value bound: not_finite
    data = tmp_path / "s.csv"
    data.write_text("ts,value\n" + "".join(f"{t!r},{v!r}\n" for t, v in rows))
    result = replay_files([data], detector=Detector(small_model, channels=1))
    assert [line for _, line, _ in result.skipped] == [13] and "before 1970" in result.skipped[0][2]
    assert result.rejected() == {RejectReason.BAD_TIMESTAMP: 1, RejectReason.NOT_FINITE: 1}
    assert np.isnan(result.score[result.status != 0]).all() and np.isfinite(result.score[result.status == 0]).all()
    assert result.stats.scored == 17 and result.sensors() == ["s"]
    out = tmp_path / "s.scores.csv"
    write_scores(result, out)
    written = list(csv.DictReader(out.open()))
    assert {r["status"] for r in written} == {"scored", "bad_timestamp", "not_finite"}
    for r in written:
        assert r["ts"], r  # never a scored row without a time
        assert (r["score"] == "") == (r["status"] != "scored"), r  # an empty cell, never a 0, when not scored
