"""Changelog checkpoints of the engine's per-sensor state: writing them, and restoring from them (docs/state.md).

The changelog is a compacted topic keyed by sensor id; its partition p holds the sensors
read from input partition p. At each commit the service writes the records
(`Engine.export_state`, format in detector/state_codec.py) of the sensors that batch
changed, plus one *position marker* per input partition of the batch (key
`\\x00offset\\x00<topic>`, value the next input offset, header `kind=offset`): the state in
changelog partition p is the state after consuming input partition p up to that offset. A sensor
with channel names (consumers/channels.py) has them in its record's `channel_names` header.
The records and markers are acknowledged before the consumer offsets are committed.

On assignment the new owner reads the matching changelog partitions from the beginning to
their end offsets (latest record per key wins), imports the states and seeks each input
partition to its marker when the marker is ahead of the group's committed offset (the
outputs up to the marker were acknowledged before the marker was written, so nothing is
skipped that was not produced, and state and position agree).

`Checkpointer` does both for the service; `ensure_changelog` makes the topic, `read_changelog`
reads it back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from consumers.channels import NAMES_HEADER, ChannelNames
from consumers.config import ServiceConfig
from consumers.crash import crash_point
from consumers.logs import error_text, partitions_text
from consumers.metrics import PREFIX, ArrayHistogram
from consumers.outputs import Output
from consumers.ownership import Ownership
from consumers.topics import ensure_compacted

if TYPE_CHECKING:
    from detector.engine import Engine

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
    """
    def inputs(parts: dict[str, int]) -> int:
        return max([parts.get(t, 0) for t in config.input_topics] + [1])

    parts = await ensure_compacted(config, config.changelog_name, inputs, config.changelog_replication_factor,
                                   describe=config.input_topics)
    have, wanted = parts[config.changelog_name], inputs(parts)
    if have < wanted:
        log.warning("changelog topic %s has %d partitions, fewer than the input's %d: the sensors of input "
                    "partitions >= %d are not checkpointed", config.changelog_name, have, wanted, have)
    return have


@dataclass
class Restored:
    # sensor -> (partition, record, its channel_names header or None)
    states: dict[str, tuple[int, bytes, bytes | None]] = field(default_factory=dict)
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
                        names = next((v for k, v in r.headers or () if k == NAMES_HEADER), None)
                        out.states[sensor] = (tp.partition, r.value, names)
            for tp, end in todo.items():
                if tp not in done and await consumer.position(tp) >= end:
                    done.add(tp)
    finally:
        await consumer.stop()
    return out


