"""A compact sensor-id → slot map for millions of sensors.

A Python dict of 10 M string ids costs about 1 GB and a cache miss or two per
lookup. This map keeps only a 64-bit hash of each id and its slot, in two numpy
arrays used as an open-addressing hash table (linear probing, load 1/4 to 1/2): 24
to 48 bytes per sensor, and a whole micro-batch is looked up with a few vectorised
probes instead of a Python loop.

The hash is Python's own `hash(str)` (SipHash, randomised per process), so the
map lives and dies with its process; persisted state is keyed by the id itself.
Two different ids with the same 64-bit hash would share a slot: with n sensors
the chance that any pair collides is about n² / 2⁶⁵ (3 · 10⁻⁶ for 10 M sensors).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_EMPTY = 0
_TOMBSTONE = 1


def hash_ids(sensor_ids: Sequence[str]) -> np.ndarray:
    """64-bit keys of ids; never the two values reserved for empty and deleted entries."""
    keys = np.fromiter(map(hash, sensor_ids), dtype=np.int64, count=len(sensor_ids))
    reserved = (keys & ~1) == 0  # _EMPTY or _TOMBSTONE
    if reserved.any():
        keys[reserved] += 2
    return keys


class IdMap:
    """Hash keys → slots; lookups and inserts are vectorised over a batch."""

    def __init__(self, expected: int = 1024) -> None:
        size = 1024
        while size < 2 * expected:
            size *= 2
        self._keys = np.zeros(size, dtype=np.int64)
        self._slots = np.full(size, -1, dtype=np.int32)
        self._live = 0
        self._used = 0  # live entries + tombstones

    def __len__(self) -> int:
        return self._live

    @property
    def nbytes(self) -> int:
        return self._keys.nbytes + self._slots.nbytes

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Slot of each key, -1 where absent."""
        at = self._positions(keys)
        slots = self._slots[at].astype(np.int64)  # position -1 reads the table's last entry: overwritten next
        slots[at < 0] = -1
        return slots

    def insert(self, keys: np.ndarray, slots: np.ndarray) -> None:
        """Add keys that are not in the map yet (distinct) with their slots."""
        if self._used + keys.size > self._keys.size // 2:
            self._rehash(self._live + keys.size)
        self._place(keys, slots.astype(np.int32))
        self._live += keys.size
        self._used += keys.size

    def remove(self, keys: np.ndarray) -> None:
        """Delete the keys that are in the map (others are ignored)."""
        at = self._positions(keys)
        at = at[at >= 0]
        self._keys[at] = _TOMBSTONE
        self._slots[at] = -1
        self._live -= int(at.size)

    def _positions(self, keys: np.ndarray) -> np.ndarray:
        """Table position of each key, -1 where absent (linear probing until an empty entry)."""
        mask = self._keys.size - 1
        pos = keys & mask
        found = self._keys[pos]  # the first probe, for every key at once: most keys end here
        hit = found == keys
        out = np.where(hit, pos, -1)
        pending = np.flatnonzero(~hit & (found != _EMPTY))
        pos = (pos[pending] + 1) & mask
        while pending.size:
            found = self._keys[pos]
            hit = found == keys[pending]
            out[pending[hit]] = pos[hit]
            go_on = ~hit & (found != _EMPTY)
            pending, pos = pending[go_on], (pos[go_on] + 1) & mask
        return out

    def _place(self, keys: np.ndarray, slots: np.ndarray) -> None:
        mask = self._keys.size - 1
        pending = np.arange(keys.size)
        pos = keys & mask
        while pending.size:
            found = self._keys[pos]
            free = (found == _EMPTY) | (found == _TOMBSTONE)
            # Several keys may want the same free position: the first of each takes it.
            positions, first = np.unique(pos[free], return_index=True)
            winners = np.flatnonzero(free)[first]
            self._keys[positions] = keys[pending[winners]]
            self._slots[positions] = slots[pending[winners]]
            placed = np.zeros(pending.size, dtype=bool)
            placed[winners] = True
            advance = ~free  # losers of a contest retry the same (now taken) position and move on next round
            pos = np.where(advance, (pos + 1) & mask, pos)
            pending, pos = pending[~placed], pos[~placed]

    def _rehash(self, live_after: int) -> None:
        """Rebuild without tombstones, in the smallest power-of-two table (never smaller) that holds `live_after`
        keys at load ≤ 1/2.

        When it has to grow, the table doubles (or more for a large batch), so the load right after is above
        1/4: 24–48 bytes per key.
        """
        live = (self._keys != _EMPTY) & (self._keys != _TOMBSTONE)
        keys, slots = self._keys[live], self._slots[live]
        size = self._keys.size
        while size < 2 * live_after:
            size *= 2
        self._keys = np.zeros(size, dtype=np.int64)
        self._slots = np.full(size, -1, dtype=np.int32)
        self._used = self._live = int(keys.size)
        self._place(keys, slots)
