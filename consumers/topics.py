"""Compacted topics the service keeps for itself (the changelog, the weights): made if missing, checked if not.

Only topics that exist are described: aiokafka's `describe_topics` is a Metadata request that lets
the broker auto-create a missing topic (`auto.create.topics.enable`, on by default), which would
make it an ordinary topic with `cleanup.policy=delete`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from consumers.config import ServiceConfig
from consumers.waits import bounded

log = logging.getLogger("hiddenstate.serve")


async def ensure_compacted(config: ServiceConfig, topic: str, partitions: Callable[[dict[str, int]], int],
                           replication: int, describe: Iterable[str] = ()) -> dict[str, int]:
    """Create `topic` compacted if it is missing; warn if it exists and is not compacted.

    partitions: the partition count to create it with, from the partition counts of the `describe`
    topics that exist. Returns the partition counts of those and of `topic`. A topic it creates is
    waited for until each partition has a leader, at most `broker_wait_seconds` (`BrokerWaitTimeout`:
    the service retries the connect).
    """
    admin = AIOKafkaAdminClient(**config.kafka_client_kwargs())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        named = [t for t in (*describe, topic) if t in existing]
        described = await admin.describe_topics(named) if named else []
        parts = {t["topic"]: len(t.get("partitions", [])) for t in described if t.get("error_code", 0) == 0}
        if parts.get(topic):
            await _warn_unless_compacted(admin, topic)
            return parts
        parts[topic] = wanted = partitions(parts)
        try:
            await admin.create_topics([NewTopic(
                topic, wanted, replication, topic_configs={"cleanup.policy": "compact", "min.compaction.lag.ms": "0"},
            )])
            log.info("created the compacted topic %s with %d partition(s)", topic, wanted)
            await bounded(_leaders_elected(admin, topic, wanted),
                          f"leaders of the new topic {topic}'s {wanted} partition(s)", config.broker_wait_seconds)
        except TopicAlreadyExistsError:  # made meanwhile (another instance, or just before our metadata saw it)
            await _warn_unless_compacted(admin, topic)
        return parts
    finally:
        await admin.close()


async def _leaders_elected(admin: AIOKafkaAdminClient, topic: str, partitions: int) -> None:
    """Return once each of a new topic's `partitions` has a leader (retrying the metadata every 0.2 s).

    A topic exists before its partitions have leaders; a first batch that writes to one without would
    wait, silently, for aiokafka's request timeout (40 s) and fail with NotLeaderForPartitionError.
    """
    while True:
        described = await admin.describe_topics([topic])
        parts = described[0].get("partitions", []) if described and described[0].get("error_code") == 0 else []
        if len(parts) >= partitions and all(p.get("leader", -1) >= 0 for p in parts):
            return
        await asyncio.sleep(0.2)


async def _warn_unless_compacted(admin: AIOKafkaAdminClient, topic: str) -> None:
    """Log a warning if an existing topic is not compacted (its old records are deleted, it grows)."""
    try:
        response = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        error_code, _message, _type, _name, entries = response[0].resources[0][:5]
    except (KafkaError, IndexError) as exc:  # no DescribeConfigs ACL, say: nothing to check with
        log.debug("cannot read the configuration of %s: %s", topic, exc)
        return
    policy = next((value for name, value, *_ in entries if name == "cleanup.policy"), None)
    if error_code == 0 and policy is not None and "compact" not in policy.split(","):
        log.warning("topic %s has cleanup.policy=%s, not compact: records older than its retention are deleted "
                    "(for the changelog: those sensors restore fresh; for the weights: the learnt version is lost) "
                    "and it keeps every version until then. Set cleanup.policy=compact on it (kafka-configs.sh "
                    "--alter --entity-type topics --entity-name %s --add-config cleanup.policy=compact)",
                    topic, policy, topic)
