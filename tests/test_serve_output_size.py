"""An output larger than its topic accepts is dead-lettered before it is sent (issue 17, item 7).

It used to cost a MessageSizeTooLargeError, a new producer, a stall and one increment of
hiddenstate_produce_failures_total (the counter behind an alert), and a score record that could never
fit was resent for ever. Now each output topic's `max.message.bytes` is read at connect: record
batches stay under it, and an output that alone would not fit goes to the dead-letter topic as
`output_too_large` (with its source headers, without its bytes). Against a real broker whose scores
topic takes at most 2,000 bytes per batch.
"""

from __future__ import annotations

import asyncio

import orjson
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from consumers.service import ScoringService
from tests.kafka_broker import (  # noqa: F401 - kafka_bootstrap is a fixture
    end_offsets,
    header,
    kafka_bootstrap,
    produce,
    read_all,
    unique_name,
    wait_committed,
)
from tests.test_serve_kafka import model, service_config  # noqa: F401 - a fixture

T0 = 1_700_000_000
SCORES_LIMIT = 2_000


def _columns(sensor: str, start: int, n: int) -> tuple[bytes, bytes]:
    return sensor.encode(), orjson.dumps({"sensor_id": sensor, "ts": [T0 + start + i for i in range(n)],
                                          "value": [1.0 + 0.1 * ((start + i) % 7) for i in range(n)]})


def test_an_output_too_large_for_its_topic_is_dead_lettered_not_retried(kafka_bootstrap, model):  # noqa: F811
    # 20 small messages (one score record each, together far more than one 2,000-byte batch), then one of
    # 60 readings whose one score record is larger than the scores topic takes, then 5 small ones again
    messages = [_columns(f"s{i % 4}", 3 * (i // 4), 3) for i in range(20)]
    big = len(messages)
    messages.append(_columns("big", 0, 60))
    messages += [_columns(f"s{i % 4}", 100 + 3 * (i // 4), 3) for i in range(5)]

    async def scenario():
        topics = {k: unique_name(f"t-{k}") for k in ("in", "scores", "alerts", "dlq")}
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            await admin.create_topics([
                NewTopic(topics["in"], 1, 1), NewTopic(topics["alerts"], 1, 1), NewTopic(topics["dlq"], 1, 1),
                NewTopic(topics["scores"], 1, 1, topic_configs={"max.message.bytes": str(SCORES_LIMIT)}),
            ])
        finally:
            await admin.close()
        group = unique_name("g")
        cfg = service_config(kafka_bootstrap, topics, group, score_records="per_message", max_batch=100,
                             retry_initial_seconds=0.2, retry_max_seconds=1)
        await produce(kafka_bootstrap, topics["in"], messages)
        ends = await end_offsets(kafka_bootstrap, topics["in"])
        async with ScoringService(cfg, model) as service:
            assert service.delivery.limits[topics["scores"]] == SCORES_LIMIT
            task = asyncio.create_task(service.run())
            try:
                await wait_committed(kafka_bootstrap, group, topics["in"], ends, timeout=60)
            finally:
                service.request_stop()
                try:
                    await asyncio.wait_for(task, 10)
                except TimeoutError:  # stuck resending (the defect): do not hang the test
                    task.cancel()
        scores = await read_all(kafka_bootstrap, topics["scores"])
        dlq = await read_all(kafka_bootstrap, topics["dlq"])
        return service, scores, dlq

    service, scores, dlq = asyncio.run(scenario())
    assert service.stats.produce_retries == 0  # hiddenstate_produce_failures_total: for real failures only
    assert len(dlq) == 1
    letter = dlq[0]
    assert header(letter, "reason") == "output_too_large" and letter.key == b"big" and letter.value is None
    assert header(letter, "source_offset") == str(big) and int(header(letter, "truncated")) > SCORES_LIMIT
    assert header(letter, "output_topic").startswith("t-scores") and "max.message.bytes 2000" in header(
        letter, "detail")
    assert sorted(int(header(r, "source_offset")) for r in scores) == [o for o in range(len(messages)) if o != big]
    assert service.stats.dead_lettered == {"output_too_large": 1}
    assert service.stats.scored == 20 * 3 + 60 + 5 * 3  # the big message's readings were scored all the same
