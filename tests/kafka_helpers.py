"""Kafka helpers of the service tests and the fault benchmark (benchmarks/chaos.py), without pytest.

Per-test topics and groups (`unique_name`), reading topics back (`read_all`, `read_topic` with
read_committed or not), offsets (`end_offsets`, `committed_offsets`, `wait_committed`), producing
(`produce`), and `hiddenstate serve` as a subprocess (`serve_command`, `start_serve`). The pytest
fixture of the broker is in tests/kafka_broker.py, which re-exports these.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

ROOT = Path(__file__).resolve().parent.parent


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


async def read_topic(bootstrap: str, topic: str, committed_only: bool, timeout: float = 60.0) -> list:
    """Every record of `topic` up to its end (the last stable offset with read_committed)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                isolation_level="read_committed" if committed_only else "read_uncommitted")
    await consumer.start()
    out: list = []
    try:
        ends = await consumer.end_offsets(await topic_partitions(consumer, topic))
        todo = {tp: e for tp, e in ends.items() if e > 0}
        if not todo:
            return out
        consumer.assign(list(todo))
        await consumer.seek_to_beginning(*todo)
        deadline = time.monotonic() + timeout
        while True:
            positions = {tp: await consumer.position(tp) for tp in todo}
            if all(positions[tp] >= e for tp, e in todo.items()):
                return out
            if time.monotonic() > deadline:
                raise TimeoutError(f"read_topic({topic}): {positions} of {todo}")
            batch = await consumer.getmany(timeout_ms=300)
            for tp, records in batch.items():
                out.extend(r for r in records if r.offset < todo[tp])
    finally:
        await consumer.stop()


def serve_command(bootstrap: str, topics: dict[str, str], group: str, model: str | Path, *flags: str) -> list[str]:
    """`python -m consumers.commands.serve` on `topics` (keys in, scores, alerts, dlq) as `group`, its HTTP endpoints
    on any free port of 127.0.0.1; `flags` appended."""
    return [
        sys.executable, "-m", "consumers.commands.serve",
        "--bootstrap", bootstrap, "--input-topic", topics["in"], "--scores-topic", topics["scores"],
        "--alerts-topic", topics["alerts"], "--dead-letter-topic", topics["dlq"], "--group", group,
        "--model", str(model), "--metrics-address", "127.0.0.1", "--metrics-port", "0", *flags,
    ]


async def start_serve(cmd: list[str], log_path: Path, **env: str) -> asyncio.subprocess.Process:
    """Start `cmd` in the repository, stderr to `log_path`, without the caller's HIDDENSTATE_* variables but with
    `env` (HIDDENSTATE_CRASH_AT, say)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("HIDDENSTATE_")}
    return await asyncio.create_subprocess_exec(*cmd, cwd=ROOT, env={**base, **env}, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=log_path.open("wb"))
