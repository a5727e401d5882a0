"""The service's outputs for a batch, without a broker: per-reading and per-message score records agree."""

from __future__ import annotations

import asyncio

import numpy as np
import orjson
import pytest
from aiokafka.structs import ConsumerRecord

from consumers.config import ServiceConfig
from consumers.service import ScoringService
from detector.config import DetectorConfig
from detector.model.store import load_model, shipped_model_names, untrained

T0 = 1_700_000_000.0


@pytest.fixture(scope="module")
def model():
    return load_model("gru-default") if "gru-default" in shipped_model_names() else untrained(8, 1)


def columnar_messages(per_message: int = 12, steps: int = 96) -> list[ConsumerRecord]:
    """Three sensors' sines as columnar batches; s01 jumps by 40 at steps 60-65 (an alert)."""
    rng = np.random.default_rng(2)
    records = []
    for first in range(0, steps, per_message):
        for s in range(3):
            sid = f"s{s:02d}"
            t = np.arange(first, first + per_message)
            v = 10 + 2 * np.sin(t / 8.0 + s) + 0.1 * rng.standard_normal(t.size)
            if sid == "s01":
                v[(t >= 60) & (t < 66)] += 40.0
            value = orjson.dumps({"sensor_id": sid, "ts": (T0 + 10.0 * t).tolist(), "value": v.tolist()})
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
            decoded = service.decoder.decode([(m.key, m.value) for m in messages])
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
        decoded = service.decoder.decode([(m.key, m.value) for m in records])
        return service._outputs(records, decoded, await service._score(decoded))

    (doc,) = [orjson.loads(o.value) for o in asyncio.run(go()) if o.topic == "scores"]
    assert doc["ts"] == ts and sorted(doc["values"]) == ["flow", "temp"]
    assert doc["values"]["temp"] == [40.0 + k for k in range(8)] and len(doc["expected"]["flow"]) == 8
