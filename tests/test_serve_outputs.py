"""The service's outputs for a batch, without a broker: per-reading and per-message score records agree."""

from __future__ import annotations

import asyncio

import numpy as np
import orjson
import pytest
from aiokafka.structs import ConsumerRecord, TopicPartition

from consumers.config import ServiceConfig
from consumers.service import ScoringService
from detector.config import DetectorConfig
from detector.model.store import load_model, shipped_model_names, untrained

T0 = 1_700_000_000.0


@pytest.fixture(scope="module")
def model():
    return load_model("gru-default") if "gru-default" in shipped_model_names() else untrained(8, 1)


def columnar_messages(per_message: int = 12, steps: int = 96, named: str | None = None) -> list[ConsumerRecord]:
    """Three sensors' sines as columnar batches; s01 jumps by 40 at steps 60-65 (an alert). `named`: s01's values
    are an object with this one channel name."""
    rng = np.random.default_rng(2)
    records = []
    for first in range(0, steps, per_message):
        for s in range(3):
            sid = f"s{s:02d}"
            t = np.arange(first, first + per_message)
            v = 10 + 2 * np.sin(t / 8.0 + s) + 0.1 * rng.standard_normal(t.size)
            if sid == "s01":
                v[(t >= 60) & (t < 66)] += 40.0
            doc = {"sensor_id": sid, "ts": (T0 + 10.0 * t).tolist(), "value": v.tolist()}
            if named and sid == "s01":
                doc["values"] = {named: doc.pop("value")}
            value = orjson.dumps(doc)
            records.append(ConsumerRecord("in", s, len(records), 0, 0, sid.encode(), value, None, 3, len(value), []))
    return records


def run(model, score_records: str, records: list[ConsumerRecord], batch: int = 5) -> list:
    cfg = ServiceConfig(bootstrap_servers="127.0.0.1:1", input_topics=["in"], scores_topic="scores",
                        alerts_topic="alerts", dead_letter_topic="dlq", group_id="g", checkpoints_enabled=False,
                        score_records=score_records, detector=DetectorConfig(channels=1))
    service = ScoringService(cfg, model)
    outputs = []

    async def go() -> None:
        for b in range(0, len(records), batch):
            messages = records[b:b + batch]
            decoded = service._decode(messages)
            outputs.extend(service._outputs(messages, decoded, await service._score(decoded)))

    asyncio.run(go())
    return outputs


def test_per_message_records_hold_the_per_reading_scores_and_alerts_keep_their_source(model):
    records = columnar_messages()
    per_reading, per_message = run(model, "per_reading", records), run(model, "per_message", records)
    readings = [orjson.loads(o.value) for o in per_reading if o.topic == "scores"]
    batches = [(o, orjson.loads(o.value)) for o in per_message if o.topic == "scores"]
    assert len(readings) == 3 * 96 and len(batches) == len(records)
    unrolled = {}
    for out, doc in batches:
        offset = int(dict(out.headers)["source_offset"])
        assert out.key == records[offset].key and doc["ts"] == orjson.loads(records[offset].value)["ts"]
        for k, t in enumerate(doc["ts"]):
            # scores are float32: written in their shortest form here, as a double by the per-reading records
            unrolled[(doc["sensor_id"], t)] = (np.float32(doc["score"][k]), doc["anomalous"][k], doc["alerting"][k],
                                               doc["expected"][k], doc["values"][k])
    assert unrolled == {(d["sensor_id"], d["ts"]): (np.float32(d["score"]), d["anomalous"], d["alerting"], d["expected"],
                                                     d["values"]) for d in readings}
    # the same alert events, each with the coordinates of the message that held its reading
    alerts = [(o.value, o.headers) for o in per_reading if o.topic == "alerts"]
    assert alerts and alerts == [(o.value, o.headers) for o in per_message if o.topic == "alerts"]
    for value, headers in alerts:
        event, h = orjson.loads(value), dict(headers)
        source = orjson.loads(records[int(h["source_offset"])].value)
        assert event["sensor_id"] == "s01" == source["sensor_id"]
        assert source["ts"][int(h["source_index"])] == event["ts"]


