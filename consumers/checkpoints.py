"""Changelog checkpoints of the engine's per-sensor state, and their restore (see docs/state.md).

The changelog is a compacted topic keyed by sensor id; its partition p holds the sensors
read from input partition p. At each commit the service writes the records
(`Engine.export_state`, format in detector/state_codec.py) of the sensors that batch
changed, plus one *position marker* per input partition of the batch (key
`\\x00offset\\x00<topic>`, value the next input offset, header `kind=offset`): the state in
changelog partition p is the state after consuming input partition p up to that offset.
The records and markers are acknowledged before the consumer offsets are committed.

On assignment the new owner reads the matching changelog partitions from the beginning to
their end offsets (latest record per key wins), imports the states and seeks each input
partition to its marker when the marker is ahead of the group's committed offset (the
outputs up to the marker were acknowledged before the marker was written, so nothing is
skipped that was not produced, and state and position agree).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from consumers.metrics import PREFIX, ArrayHistogram

if TYPE_CHECKING:
    from consumers.config import ServiceConfig

log = logging.getLogger("hiddenstate.serve")

MARKER_PREFIX = b"\x00offset\x00"
KIND_HEADER = "kind"
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
                    300.0)


def marker_key(topic: str) -> bytes:
    return MARKER_PREFIX + topic.encode()


@dataclass
class CheckpointStats:
    records: int = 0
    bytes: int = 0
    checkpoints: int = 0
    restores: int = 0
    restored: int = 0
    refused: int = 0
    model_changed: int = 0


class CheckpointMetrics(Collector):
    """Checkpoint and restore metrics, registered on the service's registry."""

    def __init__(self, registry, stats: CheckpointStats) -> None:
        self.stats = stats
        self.checkpoint_duration = ArrayHistogram(
            PREFIX + "checkpoint_duration_seconds",
            "Time to write one checkpoint (changelog records of the sensors a batch changed) until acknowledged.",
            DURATION_BUCKETS, registry,
        )
        self.restore_duration = ArrayHistogram(
            PREFIX + "restore_duration_seconds",
            "Time to restore the state of newly assigned partitions from the changelog (failed ones included).",
            DURATION_BUCKETS, registry,
        )
        registry.register(self)

    def describe(self):
        return []

    def collect(self):
        s = self.stats
        for name, doc, value in (
            ("checkpoint_records", "Sensor state records written to the changelog.", s.records),
            ("checkpoint_bytes", "Bytes of sensor state records written to the changelog.", s.bytes),
            ("restored_sensors", "Sensor states restored from the changelog.", s.restored),
            ("restore_refused", "Changelog records refused at restore (unreadable: other format or layout).",
             s.refused),
            ("restore_model_changed",
             "Changelog records written under other model weights: statistics kept, hidden state restarted.",
             s.model_changed),
        ):
            yield CounterMetricFamily(PREFIX + name, doc, value=value)


async def ensure_changelog(config: ServiceConfig) -> int:
    """Create the compacted changelog topic if it is missing; returns its partition count.

    Partitions: the most of any input topic's (changelog partition p mirrors input partition p).
    Only topics that exist are described: aiokafka's `describe_topics` is a Metadata request that
    lets the broker auto-create a missing topic (`auto.create.topics.enable`, on by default), which
    would make the changelog an ordinary topic with `cleanup.policy=delete`.
    """
    admin = AIOKafkaAdminClient(**config.kafka_client_kwargs())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        named = [t for t in (*config.input_topics, config.changelog_name) if t in existing]
        described = await admin.describe_topics(named) if named else []
        parts: dict[str, int] = {}
        for t in described:
            if t.get("error_code", 0) == 0:
                parts[t["topic"]] = len(t.get("partitions", []))
        wanted = max([parts.get(t, 0) for t in config.input_topics] + [1])
        have = parts.get(config.changelog_name, 0)
        if have:
            if have < wanted:
                log.warning("changelog topic %s has %d partitions, fewer than the input's %d: the sensors of input "
                            "partitions >= %d are not checkpointed", config.changelog_name, have, wanted, have)
            await _warn_unless_compacted(admin, config.changelog_name)
            return have
        try:
            await admin.create_topics([NewTopic(
                config.changelog_name, wanted, config.changelog_replication_factor,
                topic_configs={"cleanup.policy": "compact", "min.compaction.lag.ms": "0"},
            )])
            log.info("created the compacted changelog topic %s with %d partition(s)", config.changelog_name, wanted)
        except TopicAlreadyExistsError:  # made meanwhile (another instance, or just before our metadata saw it)
            await _warn_unless_compacted(admin, config.changelog_name)
        return wanted
    finally:
        await admin.close()


