"""`hiddenstate serve` with a look-ahead model (bidir) against the real broker: late scores, their delay."""

from __future__ import annotations

import asyncio

import orjson
import pytest
import torch

from consumers.service import ScoringService
from detector.model.store import Model
from detector.model.networks import build_network
from tests.kafka_broker import (  # noqa: F401 - kafka_bootstrap is a fixture
    end_offsets,
    kafka_bootstrap,
    produce,
    read_all,
    unique_name,
    wait_committed,
)
from tests.test_serve_kafka import fleet, new_topics, reference, service_config

K = 3


@pytest.fixture(scope="module")
def bidir() -> Model:
    torch.manual_seed(0)
    return Model(name="bidir-test", network=build_network({"architecture": "bidir", "hidden_size": 8, "lookahead": K}))


def test_a_look_ahead_model_scores_each_reading_k_readings_later(kafka_bootstrap, bidir):
    sensors, steps = 6, 40
    messages = fleet(sensors=sensors, steps=steps)
    ref_scores, _ = reference(bidir, messages)

    async def scenario():
        topics = await new_topics(kafka_bootstrap, partitions=2)
        await produce(kafka_bootstrap, topics["in"], messages)
        ends = await end_offsets(kafka_bootstrap, topics["in"])
        group = unique_name("g")
        async with ScoringService(service_config(kafka_bootstrap, topics, group, max_batch=50), bidir) as service:
            task = asyncio.create_task(service.run())
            await wait_committed(kafka_bootstrap, group, topics["in"], ends, timeout=120)
            service.request_stop()
            await asyncio.wait_for(task, 20)
        return await read_all(kafka_bootstrap, topics["scores"])

    records = asyncio.run(scenario())
    docs = [orjson.loads(r.value) for r in records]
    # every reading but each sensor's last K is scored, once, K readings late, with its own time and value
    assert len(docs) == sensors * (steps - K)
    sent = {(orjson.loads(v)["sensor_id"], orjson.loads(v)["ts"]): orjson.loads(v)["value"] for _, v in messages}
    last = {s: max(t for (sid, t) in sent if sid == s) for s in {sid for sid, _ in sent}}
    for doc in docs:
        key = (doc["sensor_id"], doc["ts"])
        assert doc["delay"] == K
        assert doc["values"] == [sent[key]]
        assert doc["ts"] <= last[doc["sensor_id"]] - 10 * K  # the readings after it arrived first
        assert abs(doc["score"] - ref_scores[key]) < 1e-4
