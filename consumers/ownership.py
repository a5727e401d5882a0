"""Which input partition each sensor's readings come from, and what a rebalance or a failed commit drops.

Messages are keyed by sensor id, so a sensor's readings live in one partition. `Ownership`
remembers the partition each sensor was last scored from; after a rebalance the state of sensors
whose partition went to another member is dropped from the engine, and so is the state of a
batch whose commit failed (its readings come again and must be scored again, not rejected as
duplicates). It also keeps the sensors changed since the last checkpoint (`touched`) and the
partitions whose sensors' state the engine holds (`held`: the others are restored on assignment).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import numpy as np
from aiokafka import ConsumerRebalanceListener, TopicPartition

from consumers.metrics import ServiceStats
from detector.readings.reasons import SCORED

if TYPE_CHECKING:
    from consumers.decode import Decoded
    from detector.engine import Engine, StepResult


class Ownership:
    """Sensor -> partition bookkeeping of one service."""

    def __init__(self, stats: ServiceStats, track_changes: bool) -> None:
        self.stats = stats
        self.track_changes = track_changes  # keep `touched` (for checkpoints); without them it would only grow
        self.owner: dict[str, TopicPartition] = {}
        self.touched: dict[str, TopicPartition] = {}  # sensors changed since the last checkpoint
        self.held: set[TopicPartition] = set()  # partitions whose sensors' state this engine holds

    def note_scored(self, messages: list, decoded: Decoded, result: StepResult) -> None:
        """Remember the partition each sensor the batch scored was read from, for checkpoints and rebalances."""
        rows_of, row_message, sensor_ids = decoded.engine_rows.tolist(), decoded.message.tolist(), result.sensor_ids
        scored = np.flatnonzero(result.status == SCORED).tolist()
        sensors = [sensor_ids[j] for j in scored]
        partitions: dict[tuple[str, int], TopicPartition] = {}
        tps = []
        for msg in (messages[row_message[rows_of[j]]] for j in scored):
            tp = partitions.get((msg.topic, msg.partition))
            if tp is None:
                tp = partitions[(msg.topic, msg.partition)] = TopicPartition(msg.topic, msg.partition)
            tps.append(tp)
        self.owner.update(zip(sensors, tps))  # the last reading of a sensor wins, as in input order
        if self.track_changes:  # read and cleared by the next checkpoint
            self.touched.update(zip(sensors, tps))

    def claim(self, sensors: list[str], tps: list[TopicPartition]) -> None:
        """Sensors restored from the changelog, from these partitions."""
        self.owner.update(zip(sensors, tps))

    def take_touched(self) -> dict[str, TopicPartition]:
        """The sensors changed since the last call, and their partitions."""
        touched, self.touched = self.touched, {}
        return touched

    def reassign(self, assigned: set[TopicPartition], engine: Engine | None) -> int:
        """After a rebalance: drop the sensors on partitions now elsewhere; returns how many the engine held."""
        moved = {tp for tp in self.owner.values() if tp not in assigned}
        dropped = self.drop(moved, engine)
        self.touched = {s: tp for s, tp in self.touched.items() if tp in assigned}
        return dropped

    def drop(self, tps: set[TopicPartition], engine: Engine | None) -> int:
        """Forget the sensors last seen on these partitions; returns how many the engine held."""
        if not tps:
            return 0
        gone = [s for s, tp in self.owner.items() if tp in tps]
        for s in gone:
            del self.owner[s]
        dropped = engine.pool.remove(gone) if engine is not None and gone else 0
        self.stats.dropped_sensors += dropped
        return dropped

    def prune(self, engine: Engine | None) -> None:
        """Forget owners of sensors the engine evicted (idle TTL, capacity), so the map stays bounded."""
        if engine is None or len(self.owner) <= 2 * len(engine.pool) + 1024:
            return
        pool = engine.pool
        self.owner = {s: tp for s, tp in self.owner.items() if pool.slot_of(s) is not None}


class RebalanceListener(ConsumerRebalanceListener):
    """Hands the group's revocations and assignments to two coroutines."""

    def __init__(self, on_revoked: Callable[[set[TopicPartition]], Awaitable[None]],
                 on_assigned: Callable[[set[TopicPartition]], Awaitable[None]]) -> None:
        self._on_revoked = on_revoked
        self._on_assigned = on_assigned

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._on_assigned(set(assigned))