async def _warn_unless_compacted(admin: AIOKafkaAdminClient, topic: str) -> None:
    """Log a warning if an existing changelog topic is not compacted (its old states are deleted, it grows)."""
    try:
        response = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        error_code, _message, _type, _name, entries = response[0].resources[0][:5]
    except (KafkaError, IndexError) as exc:  # no DescribeConfigs ACL, say: nothing to check with
        log.debug("cannot read the configuration of %s: %s", topic, exc)
        return
    policy = next((value for name, value, *_ in entries if name == "cleanup.policy"), None)
    if error_code == 0 and policy is not None and "compact" not in policy.split(","):
        log.warning("changelog topic %s has cleanup.policy=%s, not compact: sensor states older than its retention "
                    "are deleted (those sensors restore fresh) and it keeps every version until then. Set "
                    "cleanup.policy=compact on it (kafka-configs.sh --alter --entity-type topics --entity-name %s "
                    "--add-config cleanup.policy=compact)", topic, policy, topic)


@dataclass
class Restored:
    states: dict[str, tuple[int, bytes]] = field(default_factory=dict)  # sensor -> (partition, record)
    markers: dict[TopicPartition, int] = field(default_factory=dict)  # input tp -> next offset
    records_read: int = 0


async def read_changelog(config: ServiceConfig, partitions: Iterable[int], timeout: float = 300.0) -> Restored:
    """The latest record per key of changelog partitions `partitions`, read to their current end."""
    out = Restored()
    wanted = sorted(set(partitions))
    if not wanted:
        return out
    consumer = AIOKafkaConsumer(
        **config.kafka_client_kwargs(), group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1_048_576, fetch_max_bytes=32 * 1_048_576,
        isolation_level="read_committed" if config.exactly_once else "read_uncommitted",
    )
    await consumer.start()
    try:
        tps = [TopicPartition(config.changelog_name, p) for p in wanted]
        ends = await consumer.end_offsets(tps)
        todo = {tp: end for tp, end in ends.items() if end > 0}
        if not todo:
            return out
        consumer.assign(list(todo))
        await consumer.seek_to_beginning(*todo)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        done: set[TopicPartition] = set()
        while len(done) < len(todo):
            if loop.time() > deadline:
                raise TimeoutError(f"restore from {config.changelog_name}: not at the end after {timeout:.0f}s")
            batch = await consumer.getmany(timeout_ms=200, max_records=50_000)
            for tp, records in batch.items():
                for r in records:
                    if r.offset >= todo[tp]:
                        continue
                    out.records_read += 1
                    key = r.key or b""
                    if key.startswith(MARKER_PREFIX):
                        if r.value is not None:
                            topic = key[len(MARKER_PREFIX):].decode("utf-8", "replace")
                            out.markers[TopicPartition(topic, tp.partition)] = int(r.value)
                        continue
                    sensor = key.decode("utf-8", "replace")
                    if r.value is None:
                        out.states.pop(sensor, None)
                    else:
                        out.states[sensor] = (tp.partition, r.value)
            for tp, end in todo.items():
                if tp not in done and await consumer.position(tp) >= end:
                    done.add(tp)
    finally:
        await consumer.stop()
    return out