def test_per_message_records_of_named_channels(model):
    """Columns by channel name, more than one channel: the record's expected and values are objects of arrays
    (orjson used to refuse the non-contiguous column slices)."""
    ts = (T0 + 10.0 * np.arange(8)).tolist()
    value = orjson.dumps({"sensor_id": "p", "ts": ts, "values": {"flow": [1.0 + 0.1 * k for k in range(8)],
                                                                   "temp": [40.0 + k for k in range(8)]}})
    records = [ConsumerRecord("in", 0, 0, 0, 0, b"p", value, None, 3, len(value), [])]
    cfg = ServiceConfig(bootstrap_servers="127.0.0.1:1", input_topics=["in"], scores_topic="scores",
                        alerts_topic="alerts", dead_letter_topic="dlq", group_id="g", checkpoints_enabled=False,
                        score_records="per_message", detector=DetectorConfig(channels=2))
    service = ScoringService(cfg, model)

    async def go() -> list:
        decoded = service._decode(records)
        return service._outputs(records, decoded, await service._score(decoded))

    (doc,) = [orjson.loads(o.value) for o in asyncio.run(go()) if o.topic == "scores"]
    assert doc["ts"] == ts and sorted(doc["values"]) == ["flow", "temp"]
    assert doc["values"]["temp"] == [40.0 + k for k in range(8)] and len(doc["expected"]["flow"]) == 8


# --- channel names per sensor, across batches and a checkpoint ------------------------


def _service(model, **config) -> ScoringService:
    cfg = ServiceConfig(bootstrap_servers="127.0.0.1:1", input_topics=["in"], scores_topic="scores",
                        alerts_topic="alerts", dead_letter_topic="dlq", group_id="g",
                        **{"checkpoints_enabled": False, "detector": DetectorConfig(channels=1), **config})
    return ScoringService(cfg, model)


def feed(service: ScoringService, docs: list[dict], first_offset: int = 0) -> list:
    """One batch of one-reading messages (keyed by sensor, partition 0) through decode, the engine and the outputs."""
    records = []
    for k, doc in enumerate(docs):
        value = orjson.dumps(doc)
        records.append(ConsumerRecord("in", 0, first_offset + k, 0, 0, doc["sensor_id"].encode(), value, None, 3,
                                      len(value), []))

    async def go() -> list:
        decoded = service._decode(records)
        return service._outputs(records, decoded, await service._score(decoded))

    return asyncio.run(go())


def _values_by_sensor(outputs: list) -> dict[str, list]:
    """The `values` field of each score record, by sensor (one per record, per-message records included)."""
    out: dict[str, list] = {}
    for o in outputs:
        if o.topic == "scores":
            doc = orjson.loads(o.value)
            out.setdefault(doc["sensor_id"], []).append(doc["values"])
    return out


@pytest.mark.parametrize("score_records", ["per_reading", "per_message"])
def test_one_sensors_names_leave_the_others_alone(model, score_records):
    """Issue 17: after numeric readings, B's {"temp": 1} made every later record of every sensor an object and
    dead-lettered C's {"flow": 1}. Names belong to a sensor: A stays lists, B is by "temp", C by "flow"."""
    service = _service(model, score_records=score_records)
    feed(service, [{"sensor_id": "A", "ts": T0, "value": 1.0}])
    first = feed(service, [{"sensor_id": "A", "ts": T0 + 10, "value": 1.1},
                           {"sensor_id": "B", "ts": T0, "values": {"temp": 1.0}}], 1)
    later = feed(service, [{"sensor_id": "A", "ts": T0 + 20, "value": 1.2},
                           {"sensor_id": "B", "ts": T0 + 10, "value": 2.0},  # positional: still B's "temp"
                           {"sensor_id": "C", "ts": T0, "values": {"flow": 1.0}},
                           {"sensor_id": "B", "ts": T0 + 20, "values": {"temp": 3.0}}], 3)
    assert [o for o in first + later if o.topic == "dlq"] == []
    values = _values_by_sensor(first + later)
    one = (lambda v: [v]) if score_records == "per_message" else (lambda v: v)  # per message: arrays
    assert values["A"] == [[one(1.1)], [one(1.2)]]
    assert values["B"] == [{"temp": one(1.0)}, {"temp": one(2.0)}, {"temp": one(3.0)}]
    assert values["C"] == [{"flow": one(1.0)}]


def test_a_sensor_that_changes_its_names_gets_wrong_channels(model):
    """B's names are its own: another set from B is dead-lettered (saying which names came and which were
    expected), C's readings and B's next ones in its own names are scored."""
    service = _service(model)
    feed(service, [{"sensor_id": "B", "ts": T0, "values": {"temp": 1.0}},
                   {"sensor_id": "C", "ts": T0, "values": {"flow": 1.0}}])
    outputs = feed(service, [{"sensor_id": "B", "ts": T0 + 10, "values": {"flow": 2.0}},
                             {"sensor_id": "C", "ts": T0 + 10, "values": {"flow": 2.0}},
                             {"sensor_id": "B", "ts": T0 + 20, "values": {"temp": 3.0}}], 2)
    (dead,) = [o for o in outputs if o.topic == "dlq"]
    headers = dict(dead.headers)
    assert dead.key == b"B" and headers["reason"] == b"wrong_channels" and headers["source_offset"] == b"2"
    assert headers["detail"] == b"keys ['flow'] differ from the channels sensor 'B' was first seen with: ['temp']"
    assert _values_by_sensor(outputs) == {"C": [{"flow": 2.0}], "B": [{"temp": 3.0}]}


