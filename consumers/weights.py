"""One weights version per consumer group: the learnt weights on a compacted topic (`learning = "online"`,
`fit_first`).

The weights topic (`weights_topic`, default `<group_id>.weights`; one partition, compacted) holds
one record per version, key = the group id, value = a `WeightsVersion` (detector/model/versions.py:
the tensors with the base model's hash, architecture, channel count, version number, time and writer).

- One instance learns: the owner of partition 0 of the first input topic (it moves with rebalances).
  Its engine's learner and fit on the first readings publish (`OnlineLearner.publish`,
  `HistoryFit.publish`): a new version does not change the weights it scores with; it is written to
  the topic. A group whose topic holds a version already does not fit again.
- Every instance, the learner included, follows the topic and adopts the newest record of its group
  at a batch boundary (`sync`), so the group scores with one version; each score record and alert
  names the version that scored it. Records that do not fit the loaded model (another base, shape or
  channel count) are refused, logged and counted, and the instance keeps its version.
- At start the topic is read to its end first: a restart or a new instance resumes the group's
  newest version, not the shipped weights. A new learner goes on from that version.

Sensors keep their hidden state across a version change (see docs/models.md for the measurement).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from consumers.clients import quietly_stop
from consumers.config import ServiceConfig
from consumers.logs import error_text
from consumers.metrics import PREFIX
from consumers.topics import ensure_compacted
from detector.engine import Engine
from detector.errors import ModelError
from detector.model.versions import WeightsVersion

log = logging.getLogger("hiddenstate.serve")

RECORD_BYTES = 16 * 1_048_576
"""The most bytes of one weights record this service reads or writes (the broker's topic limit applies too)."""
KEPT = 8
"""Records of the group kept until the next batch boundary: if the newest does not fit, the one before it may."""


@dataclass
class WeightsStats:
    published: int = 0
    publish_failures: int = 0
    adopted: int = 0
    refused: int = 0


class WeightsTopic:
    """The group's weights versions: read at start, followed while running, written by the learning instance."""

    def __init__(self, config: ServiceConfig, registry: CollectorRegistry) -> None:
        self.config = config
        self.topic = TopicPartition(config.weights_name, 0)
        self.key = config.group_id.encode()
        self.stats = WeightsStats()
        self.learns = False
        """Whether this instance learns: it owns partition 0 of the first input topic."""
        self.current: WeightsVersion | None = None  # the version scoring now (None: the loaded weights)
        self.engine: Engine | None = None  # for the metrics: its learner's counts
        self._unseen: list[bytes] = []  # the group's records since the last batch boundary, oldest first
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._follow: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[None]] = set()
        registry.register(WeightsMetrics(self))

    async def open(self) -> None:
        """Make the topic if it is missing, read it to its end (the group's newest version), then follow it."""
        cfg = self.config
        await self.close()  # a connect retried after a failure starts afresh
        await ensure_compacted(cfg, self.topic.topic, lambda _known: 1, cfg.changelog_replication_factor)
        consumer = AIOKafkaConsumer(**cfg.kafka_client_kwargs(), group_id=None, enable_auto_commit=False,
                                    auto_offset_reset="earliest", max_partition_fetch_bytes=RECORD_BYTES,
                                    fetch_max_bytes=RECORD_BYTES)
        producer = AIOKafkaProducer(**cfg.kafka_client_kwargs(), acks="all", max_request_size=RECORD_BYTES)
        try:
            await consumer.start()
            await producer.start()
            self._unseen = (await read_group(consumer, self.topic, self.key))[-KEPT:]
        except BaseException:
            await quietly_stop(consumer, producer)
            raise
        self._consumer, self._producer = consumer, producer
        if self._unseen:
            log.info("weights topic %s: the group's newest version will be adopted at the first batch", self.topic.topic)
        self._follow = asyncio.create_task(self._follow_topic(), name="hiddenstate-weights")

    async def close(self) -> None:
        """Wait for the versions being written, stop following."""
        if self._sends:
            await asyncio.gather(*self._sends, return_exceptions=True)
        if self._follow is not None:
            self._follow.cancel()
            await asyncio.gather(self._follow, return_exceptions=True)
            self._follow = None
        consumer, producer, self._consumer, self._producer = self._consumer, self._producer, None, None
        await quietly_stop(consumer, producer)

    def assigned(self, partitions: set[TopicPartition]) -> None:
        """After a rebalance: this instance learns while it owns partition 0 of the first input topic."""
        learns = TopicPartition(self.config.input_topics[0], 0) in partitions
        if learns != self.learns:
            log.info("online learning %s on this instance", "starts" if learns else "stops")
        self.learns = learns

    def sync(self, engine: Engine) -> None:
        """At a batch boundary (the engine not stepping): publish what its learner made, adopt the newest version."""
        self.engine = engine
        for learns in (engine.learner, engine.fitter):
            if learns is not None:
                learns.publish, learns.active = True, self.learns
        learned = engine.take_learned()
        if learned is not None and self._producer is not None:
            task = asyncio.create_task(self._publish(learned))
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)
        unseen, self._unseen = self._unseen, []
        for raw in reversed(unseen):  # the newest that fits
            try:
                weights = WeightsVersion.from_bytes(raw)
                if self.current is not None and (weights.version, weights.writer) == (self.current.version,
                                                                                      self.current.writer):
                    return  # the version scoring already (written twice, or read back by its writer)
                engine.adopt(weights)
                break
            except ModelError as exc:
                self.stats.refused += 1
                log.warning("weights topic %s: %s", self.topic.topic, exc)
        else:
            return
        self.current = weights
        self.stats.adopted += 1
        log.info("scoring with weights version %d (learnt %.0f s ago by %s)", weights.version,
                 time.time() - weights.created_at, weights.writer, extra={"weights_version": weights.version})

    async def _publish(self, weights: WeightsVersion) -> None:
        assert self._producer is not None
        try:
            await self._producer.send_and_wait(self.topic.topic, weights.to_bytes(), key=self.key, partition=0)
        except KafkaError as exc:
            self.stats.publish_failures += 1
            log.warning("could not write weights version %d to %s: %s; the next version is written as usual",
                        weights.version, self.topic.topic, error_text(exc))
            return
        self.stats.published += 1

    async def _follow_topic(self) -> None:
        assert self._consumer is not None
        while True:
            try:
                self._take(await self._consumer.getmany(self.topic, timeout_ms=1000))
            except KafkaError as exc:
                log.warning("reading the weights topic %s failed: %s; retrying", self.topic.topic, error_text(exc))
                await asyncio.sleep(self.config.retry_initial_seconds)

    def _take(self, batch: dict) -> None:
        for record in batch.get(self.topic, ()):
            if record.key == self.key and record.value is not None:
                self._unseen = [*self._unseen[-(KEPT - 1):], record.value]


