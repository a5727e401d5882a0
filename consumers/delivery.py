"""Getting a batch's outputs acknowledged: record batches per partition, resends, producer renewal, transactions.

Outputs are sent as record batches, one open batch per topic partition (aiokafka's `BatchBuilder`,
the producer's own batch type, which this module alone relies on): a fraction of the cost of one
`send` per record. Keyed outputs go where `send` would put them, by Kafka's default partitioner.
`Delivery.deliver` waits for every acknowledgement (acks=all) and resends what failed, with backoff
and a new producer; `Delivery.transact` puts outputs and consumed offsets in one Kafka transaction
(`processing_guarantee="exactly_once"`).

Sizes are checked before sending: a record batch never grows past its topic's `max.message.bytes`
(read from the broker at connect, `learn_limits`), and an output that alone would not fit is not sent
to fail there (a MessageSizeTooLargeError, a resend with a new producer, a produce failure counted):
a score record or alert event is dead-lettered as `output_too_large` (key, source headers, no value),
a dead letter keeps its headers without the original's bytes (`truncated`). The changelog is not
checked: a sensor's state is a few KB.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, ProducerFenced
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from consumers.clients import OUTPUT_BATCH_BYTES, discard, make_producer, request_bytes
from consumers.config import ServiceConfig
from consumers.crash import crash_point
from consumers.decode import DeadLetterReason
from consumers.errors import BrokerWaitTimeout, ServiceError
from consumers.logs import error_text
from consumers.metrics import ServiceStats
from consumers.outputs import Output
from consumers.partitioner import KeyPartitions
from consumers.waits import Waiting, bounded

log = logging.getLogger("hiddenstate.serve")

T = TypeVar("T")

Sent = list[tuple[list[Output], asyncio.Future | BaseException]]
"""Each record batch sent: its outputs, and the future of its acknowledgement (or why it could not be sent)."""

DEFAULT_TOPIC_BYTES = 1_048_588
"""Kafka's default `max.message.bytes`: the limit assumed for an output topic whose own cannot be read."""
OUTPUT_TOO_LARGE = DeadLetterReason.OUTPUT_TOO_LARGE.value


