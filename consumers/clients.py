"""The service's Kafka clients: the consumer and the producer as the settings make them, and closing them quietly."""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from consumers.config import ServiceConfig

log = logging.getLogger("hiddenstate.serve")

OUTPUT_BATCH_BYTES = 262_144
"""Record batch size of the producer (outputs are sent as batches of up to this many bytes per partition)."""


def make_consumer(cfg: ServiceConfig) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        **cfg.kafka_client_kwargs(),
        group_id=cfg.group_id,
        enable_auto_commit=False,
        auto_offset_reset=cfg.auto_offset_reset,
        max_poll_records=cfg.max_batch,
        # a fetch never returns (much) more than a batch can hold
        max_partition_fetch_bytes=max(cfg.max_message_bytes * 4, 1_048_576),
        isolation_level="read_committed" if cfg.exactly_once else "read_uncommitted",
    )


def make_producer(cfg: ServiceConfig) -> AIOKafkaProducer:
    txn = {"transactional_id": cfg.transactional_id_or_default} if cfg.exactly_once else {}
    return AIOKafkaProducer(
        **cfg.kafka_client_kwargs(),
        **txn,
        acks="all",
        enable_idempotence=True,
        linger_ms=cfg.linger_ms,
        max_batch_size=OUTPUT_BATCH_BYTES,
        max_request_size=request_bytes(cfg),
    )


def request_bytes(cfg: ServiceConfig) -> int:
    """The producer's max request size: room for a dead letter that copies the largest message accepted."""
    return max(1_048_576, cfg.max_message_bytes + 16_384)


async def quietly_stop(*clients: AIOKafkaConsumer | AIOKafkaProducer | None) -> None:
    """Stop each client, never raising; a producer's own failed futures are marked retrieved (`retrieve_failures`)."""
    for client in clients:
        if client is None:
            continue
        try:
            await client.stop()
        except Exception as exc:  # noqa: BLE001 - closing must not mask the reason we are closing
            log.debug("error while closing %s: %s", type(client).__name__, exc)
        if isinstance(client, AIOKafkaProducer):
            retrieve_failures(client)


async def discard(producer: AIOKafkaProducer, seconds: float) -> None:
    """Stop a producer that may be stuck, within `seconds`: else its sender is cancelled and its connections closed.

    `stop()` flushes first, and a producer stuck in a transaction request that aiokafka retries for ever
    (consumers/waits.py), or holding a batch for a partition it never added to the transaction, never
    finishes flushing. Its batches are abandoned: they were not acknowledged, so their outputs are sent
    again by the next producer (and a transactional one's open transaction is aborted by the next
    producer's InitProducerId).
    """
    try:
        await asyncio.wait_for(quietly_stop(producer), seconds)
        return
    except TimeoutError:
        log.warning("the old producer did not stop within %gs (broker_wait_seconds); closing it without flushing",
                    seconds)
    sender = getattr(producer, "_sender", None)  # aiokafka's internals, read defensively
    try:
        if sender is not None:
            await asyncio.wait_for(sender.close(), seconds)
        await asyncio.wait_for(producer.client.close(), seconds)
    except Exception as exc:  # noqa: BLE001 - closing must not mask the reason we are closing
        log.debug("error while closing a stuck producer: %s", exc)
    retrieve_failures(producer)


def retrieve_failures(producer: AIOKafkaProducer) -> int:
    """Retrieve the exceptions a producer that failed for good left in the futures it keeps for itself; returns how many.

    When aiokafka's sender stops on an error it cannot retry (`ProducerFenced`: another instance took the
    transactional id), it fails every batch still queued and the open transaction with it. The batches'
    acknowledgements are the service's to await (and it does); but each batch's drain waiter and the
    transaction's waiter are aiokafka's own, nobody awaits them, and asyncio reports every one, with a long
    traceback, as "Future exception was never retrieved" when it is collected. The service has handled that
    failure already (logged it once, stopped or replaced the producer): this tells asyncio so. It reads
    aiokafka's internals defensively: should they change, it finds nothing and does nothing.
    """
    waiters: list[object] = []
    accumulator = getattr(producer, "_message_accumulator", None)
    batches = [b for queue in getattr(accumulator, "_batches", {}).values() for b in queue]
    for batch in [*batches, *getattr(accumulator, "_pending_batches", ())]:
        waiters += [getattr(batch, "_drain_waiter", None), getattr(batch, "future", None)]
    waiters.append(getattr(getattr(producer, "_txn_manager", None), "_transaction_waiter", None))
    retrieved = 0
    for waiter in waiters:
        if isinstance(waiter, asyncio.Future) and waiter.done() and not waiter.cancelled() and waiter.exception():
            retrieved += 1
    return retrieved
