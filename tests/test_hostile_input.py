"""Hostile input through the service's whole scoring path, without a broker: decode -> engine -> outputs.

Property-based (hypothesis): arbitrary bytes and keys, deep JSON, huge and non-finite numbers,
unicode ids (lone surrogates, bidi overrides, control characters), wrong types, batched messages
and floods of new sensor ids go through a real `ScoringService`'s decoder, engine and output
builder. Nothing may escape as an exception; every reading becomes exactly one score or one dead
letter with a known reason; the service's counts and the Prometheus dead-letter counter add up;
every output is something the producer can send (bytes, and valid JSON for scores).
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
import orjson
from aiokafka.structs import ConsumerRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from consumers.config import ServiceConfig
from consumers.decode import DeadLetterReason
from consumers.service import ScoringService
from detector.config import DetectorConfig
from detector.model.store import untrained

MODEL = untrained(8, 1, seed=5)
TOPIC = "sensor-readings"
ODD_TEXT = ["\ud800", "\u202e", "\x00", "\n", " ", "é", "𝔘", "😀", "a" * 300, ""]

_ids = st.one_of(st.text(max_size=12), st.sampled_from(ODD_TEXT), st.integers(-(10**30), 10**30),
                 st.booleans(), st.none(), st.floats(), st.lists(st.integers(), max_size=2))
_numbers = st.one_of(st.floats(), st.sampled_from([1e15, -1e15, 1e16, 1e300, 5e-324]), st.integers(-(10**400), 10**400),
                     st.booleans(), st.none(), st.text(max_size=4))
_ts = st.one_of(st.floats(), st.integers(-(10**400), 10**400), st.sampled_from(["2023-11-14T22:13:20Z", "noon", ""]),
                st.booleans(), st.none(), st.lists(st.integers(), max_size=2))
_values = st.one_of(
    _numbers,
    st.lists(_numbers, max_size=6),
    st.dictionaries(st.one_of(st.sampled_from(["a", "b", "c"]), st.sampled_from(ODD_TEXT)), _numbers, max_size=5),
)


@st.composite
def _reading(draw) -> dict:
    doc = {}
    if draw(st.booleans()):
        doc["sensor_id"] = draw(_ids)
    if draw(st.integers(0, 9)):
        doc["ts"] = draw(_ts)
    doc["value" if draw(st.booleans()) else "values"] = draw(_values)
    return doc


def _deep(depth: int) -> bytes:
    return b'{"sensor_id": "d", "ts": 1, "value": ' + b"[" * depth + b"1" + b"]" * depth + b"}"


_payloads = st.one_of(
    st.binary(max_size=300),
    st.none(),
    _reading().map(lambda d: json.dumps(d).encode()),  # the stdlib writes NaN, Infinity and huge integers
    st.lists(_reading(), max_size=5).map(lambda d: json.dumps(d).encode()),  # batched: an array of readings
    st.tuples(_ids, st.lists(_reading(), max_size=4)).map(
        lambda t: json.dumps({"sensor_id": t[0], "readings": t[1]}).encode()),  # batched: one sensor's envelope
    st.integers(1, 5000).map(_deep),
    st.sampled_from([b"[]", b"{}", b'{"readings": 5}', b'{"readings": []}', b"null", b"1e999", b'"x"', b"\xff\xfe"]),
)
_keys = st.one_of(st.none(), st.binary(max_size=40), st.sampled_from(ODD_TEXT).map(
    lambda s: s.encode("utf-8", "surrogatepass")))


def _service(channels: int | None, **kw) -> ScoringService:
    cfg = ServiceConfig(max_message_bytes=4096, max_key_bytes=32, max_channels=4, max_readings_per_message=8,
                        metrics_address="127.0.0.1", metrics_port=0, **kw,
                        detector=DetectorConfig(channels=channels, capacity=16, initial_capacity=4, warmup=2))
    return ScoringService(cfg, MODEL)


def _run_batches(service: ScoringService, batches: list[list[tuple[bytes | None, bytes | None]]]):
    """Each batch as `process` handles it, minus Kafka: decode, score, build the outputs."""
    outputs, readings, offset = [], 0, 0
    for batch in batches:
        records = []
        for key, value in batch:
            records.append(ConsumerRecord(TOPIC, 0, offset, 0, 0, key, value, None, len(key or b""),
                                          len(value or b""), []))
            offset += 1
        decoded = service._decode(records)
        assert sorted(set(decoded.message.tolist())) == list(range(len(records)))  # every message has a row
        readings += len(decoded)
        result = asyncio.run(service._score(decoded))
        outputs.extend(service._outputs(records, decoded, result))
    return outputs, readings


def _dead_letter_counter(service: ScoringService) -> float:
    text = service.metrics.exposition().decode()
    family = next(f for f in text_string_to_metric_families(text) if f.name == "hiddenstate_dead_letters")
    return sum(s.value for s in family.samples if s.name.endswith("_total"))


def _check(service: ScoringService, outputs, readings: int) -> None:
    cfg = service.config
    stats = service.stats
    dead = sum(stats.dead_lettered.values())
    assert stats.scored + dead == readings
    scores = [o for o in outputs if o.topic == cfg.scores_topic]
    letters = [o for o in outputs if o.topic == cfg.dead_letter_topic]
    assert len(scores) == stats.scored and len(letters) == dead
    assert set(stats.dead_lettered) <= {r.value for r in DeadLetterReason}
    for out in outputs:
        assert out.key is None or isinstance(out.key, bytes)
        assert out.value is None or isinstance(out.value, bytes)
        assert all(isinstance(k, str) and isinstance(v, bytes) for k, v in out.headers)
    for out in scores:
        doc = orjson.loads(out.value)
        sensor = doc["sensor_id"]
        assert out.key == sensor.encode() and 0 < len(sensor) <= 256 and sensor.isprintable()
        assert 0.0 <= doc["score"] <= 1.0 and np.isfinite(doc["ts"])
    for out in letters:
        assert dict(out.headers)["reason"].decode() in {r.value for r in DeadLetterReason}
    assert _dead_letter_counter(service) == dead
    if service.engine is not None:
        assert len(service.engine.pool) <= cfg.detector.capacity


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(st.tuples(_keys, _payloads), min_size=1, max_size=8), min_size=1, max_size=3),
       st.sampled_from([None, 1, 2]))
def test_every_reading_is_scored_or_dead_lettered_and_counted(batches, channels):
    service = _service(channels)
    outputs, readings = _run_batches(service, batches)
    _check(service, outputs, readings)


@settings(max_examples=25, deadline=None)
@given(st.integers(17, 200), st.integers(0, 2**32 - 1))
def test_a_flood_of_new_sensor_ids_stays_within_capacity(n, seed):
    """More distinct ids than the pool holds, in one batch and across batches: all scored, evictions counted."""
    rng = np.random.default_rng(seed)
    messages = [(None, orjson.dumps({"sensor_id": f"flood-{rng.integers(1 << 62)}", "ts": 1.0, "value": 1.0}))
                for _ in range(n)]
    service = _service(1, checkpoints_enabled=False)
    outputs, readings = _run_batches(service, [messages[: n // 2], messages[n // 2:]])
    _check(service, outputs, readings)
    pool = service.engine.pool
    assert service.stats.scored == n and len(pool) == 16
    assert not service.ownership.touched and len(service.ownership.owner) <= 2 * 16 + 1024  # nothing else keeps every id
    assert pool.stats.evicted_capacity == len({m[1] for m in messages}) - 16


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(st.floats(-1e3, 1e3), st.sampled_from([1e15, -1e15, 1e16, 1e300, float("nan")])),
                min_size=5, max_size=60),
       st.sampled_from([1e30, 9e13, float("inf"), -1e12]))
def test_hostile_values_and_timestamps_harm_no_one_else(values, odd_ts):
    """A sensor's huge values never make its own later scores NaN; a far-future ts does not age out other sensors."""
    service = _service(1)
    t0 = 1_700_000_000.0
    batches = [[(b"calm", orjson.dumps({"ts": t0 + i, "value": 1.0 + i % 3})),
                (b"wild", json.dumps({"ts": t0 + i, "value": v}).encode())] for i, v in enumerate(values)]
    batches.append([(b"future", json.dumps({"ts": odd_ts, "value": 1.0}).encode()),
                    (b"calm", orjson.dumps({"ts": t0 + len(values), "value": 1.0}))])
    outputs, readings = _run_batches(service, batches)
    _check(service, outputs, readings)
    pool = service.engine.pool
    assert pool.stats.evicted_idle == 0 and pool.slot_of("calm") is not None
    assert int(pool.count[pool.slot_of("calm")]) == len(values) + 1