class Delivery:
    """The service's producer, and how outputs get through it.

    heartbeat: called while retrying with backoff (retrying is progress, not a stuck loop).
    waiting: where the bounded wait in progress is recorded, for /readyz and /healthz.
    """

    def __init__(self, config: ServiceConfig, stats: ServiceStats, heartbeat: Callable[[], None],
                 waiting: Waiting | None = None) -> None:
        self.config = config
        self.stats = stats
        self.heartbeat = heartbeat
        self.waiting = waiting
        self.producer: AIOKafkaProducer | None = None  # started by the service, replaced here after failures
        self._partitions = KeyPartitions()  # the producer's partitioner, for outputs sent as record batches
        outputs = (config.scores_topic, config.alerts_topic, config.dead_letter_topic)
        self.limits: dict[str, int] = {t: min(DEFAULT_TOPIC_BYTES, request_bytes(config)) for t in outputs}
        """The most bytes a record batch may have, per output topic (scores, alerts, dead letters)."""

    async def learn_limits(self) -> dict[str, int]:
        """Read each output topic's `max.message.bytes` from the broker (topics that do not exist yet, or a
        principal without DescribeConfigs, keep Kafka's default); returns the limits."""
        cfg = self.config
        admin = AIOKafkaAdminClient(**cfg.kafka_client_kwargs())
        try:
            await admin.start()
            responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t) for t in self.limits])
            for response in responses:
                for error_code, _message, _type, topic, entries, *_ in response.resources:
                    value = next((v for name, v, *_ in entries if name == "max.message.bytes"), None)
                    if error_code == 0 and value is not None and topic in self.limits:
                        self.limits[topic] = min(int(value), request_bytes(cfg))
        except (KafkaError, ValueError, OSError) as exc:
            log.debug("cannot read the output topics' max.message.bytes (%s); assuming %s", error_text(exc),
                      self.limits)
        finally:
            await admin.close()
        return self.limits

    async def deliver(self, outputs: list[Output]) -> None:
        """Produce every output and wait for its acknowledgement, resending failures with backoff."""
        assert self.producer is not None
        cfg = self.config
        pending = outputs
        delay = cfg.retry_initial_seconds
        while pending:
            sent = await self._send_batches(pending)
            waits = [f for _, f in sent if isinstance(f, asyncio.Future)]
            if waits:
                await asyncio.gather(*waits, return_exceptions=True)
            failed: list[Output] = []
            errors: list[BaseException] = []
            for outs, f in sent:
                exc = f if isinstance(f, BaseException) else f.exception()
                if exc is None:
                    continue
                for out in outs:
                    if isinstance(exc, MessageSizeTooLargeError) and out.topic == cfg.dead_letter_topic and out.value:
                        # the original cannot be copied: dead-letter its headers, say it was truncated
                        out = Output(out.topic, out.key, None,
                                     [*out.headers, ("truncated", str(len(out.value)).encode())])
                    failed.append(out)
                errors.append(exc)
            if not failed:
                return
            if any(isinstance(e, MessageSizeTooLargeError) for e in errors):
                await self.learn_limits()  # a topic's limit was lowered since: resent outputs are checked again
            self.stats.produce_retries += len(failed)
            log.warning("%d of %d outputs not acknowledged (%s); resending in %.1fs with a new producer",
                        len(failed), len(pending), error_text(errors[0]), delay)
            # not interrupted by a stop request: `serve` bounds a stuck batch by the grace period
            await asyncio.sleep(delay)
            self.heartbeat()
            await self._renew_producer()
            delay = min(delay * 2, cfg.retry_max_seconds)
            pending = failed

    async def transact(self, outputs: list[Output], offsets: dict[TopicPartition, int]) -> ServiceError | KafkaError | None:
        """exactly_once: the outputs (changelog records among them) and the consumed offsets in one transaction.

        Every record is acknowledged before the offsets join the transaction and it commits. Each step
        waits at most `broker_wait_seconds` (aiokafka's own waits have no bound, consumers/waits.py).
        Returns None once committed, or the error that failed it (a KafkaError, or `BrokerWaitTimeout`),
        after aborting it (read_committed readers never see its outputs) and replacing the producer.
        Raises ProducerFenced (another instance has this transactional id: nothing can be sent any
        more). Counts commits and failures.
        """
        assert self.producer is not None
        producer = self.producer
        limit = self.config.broker_wait_seconds

        def step(awaitable: Awaitable[T], what: str) -> Awaitable[T]:
            return bounded(awaitable, what, limit, self.waiting)

        try:
            await step(producer.begin_transaction(), "the transaction to begin (the producer id, InitProducerId)")
            # record batches join the transaction too
            sent = await step(self._send_batches(outputs), "the output topics' partitions (metadata)")
            # every record acknowledged before the offsets join the transaction and it commits (aiokafka can
            # commit a transaction whose batch failed; never let that happen)
            failed = [f for _, f in sent if isinstance(f, BaseException)]
            futures = [f for _, f in sent if isinstance(f, asyncio.Future)]
            if futures:  # waiting does not cancel the acknowledgements (the producer is replaced after a timeout)
                await step(asyncio.wait(futures), f"the acknowledgements of {len(futures)} record batch(es) of the "
                                                  "transaction (partitions added to it, their leaders)")
            failed += [f.exception() for f in futures if not f.cancelled() and f.exception() is not None]
            if failed:
                raise failed[0]
            crash_point("produced")
            if offsets:
                await step(producer.send_offsets_to_transaction(offsets, self.config.group_id),
                           "the consumed offsets to join the transaction (AddOffsetsToTxn, TxnOffsetCommit)")
            crash_point("before_commit")
            await step(producer.commit_transaction(), "the transaction's commit (EndTxn)")
            crash_point("committed")
        except ProducerFenced:
            self.stats.commit_failures += 1
            raise
        except (KafkaError, BrokerWaitTimeout) as exc:
            self.stats.commit_failures += 1
            self.heartbeat()  # a step given up at its bound is progress, not a stuck loop
            if isinstance(exc, KafkaError):  # after a timed-out step aiokafka is mid-request: no abort to wait for
                with contextlib.suppress(KafkaError, AssertionError, BrokerWaitTimeout):  # AssertionError: fatal state
                    await step(producer.abort_transaction(), "the failed transaction's abort (EndTxn)")
            # a fresh producer (new epoch, fresh sequence numbers); its InitProducerId also aborts whatever
            # the old one left open
            await self._renew_producer()
            return exc
        self.stats.commits += 1
        return None

    async def flush(self) -> None:
        """Send what the producer still holds (at close)."""
        if self.producer is None:
            return
        try:
            await self.producer.flush()
        except KafkaError as exc:
            log.warning("producer flush failed: %s", error_text(exc))

    async def _renew_producer(self) -> None:
        """Replace the producer by a fresh one: a new producer id, whose sequence numbers start again.

        After a failed batch (one that expired while the broker was down, for instance) aiokafka's
        idempotent producer keeps the sequence numbers it had given out, and the broker answers every
        later batch with OutOfOrderSequenceNumber, for good. A new producer id is the way out (the Java
        client bumps the epoch instead). Keeps trying, with backoff, while the broker is unreachable.
        """
        cfg = self.config
        if self.producer is not None:
            await discard(self.producer, cfg.broker_wait_seconds)
        delay = cfg.retry_initial_seconds
        while True:
            producer = make_producer(cfg)
            try:
                await bounded(producer.start(), "a new producer to start (its producer id, InitProducerId)",
                              cfg.broker_wait_seconds, self.waiting)
            except (KafkaError, BrokerWaitTimeout) as exc:
                await discard(producer, cfg.broker_wait_seconds)
                log.warning("cannot start a new producer: %s; retrying in %.1fs", error_text(exc), delay)
                await asyncio.sleep(delay)
                self.heartbeat()
                delay = min(delay * 2, cfg.retry_max_seconds)
                continue
            self.producer = producer
            return

    async def _send_batches(self, outputs: list[Output]) -> Sent:
        """Send outputs as record batches, one open batch per topic partition; returns each batch's outputs and future.

        A fraction of the cost of one `send` per record (a future, a partitioner call and an accumulator
        append each). Keyed outputs go where `send` would put them: Kafka's default partitioner (murmur2
        of the key). A batch is acknowledged or fails as a whole; the order within a partition is kept.
        """
        producer = self.producer
        assert producer is not None
        partitions: dict[str, list[int] | BaseException] = {}
        batches: dict[tuple[str, int], tuple[BatchBuilder, list[Output]]] = {}
        sent: Sent = []
        outputs = self._fitted(outputs)
        transactional = self.config.exactly_once

        def new_batch(topic: str) -> BatchBuilder:  # the producer's kind of batch, no larger than its topic takes
            return BatchBuilder(min(OUTPUT_BATCH_BYTES, self.limits.get(topic, OUTPUT_BATCH_BYTES)), 0,
                                is_transactional=transactional)

        async def send(topic: str, partition: int) -> None:
            batch, outs = batches.pop((topic, partition))
            try:
                sent.append((outs, await producer.send_batch(batch, topic, partition=partition)))
            except KafkaError as exc:
                sent.append((outs, exc))

        for out in outputs:
            partition = out.partition
            if partition is None:
                parts = partitions.get(out.topic)
                if parts is None:
                    try:
                        parts = partitions[out.topic] = sorted(await producer.partitions_for(out.topic))
                    except KafkaError as exc:
                        parts = partitions[out.topic] = exc
                if isinstance(parts, BaseException):
                    sent.append(([out], parts))
                    continue
                partition = self._partitions.of(out.topic, out.key, parts)
            slot = (out.topic, partition)
            if slot not in batches:
                batches[slot] = (new_batch(out.topic), [])
            if batches[slot][0].append(key=out.key, value=out.value, timestamp=None, headers=out.headers) is None:
                await send(*slot)  # full: send it, start the next one (a first record always fits)
                batches[slot] = (new_batch(out.topic), [])
                batches[slot][0].append(key=out.key, value=out.value, timestamp=None, headers=out.headers)
            batches[slot][1].append(out)
        for slot in list(batches):
            await send(*slot)
        return sent

    def _fitted(self, outputs: list[Output]) -> list[Output]:
        """The outputs, each that alone would exceed its topic's limit replaced by what is sent instead: a dead
        letter `output_too_large` for a score record or an alert, the headers alone for a dead letter."""
        limits, dlq = self.limits, self.config.dead_letter_topic
        out: list[Output] = []
        too_large: list[tuple[str, int, int]] = []
        for o in outputs:
            limit = limits.get(o.topic)
            size = 0 if limit is None else DefaultRecordBatchBuilder.estimate_size_in_bytes(o.key, o.value, o.headers)
            if limit is None or size <= limit:  # the changelog is not checked
                out.append(o)
                continue
            too_large.append((o.topic, size, limit))
            length = str(len(o.value or b"")).encode()
            if o.topic == dlq:  # the original cannot be copied: its headers, and that it was truncated
                out.append(Output(dlq, o.key, None, [*o.headers, ("truncated", length)]))
                continue
            detail = f"the {o.topic} record of {size} bytes exceeds that topic's max.message.bytes {limit}"
            self.stats.dead_lettered[OUTPUT_TOO_LARGE] = self.stats.dead_lettered.get(OUTPUT_TOO_LARGE, 0) + 1
            out.append(Output(dlq, o.key, None, [("reason", OUTPUT_TOO_LARGE.encode()), ("detail", detail.encode()),
                                                 ("output_topic", o.topic.encode()), ("truncated", length),
                                                 *o.headers]))
        if too_large:
            topic, size, limit = max(too_large, key=lambda t: t[1])
            log.warning("%d output(s) too large for their topic, sent to %s instead (largest: %d bytes for %s, whose "
                        "max.message.bytes is %d); raise the topic's max.message.bytes if they are legitimately "
                        "this large", len(too_large), dlq, size, topic, limit)
        return out
