"""Waits on the broker that aiokafka does not bound are bounded by `broker_wait_seconds` (issue 17, defect 9).

A real broker, no mocks. The wait that never ends by itself: offsets of a partition the group
coordinator does not know join a transaction. The broker answers TxnOffsetCommit with
UNKNOWN_TOPIC_OR_PARTITION, which aiokafka retries for ever, silently; `send_offsets_to_transaction`
never returns. (The wait of the defect itself, a record batch for a partition whose leader is not yet
known, ends after aiokafka's 40 s request timeout and needs a partition without a leader, which a
single-node test broker cannot be made to have on demand; it goes through the same bound.)
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import TopicPartition

from consumers.clients import make_producer, quietly_stop
from consumers.delivery import Delivery
from consumers.errors import BrokerWaitTimeout
from consumers.health import HealthMonitor
from consumers.metrics import ServiceStats
from consumers.outputs import Output
from consumers.waits import bounded
from tests.kafka_broker import kafka_bootstrap, read_topic, unique_name  # noqa: F401 - kafka_bootstrap is a fixture
from tests.test_serve_kafka import new_topics, service_config


def test_a_transaction_step_the_broker_never_ends_is_given_up_at_the_bound(kafka_bootstrap, caplog):  # noqa: F811
    """send_offsets_to_transaction for an unknown partition: a warning, /readyz not ready, /healthz healthy, then
    BrokerWaitTimeout at broker_wait_seconds; the next producer commits the next transaction."""
    limit = 3.0

    async def scenario():
        topics = await new_topics(kafka_bootstrap, partitions=1)
        cfg = service_config(kafka_bootstrap, topics, unique_name("g"), processing_guarantee="exactly_once",
                             transactional_id=unique_name("txn"), broker_wait_seconds=limit, health_stall_seconds=1)
        monitor = HealthMonitor(cfg)
        stats = ServiceStats()
        delivery = Delivery(cfg, stats, monitor.heartbeat, monitor.waiting)
        delivery.producer = make_producer(cfg)
        await delivery.producer.start()
        first = delivery.producer
        monitor.running = True
        monitor.heartbeat()
        try:
            started = time.monotonic()
            nowhere = {TopicPartition(unique_name("no-such-topic"), 0): 5}
            stuck = asyncio.create_task(delivery.transact([], nowhere))
            await asyncio.sleep(2.0)  # past the warning (half the bound), before the bound
            ready, ready_checks = monitor.readiness(stopping=False, restoring=False)
            healthy, health_checks = monitor.health()
            failed = await asyncio.wait_for(stuck, 30)  # unbounded, this never returns
            seconds = time.monotonic() - started
            renewed = delivery.producer is not first
            committed = await asyncio.wait_for(
                delivery.transact([Output(topics["scores"], b"k", b"after the timeout", [])], {}), 30)
        finally:
            await quietly_stop(delivery.producer)
        scores = await read_topic(kafka_bootstrap, topics["scores"], committed_only=True)
        return failed, seconds, ready_checks, ready, healthy, health_checks, renewed, committed, scores, stats

    with caplog.at_level(logging.WARNING, logger="hiddenstate.serve"):
        failed, seconds, ready_checks, ready, healthy, health_checks, renewed, committed, scores, stats = (
            asyncio.run(scenario()))
    assert isinstance(failed, BrokerWaitTimeout) and "consumed offsets" in str(failed), failed
    assert limit <= seconds < limit + 10, seconds
    assert not ready and not ready_checks["broker_wait"][0] and "consumed offsets" in ready_checks["broker_wait"][1]
    assert healthy and "waiting" in health_checks["processing_loop"][1], health_checks
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("waiting for the consumed offsets to join the transaction") for line in lines), lines
    assert renewed and committed is None and stats.commit_failures == 1 and stats.commits == 1
    assert [r.value for r in scores] == [b"after the timeout"]


def test_bounded_returns_the_result_and_raises_at_the_bound():
    """The helper alone: a result in time is returned; a wait past the bound is cancelled and named."""
    async def scenario():
        quick = await bounded(asyncio.sleep(0.01, result="done"), "a quick answer", 1.0)
        slow = asyncio.ensure_future(asyncio.sleep(60))
        try:
            await bounded(slow, "an answer that never comes", 0.2)
        except BrokerWaitTimeout as exc:
            return quick, str(exc), slow.cancelled()
        raise AssertionError("no BrokerWaitTimeout")

    quick, message, cancelled = asyncio.run(scenario())
    assert quick == "done" and "an answer that never comes" in message and "0.2s" in message and cancelled
