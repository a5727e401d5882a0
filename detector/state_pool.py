"""Per-sensor state in preallocated arrays, addressed by slot.

Millions of sensors share one network; each keeps only the few hundred bytes
here: hidden state, normalisation and calibration statistics, the pending
forecast, alert state and its last timestamp. All state of all sensors lives in
a handful of contiguous arrays (one row per slot), so the engine can gather the
rows of a micro-batch, step them together and scatter them back.

Growth doubles the arrays (amortised, never per message) up to `capacity`;
beyond it the least recently seen sensors are evicted. Sensors idle longer than
`idle_ttl` of event time are evicted by `evict_idle`. Both are counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

# name -> (dtype, per-channel?); a field with per-channel False is one value per sensor.
_FIELDS: dict[str, tuple[type, bool]] = {
    "norm_mean": (np.float64, True),  # float64: a 1e6 offset must not swamp 1e-3 changes
    "norm_var": (np.float32, True),
    "forecast": (np.float32, True),  # next reading as forecast, in units of the current normalisation
    "forecast_logvar": (np.float32, True),  # and its log-variance
    "last_value": (np.float64, True),  # the previous reading, to see repeats
    "repeats": (np.uint16, True),  # length of the current run of identical readings
    "run_mean": (np.float32, True),  # usual length of such runs
    "count": (np.int32, False),  # readings accepted since the sensor appeared
    "since_reset": (np.int32, False),  # readings since the hidden state was last reset
    "last_ts": (np.float64, False),
    "dt_mean": (np.float32, False),
    "scored": (np.int32, False),  # forecast errors scored so far
    "err_short": (np.float32, False),  # short-window smoothed error
    "err_mean": (np.float32, False),  # long-window distribution of log(err_short)
    "err_var": (np.float32, False),
    "flags": (np.uint32, False),  # bit i = reading i back was anomalous
    "active": (np.bool_, False),  # an alert episode is open
    "calm": (np.uint16, False),  # consecutive normal readings during an episode
    "peak": (np.float32, False),  # highest score of the open episode
    "alert_start": (np.float64, False),
    "cause_z": (np.float32, False),  # the most surprising reading of the current anomaly run (inf: stuck) ...
    "cause_channel": (np.int16, False),  # ... its channel,
    "cause_expected": (np.float64, False),  # ... what was expected
    "cause_seen": (np.float64, False),  # ... and what was seen: the reason given when the alert is raised
    "last_seen": (np.int64, False),  # batch tick, for least-recently-seen eviction
}


@dataclass
class PoolStats:
    """Counts of what the pool did, for metrics."""

    evicted_idle: int = 0
    evicted_capacity: int = 0
    grown: int = 0


class StatePool:
    """Sensor id -> slot map plus the state arrays of every slot.

    Fields are attributes (`pool.hidden`, `pool.norm_mean`, ...) indexed by slot.
    """

    def __init__(self, state_size: int, channels: int, capacity: int, initial_capacity: int = 1024) -> None:
        self.state_size = state_size
        self.channels = channels
        self.capacity = capacity
        self.stats = PoolStats()
        self._slots: dict[str, int] = {}
        self._ids: list[str | None] = []
        self._free: list[int] = []
        self._allocated = 0
        self._tick = 0
        self._grow_to(min(initial_capacity, capacity))

    # -- size ---------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._slots)

    @property
    def allocated(self) -> int:
        """Slots allocated now (live + free)."""
        return self._allocated

    @property
    def bytes_per_sensor(self) -> int:
        """Bytes of array state one slot holds (the id map comes on top)."""
        return self.hidden.itemsize * self.state_size + sum(
            np.dtype(dtype).itemsize * (self.channels if per_channel else 1)
            for dtype, per_channel in _FIELDS.values()
        )

    def _grow_to(self, size: int) -> None:
        old = self._allocated
        if old:
            self.stats.grown += 1
        self.hidden = _resized(getattr(self, "hidden", None), (size, self.state_size), np.float32)
        for name, (dtype, per_channel) in _FIELDS.items():
            shape = (size, self.channels) if per_channel else (size,)
            setattr(self, name, _resized(getattr(self, name, None), shape, dtype))
        self._ids.extend([None] * (size - old))
        self._free.extend(range(size - 1, old - 1, -1))
        self._allocated = size

    # -- lookup -------------------------------------------------------------
    def slot_of(self, sensor_id: str) -> int | None:
        """The slot of a known sensor, or None."""
        return self._slots.get(sensor_id)

    def sensor_ids(self) -> list[str]:
        return list(self._slots)

    def id_of(self, slot: int) -> str:
        sensor = self._ids[slot]
        if sensor is None:
            raise KeyError(f"slot {slot} is free")
        return sensor

    def assign(self, sensor_ids: Sequence[str]) -> np.ndarray:
        """Slots for `sensor_ids`, creating fresh state for new sensors; marks them recently seen."""
        self._tick += 1
        slots = np.empty(len(sensor_ids), dtype=np.int64)
        new: list[int] = []
        get = self._slots.get
        for i, sensor in enumerate(sensor_ids):
            slot = get(sensor)
            if slot is None:
                new.append(i)
                slots[i] = -1
            else:
                slots[i] = slot
        known = slots[slots >= 0]
        self.last_seen[known] = self._tick
        for i in new:
            sensor = sensor_ids[i]
            slot = self._slots.get(sensor)  # the same new id may appear twice in one batch
            if slot is None:
                slot = self._take_slot()
                self._slots[sensor] = slot
                self._ids[slot] = sensor
                self._reset_slot(slot)
                self.last_seen[slot] = self._tick
            slots[i] = slot
        return slots

    def _take_slot(self) -> int:
        if not self._free:
            if self._allocated < self.capacity:
                self._grow_to(min(self.capacity, max(1, self._allocated * 2)))
            else:
                self._evict_least_recent()
        return self._free.pop()

    def _evict_least_recent(self) -> None:
        # Evict ~1 % at once so a flood of new ids costs one partial sort per many sensors.
        live = np.fromiter(self._slots.values(), dtype=np.int64, count=len(self._slots))
        candidates = live[self.last_seen[live] < self._tick]
        if candidates.size == 0:
            raise OverflowError(
                f"one batch holds more than capacity={self.capacity} distinct sensors; raise capacity"
            )
        k = max(1, min(candidates.size, self.capacity // 100))
        victims = candidates[np.argpartition(self.last_seen[candidates], k - 1)[:k]]
        self._release(victims)
        self.stats.evicted_capacity += int(victims.size)

    def evict_idle(self, now: float, ttl: float) -> int:
        """Evict sensors whose last reading is older than `now - ttl` (event time); returns how many."""
        if not self._slots:
            return 0
        live = np.fromiter(self._slots.values(), dtype=np.int64, count=len(self._slots))
        victims = live[self.last_ts[live] < now - ttl]
        self._release(victims)
        self.stats.evicted_idle += int(victims.size)
        return int(victims.size)

    def remove(self, sensor_ids: Iterable[str]) -> int:
        """Forget these sensors (e.g. their partition moved away); returns how many were held."""
        slots = [s for s in (self._slots.get(i) for i in sensor_ids) if s is not None]
        self._release(np.asarray(slots, dtype=np.int64))
        return len(slots)

    def _release(self, slots: np.ndarray) -> None:
        for slot in slots.tolist():
            sensor = self._ids[slot]
            if sensor is not None:
                del self._slots[sensor]
                self._ids[slot] = None
                self._free.append(slot)

    def _reset_slot(self, slot: int) -> None:
        self.hidden[slot] = 0.0
        for name in _FIELDS:
            getattr(self, name)[slot] = 0
        self.forecast[slot] = np.nan
        self.forecast_logvar[slot] = np.nan


def _resized(old: np.ndarray | None, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    new = np.zeros(shape, dtype=dtype)
    if old is not None:
        new[: old.shape[0]] = old
    return new
