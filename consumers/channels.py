"""Channel names per sensor: which names a sensor's object `values` use, and how that survives a restart.

A reading's `values` may be an object by channel name (`{"temp": 41.0, "flow": 3.2}`). The names belong
to the sensor, never to the whole service: one sensor's `{"temp": ...}` says nothing about another's
`{"flow": ...}`. A sensor takes the name set of its first object (its *binding*, sorted names = channel
order); later objects with another key set are `wrong_channels` for that sensor only, and positional
readings (`value`, or `values` as a list) stay accepted in its channel order. Its score records and alert
events name its channels by that set; a sensor without one gets lists.

`ChannelNames` keeps the distinct name sets in a small registry (id 0 = none; the others numbered in the
order first seen, at most `MAX_CHANNEL_SETS`) and each sensor's id in the engine's state pool (field
`channel_set`), so it is forgotten exactly when the sensor's state is (idle or capacity eviction, a partition
that moved away) and costs 4 bytes a sensor. The ids are this process's own: a sensor's changelog record
carries its names in the `channel_names` header (`header_of`), and a restore binds them again (`restore`),
whichever instance wrote them.

A configured `channel_names` (`ServiceConfig.channel_names`) names the channels of every sensor instead:
nothing is bound per sensor then.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import orjson

from detector.readings.coerce import coerce_sensor_id
from detector.state.pool import StatePool

NAMES_HEADER = "channel_names"
"""Header of a changelog record: its sensor's channel names as a JSON array (absent: none)."""
MAX_CHANNEL_SETS = 4096
"""Most distinct channel-name sets one process binds (each holds up to `max_channels` names of 256 characters):
a sensor whose first object would add one more is `wrong_channels`. The sets are sensor types, a handful in a
real fleet; only those of sensors still held are restored after a restart."""


def valid_channel_name(name: object) -> bool:
    """A channel name is held by the config of every output: a printable string of 1-256 characters, like an id."""
    return isinstance(name, str) and coerce_sensor_id(name) == name


class ChannelNames:
    """The registry of channel-name sets and each sensor's binding (in `pool`, once the engine exists)."""

    def __init__(self, configured: Sequence[str] | None = None, max_sets: int = MAX_CHANNEL_SETS) -> None:
        self.configured: list[str] | None = list(configured) if configured is not None else None
        self.max_sets = max_sets
        self.sets: list[tuple[str, ...]] = [()]  # id -> sorted names; 0 = none
        self._ids: dict[tuple[str, ...], int] = {}
        self._headers: dict[int, bytes] = {}
        self.pool: StatePool | None = None  # the engine's: without it (a decoder alone) bindings last one batch

    def names(self, set_id: int) -> list[str] | None:
        """The names of a set id, channel order; None for 0 (positional)."""
        return list(self.sets[set_id]) if set_id else None

    def id_of(self, names: Sequence[str]) -> int | None:
        """The id of this set of names (registered on first sight); None when the registry is full."""
        key = tuple(sorted(names))
        set_id = self._ids.get(key)
        if set_id is None:
            if len(self.sets) > self.max_sets:
                return None
            set_id = self._ids[key] = len(self.sets)
            self.sets.append(key)
        return set_id

    @property
    def any_bound(self) -> bool:
        """Whether any sensor may have names (else every binding is 0 and nothing needs looking up)."""
        return len(self.sets) > 1

    # --- bindings, in the pool ----------------------------------------------------------
    def bound(self, sensor_ids: Sequence[str]) -> np.ndarray:
        """Each sensor's set id (int32): 0 for sensors without names or not held."""
        out = np.zeros(len(sensor_ids), dtype=np.int32)
        if self.pool is None or not self.any_bound or not len(sensor_ids):
            return out
        slots = self.pool.lookup(sensor_ids)
        held = slots >= 0
        out[held] = self.pool.channel_set[slots[held]]
        return out

    def bind(self, bindings: dict[str, int]) -> None:
        """Give these sensors their set ids where they have none yet (a sensor's first names stay its own), if the
        pool holds them: one whose readings all failed has no state to keep them in."""
        self._write(bindings, only_unbound=True)

    def _write(self, bindings: dict[str, int], only_unbound: bool) -> None:
        if self.pool is None or not bindings:
            return
        slots = self.pool.lookup(list(bindings))
        ids = np.fromiter(bindings.values(), dtype=np.int32, count=len(bindings))
        keep = slots >= 0
        if only_unbound:
            keep[keep] = self.pool.channel_set[slots[keep]] == 0
        self.pool.channel_set[slots[keep]] = ids[keep]

    # --- the changelog --------------------------------------------------------------------
    def header_of(self, set_id: int) -> list[tuple[str, bytes]]:
        """The headers of a changelog record of a sensor bound to `set_id`: its names, or none."""
        if not set_id:
            return []
        value = self._headers.get(set_id)
        if value is None:
            value = self._headers[set_id] = orjson.dumps(self.sets[set_id])
        return [(NAMES_HEADER, value)]

    def restore(self, sensor_ids: Sequence[str], headers: Sequence[bytes | None]) -> int:
        """Bind restored sensors to the names of their records' headers (no header: none, replacing whatever id
        the writer's record holds). Returns how many headers could not be bound: unreadable, or the registry full;
        those sensors take names again from their next object."""
        lost = 0
        set_ids = []
        for value in headers:
            set_id = 0
            if value is not None:
                names = _names_from(value)
                set_id = (self.id_of(names) if names is not None else None) or 0
                lost += not set_id
            set_ids.append(set_id)
        self._write(dict(zip(sensor_ids, set_ids)), only_unbound=False)
        return lost


def _names_from(value: bytes) -> list[str] | None:
    """The names of a `channel_names` header, or None if it is not a JSON array of distinct channel names."""
    try:
        names = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not (isinstance(names, list) and names and all(map(valid_channel_name, names))
            and len(set(names)) == len(names)):
        return None
    return names