class Checkpointer:
    """The changelog of one service: the records of each batch's changed sensors, and the restore on assignment."""

    def __init__(self, config: ServiceConfig, ownership: Ownership, registry: CollectorRegistry,
                 names: ChannelNames) -> None:
        self.config = config
        self.ownership = ownership  # the sensors changed since the last checkpoint; owners of restored sensors
        self.names = names  # each sensor's channel names: a header of its record
        self.stats = CheckpointStats()
        self.metrics = CheckpointMetrics(registry, self.stats)
        self.partitions = 0  # of the changelog topic: input partitions from here on are not checkpointed
        self.restoring = False
        self._pending: dict[str, tuple[bytes, bytes | None]] = {}  # restored before the engine existed (channels
        # unknown): record and channel_names header by sensor

    async def open(self) -> None:
        """Make the changelog topic if it is missing, learn its partition count."""
        self.partitions = await ensure_changelog(self.config)

    # --- writing ---------------------------------------------------------------------------
    async def records(self, engine: Engine | None, assigned: set[TopicPartition],
                      offsets: dict[TopicPartition, int]) -> tuple[list[Output], int, int]:
        """The changelog records of the sensors changed since the last checkpoint, and the position markers.

        Returns them with the count and bytes of the state records (the markers not counted).
        """
        topic = self.config.changelog_name
        touched = self.ownership.take_touched()
        sensors = [s for s, tp in touched.items() if tp in assigned and tp.partition < self.partitions]
        outputs: list[Output] = []
        if sensors and engine is not None:
            records = await asyncio.to_thread(engine.export_state, sensors)
            sets = self.names.bound(sensors).tolist()
            for sensor, record, set_id in zip(sensors, records, sets):
                if record is None:  # evicted meanwhile: nothing to keep (its old record restores an older state)
                    continue
                outputs.append(Output(topic, sensor.encode(), record, self.names.header_of(set_id),
                                      touched[sensor].partition))
        n_records = len(outputs)
        n_bytes = sum(len(o.value or b"") for o in outputs)
        for tp, offset in offsets.items():
            if tp in assigned and tp.partition < self.partitions:
                outputs.append(Output(topic, marker_key(tp.topic), str(offset).encode(),
                                      [(KIND_HEADER, b"offset")], tp.partition))
        return outputs, n_records, n_bytes

    def count(self, n_records: int, n_bytes: int, started: float) -> None:
        """A checkpoint acknowledged: `started` is its `time.perf_counter()` when it began."""
        stats = self.stats
        stats.records += n_records
        stats.bytes += n_bytes
        stats.checkpoints += 1
        self.metrics.checkpoint_duration.observe(time.perf_counter() - started)

    # --- restoring -------------------------------------------------------------------------
    async def restore(self, consumer: AIOKafkaConsumer, engine: Engine | None, tps: set[TopicPartition]) -> None:
        """Restore the sensors of newly assigned partitions from the changelog, and seek to the markers."""
        cfg = self.config
        parts = {tp.partition for tp in tps if tp.partition < self.partitions}
        if not parts:
            return
        started = time.perf_counter()
        self.restoring = True
        try:
            try:
                restored = await read_changelog(cfg, parts, timeout=cfg.restore_timeout_seconds)
            except (KafkaError, TimeoutError, OSError) as exc:
                # observed too: a restore that hit restore_timeout_seconds is the slowest of all (alert rule
                # HiddenstateRestoreSlow reads this histogram)
                self.metrics.restore_duration.observe(time.perf_counter() - started)
                log.error("restore from %s failed: %s; partitions %s start with fresh state",
                          cfg.changelog_name, error_text(exc), partitions_text(tps))
                return
            crash_point("restoring")
            by_partition = {}
            for tp in sorted(tps, key=lambda t: (t.topic, t.partition)):
                by_partition.setdefault(tp.partition, tp)
            ids = list(restored.states)
            self.ownership.claim(ids, [by_partition[restored.states[s][0]] for s in ids])
            report = self.import_states(engine, ids, [(record, names) for _p, record, names in
                                                      (restored.states[s] for s in ids)])
            seeks = []
            for tp in tps:
                marker = restored.markers.get(tp)
                if marker is None:
                    continue
                committed = await consumer.committed(tp)
                if committed is None or committed < marker:
                    consumer.seek(tp, marker)
                    seeks.append(f"{tp.topic}[{tp.partition}]:{committed}->{marker}")
            elapsed = time.perf_counter() - started
            self.metrics.restore_duration.observe(elapsed)
            self.stats.restores += 1
            log.info("restored state of partitions %s from %s in %.2fs: %d record(s) read, %d sensor(s) restored, "
                     "%d model_changed, %d refused%s", partitions_text(tps), cfg.changelog_name, elapsed,
                     restored.records_read, report[0], report[1], report[2],
                     f"; positions ahead of the committed offsets: {', '.join(seeks)}" if seeks else "",
                     extra={"restored": report[0], "model_changed": report[1], "refused": report[2],
                            "restore_seconds": round(elapsed, 3)})
        finally:
            self.restoring = False

    def engine_ready(self, engine: Engine) -> None:
        """The engine exists now: import the states restored before it did."""
        if self._pending:
            pending, self._pending = self._pending, {}
            self.import_states(engine, list(pending), list(pending.values()))

    def import_states(self, engine: Engine | None, ids: list[str],
                      records: list[tuple[bytes, bytes | None]]) -> tuple[int, int, int]:
        """Import states into the engine (or keep them until it exists); returns (restored, model_changed, refused).

        records: each sensor's state record and the `channel_names` header it came with (None: no names).
        Without an engine yet (channel count learnt from the first reading) the states wait
        (the restore's log line counts them as restored); `engine_ready` imports them, and the
        warnings below then say what was refused or restarted.
        """
        if not ids:
            return 0, 0, 0
        if engine is None:
            self._pending.update(zip(ids, records))
            return len(ids), 0, 0
        report = engine.import_state(ids, [record for record, _names in records])
        lost = self.names.restore(ids, [names for _record, names in records])
        if lost:
            log.warning("%d restored sensor(s) lost their channel names (unreadable channel_names header, or more "
                        "than %d name sets): they take names again from their next object", lost, self.names.max_sets)
        stats = self.stats
        stats.restored += report.restored
        stats.model_changed += report.model_changed
        stats.refused += report.refused
        if report.model_changed:
            log.warning("%d sensor state(s) were written under other model weights: statistics kept, hidden state "
                        "restarted", report.model_changed)
        if report.refused:
            log.warning("%d changelog record(s) refused (other format, layout or channel count): those sensors start "
                        "fresh", report.refused)
        return report.restored, report.model_changed, report.refused