async def read_group(consumer: AIOKafkaConsumer, topic: TopicPartition, key: bytes) -> list[bytes]:
    """The group's records on the weights topic, from its beginning to its end now, oldest first.

    The consumer is left assigned to the topic, at that end: it can follow the topic from there.
    """
    consumer.assign([topic])
    await consumer.seek_to_beginning(topic)
    end = (await consumer.end_offsets([topic]))[topic]
    records: list[bytes] = []
    while await consumer.position(topic) < end:
        batch = await consumer.getmany(topic, timeout_ms=500)
        records.extend(r.value for r in batch.get(topic, ()) if r.key == key and r.value is not None)
    return records


class WeightsMetrics(Collector):
    """The age of the weights version scoring and what the learner and the topic did (read at scrape time; the version
    itself is `hiddenstate_weights_version`, consumers/metrics.py)."""

    def __init__(self, weights: WeightsTopic) -> None:
        self.weights = weights

    def describe(self):
        return []

    def collect(self):
        w = self.weights
        current, engine = w.current, w.engine
        if current is not None:
            yield GaugeMetricFamily(PREFIX + "weights_age_seconds", "Time since the weights scoring were learnt.",
                                    value=max(time.time() - current.created_at, 0.0))
        yield GaugeMetricFamily(PREFIX + "learner_active", "1 while this instance learns the group's weights.",
                                value=float(w.learns))
        learner = engine.learner if engine is not None else None
        for name, doc, value in (
            ("weights_versions_published", "Weights versions this instance learnt and wrote.", w.stats.published),
            ("weights_versions_adopted", "Weights versions adopted from the weights topic.", w.stats.adopted),
            ("weights_versions_refused", "Weights records refused: another model, shape or channel count.",
             w.stats.refused),
            ("learning_updates", "Online learning updates run here.", learner.stats.updates if learner else 0),
            ("learning_seconds", "Time spent in online learning updates here.", learner.stats.seconds if learner else 0.0),
        ):
            yield CounterMetricFamily(PREFIX + name, doc, value=value)
