"""Per-sensor state in preallocated arrays, addressed by slot.

Millions of sensors share one network; each keeps only the few hundred bytes
here: hidden state, normalisation and calibration statistics, the pending
forecast, alert state and its last timestamp (and the id of the set of names its
channels go by, for the caller that names them).

All fields of one dtype are packed side by side in one row-major block (float32,
float64, int32), one row per slot. The engine gathers the rows of a micro-batch
with one fancy index per block (`gather`), works on that small copy through
named column views, and scatters it back (`scatter`): three copies each way
instead of one per field, which is what makes large fleets in random order fast.
Every field is also reachable by name on the pool itself (`pool.hidden`,
`pool.count`, ...) as a view over all slots.

Sensor ids are mapped to slots by `IdMap` (hashes only, ~24 bytes per sensor);
the pool keeps no id strings, so 10 M sensors fit in a few GiB.

Growth doubles the blocks (amortised, never per message) up to `capacity`;
beyond it the sensors with the oldest last reading are evicted. Sensors idle longer than
`idle_ttl` of event time are evicted by `evict_idle`. Both are counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from detector.state.id_map import IdMap, hash_ids
from detector.readings.coerce import valid_sensor_id

# name -> (block, width); width "S" = the network's state size, "C" = one per channel, 1 = one per sensor,
# "K" = one per reading of look-ahead, "KC" = one per channel and reading of look-ahead; "CX" = one per channel
# and "CC" = one per pair of channels, both only where the correlation view is on (`correlation`), else none;
# "CF" = one per channel only where the level view has a fast scale too (`fast_level`), else none;
# "CB" = `season_bins` per channel and "C3" = three per channel, both only where daily profiles are on, else none.
_FIELDS: dict[str, tuple[str, int | str]] = {
    "hidden": ("f32", "S"),
    "norm_var": ("f32", "C"),
    "norm_step": ("f32", "C"),  # usual size of a channel's non-zero changes: a floor of its scale
    "forecast": ("f32", "C"),  # next reading as forecast, in units of the current normalisation
    "forecast_logvar": ("f32", "C"),  # and its log-variance
    "run_mean": ("f32", "C"),  # usual length of runs of identical readings
    "run_max": ("f16", "C"),  # the longest run of identical readings finished (growing at most 4-fold a run)
    "level": ("f32", "C"),  # recent level of each channel, normalised
    "level_spread": ("f32", "C"),  # usual spread (variance) of that level
    "level_fast": ("f32", "CF"),  # the same at the fast scale (`level_fast_window`; no columns when it is off)
    "level_fast_spread": ("f32", "CF"),
    "season": ("f32", "CB"),  # time-of-day profile of each channel, `season_bins` per channel (`seasons`)
    "season_fit": ("f32", "C3"),  # mean square of each channel before and after its profile; profile in use
    "joint_level": ("f32", "CX"),  # recent level of each channel for the correlation view, normalised
    "joint_cov": ("f32", "CC"),  # usual covariance of that level vector, C × C row-major
    "dt_mean": ("f32", 1),
    "err_short": ("f32", 1),  # short-window smoothed error
    "err_mean": ("f32", 1),  # long-window distribution of log(err_short)
    "err_var": ("f32", 1),
    "peak": ("f32", 1),  # highest score of the open episode
    "cause_surprise": ("f32", 1),  # the most surprising reading of the current anomaly run: its surprise ...
    "norm_mean": ("f64", "C"),  # float64: a 1e6 offset must not swamp 1e-3 changes
    "last_value": ("f64", "C"),  # the previous reading, to see repeats
    "last_ts": ("f64", 1),
    "alert_start": ("f64", 1),
    "cause_expected": ("f64", 1),  # ... what was expected
    "cause_seen": ("f64", 1),  # ... and what was seen: the reason given when the alert is raised
    "repeats": ("i32", "C"),  # length of the current run of identical readings
    "count": ("i32", 1),  # readings accepted since the sensor appeared
    "since_reset": ("i32", 1),  # readings since the hidden state was last reset
    "scored": ("i32", 1),  # forecast errors scored so far
    "flags": ("i32", 1),  # bit i = reading i back was anomalous
    "active": ("i32", 1),  # an alert episode is open
    "calm": ("i32", 1),  # consecutive normal readings during an episode
    "cause": ("i8", 1),  # ... the view that made it (a `Cause` code)
    "cause_channel": ("i32", 1),  # ... its channel
    "channel_set": ("i32", 1),  # which names its channels go by: an id its caller gives (the Kafka service's
    # `consumers.channels.ChannelNames`); 0 = none. The engine never reads it: it lives and dies with the state.
    # Readings waiting for a look-ahead model's k later readings (k = 0 for forecasters: no columns), oldest
    # first: each one's time, values and the normalisation frame it was seen in, to score it when it is released.
    "pending_ts": ("f64", "K"),
    "pending_values": ("f64", "KC"),
    "pending_mean": ("f64", "KC"),
    "pending_std": ("f32", "KC"),
}
_DTYPES = {"f32": np.float32, "f64": np.float64, "i32": np.int32, "f16": np.float16, "i8": np.int8}
_NAN_ON_RESET = ("forecast", "forecast_logvar")


@dataclass
class PoolStats:
    """Counts of what the pool did, for metrics."""

    evicted_idle: int = 0
    evicted_capacity: int = 0
    grown: int = 0


def _whole_rows(a: np.ndarray) -> np.ndarray:
    """A C-contiguous 2-D array with each row as one opaque element, so that a fancy-indexed assignment
    copies whole rows (2-3x faster than element by element)."""
    return a.view(np.dtype((np.void, a.shape[1] * a.itemsize))).reshape(-1)


class Rows:
    """A gathered copy of some slots' state, with every field as a named column view.

    `rows.count`, `rows.hidden`, ... read and write the copy; `StatePool.scatter` writes it back.
    """

    def __init__(self, blocks: dict[str, np.ndarray], layout: dict[str, tuple[str, slice | int]]) -> None:
        self.blocks = blocks
        for name, (block, cols) in layout.items():
            setattr(self, name, blocks[block][:, cols])

    def __len__(self) -> int:
        return len(self.blocks["f32"])

    def __getattr__(self, name: str) -> np.ndarray:  # only for type checkers; fields are set in __init__
        raise AttributeError(name)


class StatePool:
    """Sensor id -> slot map plus the packed state of every slot."""

    def __init__(
        self,
        state_size: int,
        channels: int,
        capacity: int,
        initial_capacity: int = 1024,
        lookahead: int = 0,
        correlation: bool = False,
        hidden_dtype: str = "float32",
        fast_level: bool = False,
        season_bins: int = 0,
    ) -> None:
        self.state_size = state_size
        self.channels = channels
        self.lookahead = lookahead
        self.correlation = correlation
        self.fast_level = fast_level
        self.season_bins = season_bins
        self.capacity = capacity
        self.stats = PoolStats()
        if hidden_dtype not in ("float32", "float16"):
            raise ValueError(f"hidden_dtype must be float32 or float16, not {hidden_dtype!r}")
        self.hidden_dtype = hidden_dtype
        self._layout, widths = _layout(state_size, channels, lookahead, correlation, hidden_dtype == "float16",
                                       fast_level, season_bins)
        self._widths = {b: w for b, w in widths.items() if w}  # no empty blocks: each costs a gather per wave
        self._blocks: dict[str, np.ndarray] = {}
        self._key_of = np.zeros(0, dtype=np.int64)  # id hash held by each slot; 0 = free
        self._map = IdMap(min(initial_capacity, capacity))
        self._free = np.zeros(0, dtype=np.int32)  # a stack of free slots; the top is _free[_nfree - 1]
        self._nfree = 0
        self._allocated = 0
        self._grow_to(min(initial_capacity, capacity))

    def __getattr__(self, name: str) -> np.ndarray:
        layout = self.__dict__.get("_layout")
        if layout is None or name not in layout:
            raise AttributeError(f"{type(self).__name__!s} has no field {name!r}")
        block, cols = layout[name]
        return self._blocks[block][:, cols]

    # -- size ---------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._map)

    @property
    def allocated(self) -> int:
        """Slots allocated now (live + free)."""
        return self._allocated

    @property
    def bytes_per_sensor(self) -> int:
        """Bytes of array state one slot holds, bookkeeping included (the id map's table comes on top)."""
        per_block = sum(np.dtype(_DTYPES[b]).itemsize * w for b, w in self._widths.items())
        return per_block + self._key_of.itemsize + self._free.itemsize

    @property
    def nbytes(self) -> int:
        """Bytes of all allocated state arrays (the id map's table excluded)."""
        blocks = sum(b.nbytes for b in self._blocks.values())
        return blocks + self._key_of.nbytes + self._free.nbytes

    def _grow_to(self, size: int) -> None:
        old = self._allocated
        if old:
            self.stats.grown += 1
        for block, width in self._widths.items():
            self._blocks[block] = _resized(self._blocks.get(block), (size, width), _DTYPES[block])
        self._key_of = _resized(self._key_of, (size,), np.int64)
        self._free = _resized(self._free, (size,), np.int32)
        self._push_free(np.arange(size - 1, old - 1, -1))
        self._allocated = size

    # -- gather / scatter ---------------------------------------------------
    def block_specs(self) -> dict[str, tuple[int, np.dtype]]:
        """Width and dtype of each block, in a fixed order."""
        return {b: (block.shape[1], block.dtype) for b, block in self._blocks.items()}

    def byte_layout(self) -> list[tuple[str, str, int, int]]:
        """(field, block, first column, end column) of every field, in the order their bytes lie in a row.

        What a checkpoint record's layout checksum covers: two fields that trade places change it.
        """
        out = []
        for name, (block, cols) in self._layout.items():
            start, stop = (cols, cols + 1) if isinstance(cols, int) else (cols.start, cols.stop)
            out.append((name, block, start, stop))
        return sorted(out, key=lambda f: (list(self._blocks).index(f[1]), f[2], f[3]))

    def block(self, name: str) -> np.ndarray:
        """The live block `name` ("f32", "f64", "i32", "i8", "f16"), [allocated, width]: for code that works on
        the pool in place (`detector.fastpath`). Growth replaces it: take it again after `assign`."""
        return self._blocks[name]

    def rows(self, blocks: dict[str, np.ndarray]) -> Rows:
        """Named views over row blocks of this pool's layout (e.g. decoded from a checkpoint)."""
        return Rows(blocks, self._layout)

    def gather(self, slots: np.ndarray) -> Rows:
        """A copy of these slots' state (one `take` per block: several times faster than fancy indexing)."""
        return Rows({b: np.take(block, slots, axis=0) for b, block in self._blocks.items()}, self._layout)

    def scatter(self, slots: np.ndarray, rows: Rows) -> None:
        """Write a (modified) gathered copy back to its slots."""
        for b, block in self._blocks.items():
            _whole_rows(block)[slots] = _whole_rows(np.ascontiguousarray(rows.blocks[b], dtype=block.dtype))

    # -- lookup -------------------------------------------------------------
    def slot_of(self, sensor_id: str) -> int | None:
        """The slot of a known sensor, or None."""
        slot = int(self._map.lookup(hash_ids([sensor_id]))[0])
        return None if slot < 0 else slot

    def lookup(self, sensor_ids: Sequence[str]) -> np.ndarray:
        """Slots of these ids, -1 for ids not held (no side effects)."""
        return self._map.lookup(hash_ids(sensor_ids))

    def assign(self, sensor_ids: Sequence[str]) -> np.ndarray:
        """Slots for `sensor_ids`, creating fresh state for new sensors.

        New ids are checked here, once in their life, by the one id rule (`valid_sensor_id`): an id that is
        not a printable string of 1 to MAX_SENSOR_ID_LENGTH characters gets slot -1 and no state.
        """
        keys = hash_ids(sensor_ids)
        slots = self._map.lookup(keys)
        missing = np.flatnonzero(slots < 0)
        if missing.size:
            new_keys, first, inverse = np.unique(keys[missing], return_index=True, return_inverse=True)
            valid = np.fromiter(
                (valid_sensor_id(sensor_ids[i]) for i in missing[first].tolist()),
                dtype=bool,
                count=first.size,
            )
            new_slots = np.full(new_keys.size, -1, dtype=np.int64)
            new_slots[valid] = self._take_slots(int(valid.sum()), keep=slots[slots >= 0])
            taken = new_slots[valid]
            self._map.insert(new_keys[valid], taken)
            self._key_of[taken] = new_keys[valid]
            for block in self._blocks.values():
                block[taken] = 0
            for name in _NAN_ON_RESET:
                getattr(self, name)[taken] = np.nan
            slots[missing] = new_slots[inverse]
        return slots

    def _push_free(self, slots: np.ndarray) -> None:
        self._free[self._nfree : self._nfree + slots.size] = slots
        self._nfree += slots.size

    def _take_slots(self, k: int, keep: np.ndarray) -> np.ndarray:
        if k > self._nfree and self._allocated < self.capacity:
            size = self._allocated
            while size - self._allocated + self._nfree < k and size < self.capacity:
                size = min(self.capacity, max(1, size * 2))
            self._grow_to(size)
        if k > self._nfree:
            self._evict_least_recent(k - self._nfree, keep)
        self._nfree -= k
        return self._free[self._nfree : self._nfree + k].astype(np.int64)

    def _live_slots(self) -> np.ndarray:
        return np.flatnonzero(self._key_of[: self._allocated] != 0)

    def _evict_least_recent(self, needed: int, keep: np.ndarray) -> None:
        # Least recently seen = oldest last reading (event time); the batch's own sensors are kept.
        # Evict at least ~1 % at once so a flood of new ids costs one partial sort per many sensors.
        live = self._live_slots()
        candidates = live[~np.isin(live, keep)]
        if candidates.size < needed:
            raise OverflowError(
                f"one batch holds more than capacity={self.capacity} distinct sensors; raise capacity"
            )
        k = min(candidates.size, max(needed, self.capacity // 100))
        victims = candidates[np.argpartition(self.last_ts[candidates], k - 1)[:k]]
        self._release(victims)
        self.stats.evicted_capacity += int(victims.size)

    def evict_idle(self, now: float, ttl: float) -> int:
        """Evict sensors whose last reading is older than `now - ttl` (event time); returns how many."""
        live = self._live_slots()
        victims = live[self.last_ts[live] < now - ttl]
        self._release(victims)
        self.stats.evicted_idle += int(victims.size)
        return int(victims.size)

    def remove(self, sensor_ids: Iterable[str]) -> int:
        """Forget these sensors (e.g. their partition moved away); returns how many were held."""
        slots = self.lookup(list(sensor_ids))
        slots = np.unique(slots[slots >= 0])
        self._release(slots)
        return int(slots.size)

    def _release(self, slots: np.ndarray) -> None:
        if slots.size:
            self._map.remove(self._key_of[slots])
            self._key_of[slots] = 0
            self._push_free(slots)


def _layout(
    state_size: int, channels: int, lookahead: int = 0, correlation: bool = False, half_hidden: bool = False,
    fast_level: bool = False, season_bins: int = 0,
) -> tuple[dict[str, tuple[str, slice | int]], dict[str, int]]:
    """Column of each field in its block, and each block's width (`half_hidden`: the network state in float16)."""
    cross = channels if correlation else 0
    sizes = {"S": state_size, "C": channels, "K": lookahead, "KC": lookahead * channels, "CX": cross, "CC": cross * cross,
             "CF": channels if fast_level else 0, "CB": channels * season_bins, "C3": 3 * channels if season_bins else 0}
    layout: dict[str, tuple[str, slice | int]] = {}
    widths = {b: 0 for b in _DTYPES}
    for name, (block, width) in _FIELDS.items():
        if name == "hidden" and half_hidden:
            block = "f16"
        start = widths[block]
        if width == 1:
            layout[name] = (block, start)
            widths[block] += 1
        else:
            n = sizes[width]
            layout[name] = (block, slice(start, start + n))
            widths[block] += n
    return layout, widths


def _resized(old: np.ndarray | None, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    new = np.zeros(shape, dtype=dtype)
    if old is not None:
        new[: old.shape[0]] = old
    return new
