"""consumers/score_json.py writes per-reading score records byte for byte as `orjson.dumps` of their dicts."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from consumers import score_json

ODD = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e16, 1e-7, 5e-324, 1.7976931348623157e308, 1_700_000_150.0, 1.0,
       123456789012345678.0, 0.1, 1 / 3]


def reference(sensor, ts, score, surprise, anomalous, alerting, expected, seen, model, version, delay) -> bytes:
    """The record as outputs.py built it before (and still does for channels named by the sensor's names)."""
    doc = {"sensor_id": sensor, "ts": ts, "score": score, "surprise": surprise, "anomalous": anomalous,
           "alerting": alerting, "expected": expected, "values": seen, "model": model, "weights_version": version}
    if delay:
        doc["delay"] = delay
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("delay", [0, 4])
def test_records_are_the_bytes_of_their_dicts(channels, delay):
    rng = np.random.default_rng(channels + delay)
    n = 400
    wide = rng.standard_normal(n) * 10.0 ** rng.integers(-30, 30, n)
    wide[: len(ODD)] = ODD
    ts = 1_700_000_000.0 + rng.integers(0, 10**6, n) * 0.5
    score = rng.random(n).astype(np.float32).astype(np.float64)  # as the engine's float32 results read
    surprise = wide.copy()
    anomalous, alerting = rng.random(n) < 0.5, rng.random(n) < 0.1
    expected = rng.standard_normal((n, channels)).astype(np.float32)
    seen = np.column_stack([np.roll(wide, k) for k in range(channels)])
    sensors = [f"s{i % 37}" for i in range(n)]
    sensors[:4] = ['quo"te', "back\\slash", "ünï-cödé", "per%cent"]
    model = 'gru-default@7033eb53e10f "100%"'
    texts = score_json.SensorText()
    json_ids, keys = texts.of(sensors)
    got = score_json.records(json_ids, ts, score, surprise, anomalous, alerting, expected, seen, model, 7, delay)
    want = [reference(sensors[i], ts[i].item(), score[i].item(), surprise[i].item(), bool(anomalous[i]),
                      bool(alerting[i]), expected[i].tolist(), seen[i].tolist(), model, 7, delay) for i in range(n)]
    assert got == want
    assert keys == [s.encode() for s in sensors]
    assert orjson.loads(got[2])["sensor_id"] == "ünï-cödé"


def test_integer_columns_are_written_as_integers_and_an_empty_batch_has_no_records():
    assert score_json.numbers(np.array([0, 1], dtype=np.int8)) == [b"0", b"1"]
    assert score_json.numbers(np.array([True, False])) == [b"true", b"false"]
    empty = np.empty(0)
    assert score_json.records([], empty, empty, empty, empty, empty, np.empty((0, 1)), np.empty((0, 1)), "m", 0,
                              0) == []


def test_sensor_text_forgets_everything_past_its_limit_and_begins_again():
    texts = score_json.SensorText(limit=2)
    assert texts.of(["a", "b", "c"]) == ([b'"a"', b'"b"', b'"c"'], [b"a", b"b", b"c"])
    assert texts.of(["d"]) == ([b'"d"'], [b"d"])  # three held: cleared first
    assert len(texts._text) == 1