def test_configured_channel_names_still_name_every_sensor(model):
    service = _service(model, channel_names=["temp"])
    outputs = feed(service, [{"sensor_id": "A", "ts": T0, "value": 1.0},
                             {"sensor_id": "B", "ts": T0, "values": {"temp": 2.0}},
                             {"sensor_id": "C", "ts": T0, "values": {"flow": 3.0}}])
    assert _values_by_sensor(outputs) == {"A": [{"temp": 1.0}], "B": [{"temp": 2.0}]}
    assert [dict(o.headers)["reason"] for o in outputs if o.topic == "dlq"] == [b"wrong_channels"]


def test_channel_names_survive_a_checkpoint(model):
    """A sensor's names go with its changelog record (a header: the set ids are each process's own) and come back
    with its state in another process, whose own sets are numbered otherwise."""
    first = _service(model, checkpoints_enabled=True)
    first.checkpoints.partitions = 1  # what the changelog topic would say (no broker here)
    feed(first, [{"sensor_id": "A", "ts": T0, "value": 1.0}, {"sensor_id": "B", "ts": T0, "values": {"temp": 1.0}},
                 {"sensor_id": "E", "ts": T0, "values": {"temp": 1.0}}])
    records, n, _ = asyncio.run(first.checkpoints.records(first.engine, {TopicPartition("in", 0)}, {}))
    by_key = {o.key: o for o in records}
    assert n == 3 and by_key[b"A"].headers == [] and by_key[b"B"].headers == [("channel_names", b'["temp"]')]

    second = _service(model, checkpoints_enabled=True)
    feed(second, [{"sensor_id": "D", "ts": T0, "values": {"flow": 1.0}}])  # here "flow" is the first set
    restored = [(by_key[s].value, dict(by_key[s].headers).get("channel_names")) for s in (b"A", b"B", b"E")]
    restored[2] = (restored[2][0], b"not json")  # an unreadable header: E restores without names
    assert second.checkpoints.import_states(second.engine, ["A", "B", "E"], restored) == (3, 0, 0)
    outputs = feed(second, [{"sensor_id": "A", "ts": T0 + 10, "value": 1.1},
                            {"sensor_id": "B", "ts": T0 + 10, "values": {"temp": 2.0}},
                            {"sensor_id": "B", "ts": T0 + 20, "values": {"flow": 3.0}},
                            {"sensor_id": "E", "ts": T0 + 10, "values": {"flow": 2.0}}], 1)
    assert _values_by_sensor(outputs) == {"A": [[1.1]], "B": [{"temp": 2.0}], "E": [{"flow": 2.0}]}
    (dead,) = [o for o in outputs if o.topic == "dlq"]
    assert dead.key == b"B" and dict(dead.headers)["reason"] == b"wrong_channels"


def test_names_restored_before_the_engine_exists_read_the_first_batch(model):
    """Channel count unknown at the restore: the states wait for the first reading, and that batch is read by the
    restored sensors' names (B's other names are wrong_channels, not B's new names)."""
    first = _service(model, checkpoints_enabled=True)
    first.checkpoints.partitions = 1
    feed(first, [{"sensor_id": "B", "ts": T0, "values": {"temp": 1.0}}])
    (record,), _, _ = asyncio.run(first.checkpoints.records(first.engine, {TopicPartition("in", 0)}, {}))

    second = _service(model, checkpoints_enabled=True, detector=DetectorConfig())
    assert second.engine is None
    second.checkpoints.import_states(None, ["B"], [(record.value, dict(record.headers)["channel_names"])])
    outputs = feed(second, [{"sensor_id": "B", "ts": T0 + 10, "values": {"flow": 2.0}},
                            {"sensor_id": "B", "ts": T0 + 20, "value": 3.0}])
    assert second.checkpoints.stats.restored == 1
    assert _values_by_sensor(outputs) == {"B": [{"temp": 3.0}]}
    assert [dict(o.headers)["reason"] for o in outputs if o.topic == "dlq"] == [b"wrong_channels"]


def test_alerts_name_the_channel_by_their_sensors_names(model):
    """s01's one channel is "level": its alerts say so, and the other sensors' records stay lists."""
    outputs = run(model, "per_reading", columnar_messages(named="level"))
    alerts = [orjson.loads(o.value) for o in outputs if o.topic == "alerts"]
    assert alerts and all(a["sensor_id"] == "s01" and a["channel"] == "level" for a in alerts)
    values = _values_by_sensor(outputs)
    assert all(isinstance(v, list) for s in ("s00", "s02") for v in values[s])
    assert all(list(v) == ["level"] for v in values["s01"])
