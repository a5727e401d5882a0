"""The service's Kafka clients: the consumer and the producer as the settings make them, and closing them quietly."""

from __future__ import annotations

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
        max_request_size=max(1_048_576, cfg.max_message_bytes + 16_384),
    )


async def quietly_stop(*clients: AIOKafkaConsumer | AIOKafkaProducer | None) -> None:
    for client in clients:
        if client is None:
            continue
        try:
            await client.stop()
        except Exception as exc:  # noqa: BLE001 - closing must not mask the reason we are closing
            log.debug("error while closing %s: %s", type(client).__name__, exc)
