"""A real Kafka broker for the service tests, started with scripts/kafka.sh.

Use it from a test module by importing the fixture:
`from tests.kafka_broker import kafka_bootstrap  # noqa: F401`. The `kafka_bootstrap`
fixture (session scope) starts one broker on a dedicated port (KAFKA_PORT=19092,
KAFKA_CONTROLLER_PORT=19093, overridable with HIDDENSTATE_TEST_KAFKA_PORT /
HIDDENSTATE_TEST_KAFKA_CONTROLLER_PORT) and stops it at the end of the session (with
--clean; a broker that was already running is used and left running). If
HIDDENSTATE_TEST_BOOTSTRAP is set, that broker is used as is. If the broker cannot be
started (no Java, no Maven cache), the tests that need it are skipped with the reason,
unless HIDDENSTATE_REQUIRE_KAFKA=1 (meant for CI) turns that into a failure.

Helpers: `create_topics`, `produce`, `read_all`, `committed_offsets`, `end_offsets`
and `unique_name` for per-test topics and groups.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "kafka.sh"


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    external = os.environ.get("HIDDENSTATE_TEST_BOOTSTRAP")
    if external:
        yield external
        return
    env = dict(os.environ)
    env["KAFKA_PORT"] = os.environ.get("HIDDENSTATE_TEST_KAFKA_PORT", "19092")
    env["KAFKA_CONTROLLER_PORT"] = os.environ.get("HIDDENSTATE_TEST_KAFKA_CONTROLLER_PORT", "19093")
    proc = subprocess.run([str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        message = f"scripts/kafka.sh start failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
        if os.environ.get("HIDDENSTATE_REQUIRE_KAFKA") == "1":
            pytest.fail(message)
        pytest.skip(message)
    bootstrap = proc.stdout.strip().splitlines()[-1]
    # a broker that was already up (another session, a developer's) is used but not stopped
    ours = "already" not in proc.stderr and "not started by this script" not in proc.stderr
    try:
        yield bootstrap
    finally:
        if ours:  # --clean: the per-test topics are throwaway; do not let them pile up across sessions
            subprocess.run([str(SCRIPT), "stop", "--clean"], env=env, capture_output=True, text=True, timeout=120)


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def create_topics(bootstrap: str, topics: dict[str, int]) -> None:
    """Create topics {name: partitions} and wait until the broker has their metadata."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, n, 1) for name, n in topics.items()])
    finally:
        await admin.close()


async def produce(
    bootstrap: str,
    topic: str,
    messages: Sequence[tuple[bytes | None, bytes | None]],
    partition_of: dict[bytes, int] | None = None,
) -> list[tuple[int, int]]:
    """Send (key, value) pairs in order; returns (partition, offset) of each."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_request_size=4_000_000)
    await producer.start()
    try:
        futures = []
        for key, value in messages:
            partition = partition_of.get(key) if partition_of and key is not None else None
            futures.append(await producer.send(topic, value, key=key, partition=partition))
        metas = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return [(m.partition, m.offset) for m in metas]


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """The partitions of `topic` as a started consumer knows them, refreshing its metadata once if it knows none."""
    parts = consumer.partitions_for_topic(topic) or set()
    if not parts:
        await consumer._client.force_metadata_update()
        parts = consumer.partitions_for_topic(topic) or set()
    return [TopicPartition(topic, p) for p in sorted(parts)]


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(await topic_partitions(consumer, topic))
    finally:
        await consumer.stop()
    return {tp.partition: off for tp, off in ends.items()}


async def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}


async def read_all(bootstrap: str, topic: str, timeout: float = 30.0) -> list:
    """Every record of `topic` from the beginning up to its current end offsets."""
    ends = await end_offsets(bootstrap, topic)
    wanted = {p: e for p, e in ends.items() if e > 0}
    out: list = []
    if not wanted:
        return out
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in wanted]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        done: set[int] = set()
        while len(done) < len(wanted):
            if loop.time() > deadline:
                raise TimeoutError(f"read_all({topic}): got {len(out)} records, partitions done {sorted(done)}")
            batch = await consumer.getmany(timeout_ms=500)
            for tp, records in batch.items():
                for r in records:
                    if r.offset < wanted[tp.partition]:
                        out.append(r)
                    if r.offset + 1 >= wanted[tp.partition]:
                        done.add(tp.partition)
    finally:
        await consumer.stop()
    return out


async def wait_committed(bootstrap: str, group: str, topic: str, target: dict[int, int], timeout: float = 60.0,
                         predicate=None) -> dict[int, int]:
    """Poll the group's committed offsets until they reach `target` (or `predicate(committed)` holds)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    committed: dict[int, int] = {}
    while loop.time() < deadline:
        try:
            committed = await committed_offsets(bootstrap, group, topic)
        except KafkaError as exc:  # the group coordinator may still be loading (first use of __consumer_offsets)
            if not exc.retriable:
                raise
            await asyncio.sleep(0.5)
            continue
        if predicate is not None:
            if predicate(committed):
                return committed
        elif all(committed.get(p, 0) >= e for p, e in target.items()):
            return committed
        await asyncio.sleep(0.2)
    raise TimeoutError(f"committed offsets of {group} on {topic}: {committed}, wanted {target}")


def header(record, name: str) -> str | None:
    for k, v in record.headers or ():
        if k == name:
            return v.decode()
    return None
