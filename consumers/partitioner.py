"""Kafka's default partitioner for keyed outputs, remembered per key.

aiokafka's `DefaultPartitioner` hashes a key with murmur2 in Python, about a microsecond a record, and a
sensor's score records carry the same key batch after batch. `KeyPartitions` asks it once per (topic, key)
and partition count, so outputs sent as record batches still go where `send` would put them.
"""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner

LIMIT = 200_000
"""Keys remembered before the table is dropped and begun again (a bound on its memory for large fleets)."""


class KeyPartitions:
    """The partition of each (topic, key) by Kafka's default partitioner, for the topic's current partitions."""

    def __init__(self, limit: int = LIMIT) -> None:
        self.limit = limit
        self._partitioner = DefaultPartitioner()
        self._chosen: dict[tuple[str, bytes], int] = {}
        self._counts: dict[str, int] = {}  # the partition count each topic's entries were chosen for

    def of(self, topic: str, key: bytes | None, partitions: list[int]) -> int:
        """The partition for `key` among `partitions` (sorted, all of the topic's); a key of None: a random one."""
        if key is None:
            return self._partitioner(None, partitions, partitions)
        if self._counts.get(topic) != len(partitions):  # partitions added: every key of the topic chosen again
            self._chosen = {k: p for k, p in self._chosen.items() if k[0] != topic}
            self._counts[topic] = len(partitions)
        partition = self._chosen.get((topic, key))
        if partition is None:
            if len(self._chosen) >= self.limit:
                self._chosen.clear()
            partition = self._chosen[(topic, key)] = self._partitioner(key, partitions, partitions)
        return partition
