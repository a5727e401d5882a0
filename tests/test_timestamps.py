"""One timestamp rule (detector/readings/timestamps.py): the same `ts` names the same instant through the
Python API, a CSV or JSON-lines file, and a Kafka message."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumers.decode import Decoder
from detector import Detector, RejectReason
from detector.readings.files import read_readings
from detector.readings.timestamps import column_seconds, epoch_numbers, to_seconds

INSTANT = 1_700_000_000.25  # 2023-11-14T22:13:20.25Z
SPELLINGS = [
    INSTANT,                                        # seconds
    1_700_000_000_250,                              # milliseconds
    1_700_000_000_250_000,                          # microseconds
    1_700_000_000_250_000_000,                      # nanoseconds
    "1700000000.25",                                # a number written out (a CSV cell)
    "2023-11-14T22:13:20.250000+00:00",
    "2023-11-14T22:13:20.25Z",
    "2023-11-14T23:13:20.25+01:00",
    "2023-11-14T22:13:20.250",                      # naive: UTC
]
OBJECTS = [
    datetime(2023, 11, 14, 22, 13, 20, 250_000, tzinfo=timezone.utc),
    datetime(2023, 11, 14, 22, 13, 20, 250_000),   # naive: UTC
    datetime(2023, 11, 14, 17, 13, 20, 250_000, tzinfo=timezone(timedelta(hours=-5))),
    np.datetime64("2023-11-14T22:13:20.250"),
    np.datetime64(1_700_000_000_250_000_000, "ns"),
    np.float64(INSTANT),
    np.int64(1_700_000_000_250),
]
UNUSABLE = [True, None, math.nan, math.inf, "yesterday", "", 10**400, np.datetime64("NaT"), [INSTANT]]


@pytest.mark.parametrize("ts", SPELLINGS + OBJECTS, ids=repr)
def test_every_spelling_is_the_same_instant(ts):
    assert to_seconds(ts) == pytest.approx(INSTANT, abs=1e-6)


@pytest.mark.parametrize("ts", UNUSABLE, ids=repr)
def test_unusable_timestamps_are_nan(ts):
    assert math.isnan(to_seconds(ts))


@given(st.floats(min_value=1e8, max_value=9e10))  # 1973 .. 4822, in seconds
def test_each_unit_reads_back_the_same_instant(seconds):
    for scale in (1.0, 1e3, 1e6, 1e9):
        assert to_seconds(seconds * scale) == pytest.approx(seconds, rel=1e-12)
    array = np.array([seconds, seconds * 1e3, seconds * 1e6, seconds * 1e9])
    assert np.allclose(epoch_numbers(array), seconds, rtol=1e-12)


def test_python_api_reads_epoch_milliseconds_as_kafka_does():
    """`score_one` used to take 1.7e12 as seconds (the year 55,800) while the decoder took it as milliseconds."""
    det = Detector()
    scored = [det.score_one("s", ts, [1.0]) for ts in (1_700_000_000_000, 1_700_000_001_000, "2023-11-14T22:13:22Z")]
    assert [s.rejected for s in scored] == [None, None, None]
    assert [s.ts for s in scored] == [1_700_000_000.0, 1_700_000_001.0, 1_700_000_002.0]
    dt = det.score_one("s", datetime(2023, 11, 14, 22, 13, 23), [1.0])
    d64 = det.score_one("s", np.datetime64("2023-11-14T22:13:24"), [1.0])
    assert (dt.ts, d64.ts) == (1_700_000_003.0, 1_700_000_004.0)
    assert det.score_one("s", "yesterday", [1.0]).rejected is RejectReason.BAD_TIMESTAMP


def test_kafka_decoder_reads_every_spelling_the_same():
    texts = [s for s in SPELLINGS if not isinstance(s, float)] + [INSTANT]
    out = Decoder(channels=1).decode([(b"a", orjson.dumps({"ts": ts, "value": 1})) for ts in texts])
    assert np.allclose(out.ts, INSTANT, atol=1e-6, rtol=0) and not out.status.any()
    columnar = orjson.dumps({"sensor_id": "c", "ts": [1_700_000_000_250, 1_700_000_001_250_000], "value": [1, 2]})
    out = Decoder(channels=1).decode([(b"c", columnar)])
    assert out.ts.tolist() == [INSTANT, INSTANT + 1]


@pytest.mark.parametrize("unit", [1, 1_000, 1_000_000, 1_000_000_000])
def test_files_read_each_unit_as_the_api_does(tmp_path, unit):
    base = 1_700_000_000
    csv = tmp_path / "s.csv"
    csv.write_text("ts,v\n" + "".join(f"{(base + i) * unit},{i}\n" for i in range(5)))
    jsonl = tmp_path / "s.jsonl"
    jsonl.write_bytes(b"".join(orjson.dumps({"ts": (base + i) * unit, "value": i}) + b"\n" for i in range(5)))
    for path in (csv, jsonl):
        assert read_readings(path).ts.tolist() == [float(base + i) for i in range(5)]


def test_file_columns_follow_the_rule_cell_by_cell():
    """Mixed cells go one by one through `to_seconds`, so a cell means what it would mean alone."""
    seconds, reasons = column_seconds(["1700000000", "1700000001000", "2023-11-14T22:13:22Z", "soon"])
    assert seconds[:3].tolist() == [1_700_000_000.0, 1_700_000_001.0, 1_700_000_002.0]
    assert math.isnan(seconds[3]) and reasons[3] and not any(reasons[:3])
