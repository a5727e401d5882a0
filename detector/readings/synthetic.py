"""A simulated fleet of sensors with injected anomalies of known kinds.

Used by `hiddenstate demo`, by training of the shipped model (on the anomaly-free
fleet) and by tests. Every sensor has one of four normal shapes and its own
scale and offset (from 1e-3 to 1e6), so the engine's scale-invariance is
exercised too. Anomalies are injected with their exact windows, so detection
can be scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np


class Shape(str, Enum):
    SEASONAL = "seasonal"
    DRIFTING = "drifting"
    NOISY = "noisy"
    STEPS = "step-like"


class AnomalyKind(str, Enum):
    SPIKE = "spike"
    LEVEL_SHIFT = "level_shift"
    STUCK = "stuck"
    DRIFT = "drift"
    VARIANCE = "variance_change"
    BROKEN_SEASONALITY = "broken_seasonality"


@dataclass(frozen=True)
class Injected:
    """An injected anomaly: readings `start` ≤ step < `end` of `sensor` are affected."""

    sensor: int
    kind: AnomalyKind
    start: int
    end: int


_SHAPES = list(Shape)
_KINDS = list(AnomalyKind)


class Fleet:
    """Generates one reading per sensor per step, deterministically from `seed`.

    anomaly_rate: expected anomalies per sensor per 1000 steps (0 for a clean fleet).
    """

    def __init__(self, sensors: int, seed: int = 0, anomaly_rate: float = 1.0, interval: float = 1.0, start: float = 1.7e9):
        self.n = sensors
        self.interval = interval
        self.start = start
        self.anomaly_rate = anomaly_rate
        self.rng = np.random.default_rng(seed)
        rng = self.rng
        self.shape = rng.integers(0, len(_SHAPES), sensors)
        self.scale = 10.0 ** rng.uniform(-3, 6, sensors)
        self.offset = self.scale * rng.uniform(-5, 5, sensors)
        self.noise = rng.uniform(0.05, 0.25, sensors)
        self.period = rng.uniform(20, 200, sensors)
        self.phase = rng.uniform(0, 2 * np.pi, sensors)
        self.drift = rng.normal(0, 0.01, sensors)
        self.level = np.zeros(sensors)
        self.ar = np.zeros(sensors)
        self.t = 0
        self.anomalies: list[Injected] = []
        self._active_kind = np.full(sensors, -1)
        self._active_end = np.zeros(sensors, dtype=np.int64)
        self._active_start = np.zeros(sensors, dtype=np.int64)
        self._stuck_value = np.zeros(sensors)
        self._magnitude = np.zeros(sensors)

    def names(self) -> list[str]:
        return [f"{_SHAPES[k].value}-{i:06d}" for i, k in enumerate(self.shape)]

    def step(self) -> tuple[float, np.ndarray, np.ndarray]:
        """The next step: (timestamp, values [n], anomalous [n])."""
        rng, t, n = self.rng, self.t, self.n
        shape = self.shape
        seasonal = np.sin(2 * np.pi * t / self.period + self.phase) + 0.3 * np.sin(4 * np.pi * t / self.period + self.phase)
        self.level += np.where(shape == 1, self.drift + rng.normal(0, 0.02, n), 0.0)
        self.ar = 0.9 * self.ar + rng.normal(0, 0.45, n)
        switch = (shape == 3) & (rng.random(n) < 0.01)
        self.level = np.where(switch, np.where(self.level > 0.5, 0.0, 1.0 + rng.uniform(0, 1, n)), self.level)
        noise = rng.normal(0, 1, n) * self.noise
        base = np.select([shape == 0, shape == 1, shape == 2, shape == 3], [seasonal, self.level, self.ar, self.level])
        value = base + noise

        if self.anomaly_rate > 0:
            value = self._inject(value, seasonal, noise)
        labels = self._active_kind >= 0
        ended = labels & (t + 1 >= self._active_end)
        self._active_kind[ended] = -1
        self.t += 1
        return self.start + t * self.interval, self.offset + self.scale * value, labels

    def run(self, steps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`steps` steps at once: (ts [T], values [T, n], anomalous [T, n])."""
        out = [self.step() for _ in range(steps)]
        return (np.array([o[0] for o in out]), np.stack([o[1] for o in out]), np.stack([o[2] for o in out]))

    def _inject(self, value: np.ndarray, seasonal: np.ndarray, noise: np.ndarray) -> np.ndarray:
        rng, t = self.rng, self.t
        # Anomalies start only after a warm-up and never overlap on one sensor.
        idle = (self._active_kind < 0) & (t >= 300)
        start = idle & (rng.random(self.n) < self.anomaly_rate / 1000.0)
        for i in np.flatnonzero(start).tolist():
            kinds = _KINDS if self.shape[i] == 0 else _KINDS[:-1]
            kind = int(rng.integers(0, len(kinds)))
            length = 1 + int(rng.integers(0, 3)) if kinds[kind] is AnomalyKind.SPIKE else int(rng.integers(20, 80))
            self._active_kind[i] = kind
            self._active_start[i] = t
            self._active_end[i] = t + length
            self._stuck_value[i] = value[i]
            self._magnitude[i] = rng.choice([-1.0, 1.0]) * rng.uniform(4, 8)
            self.anomalies.append(Injected(i, kinds[kind], t, t + length))
        out = value.copy()
        typical = np.where(self.shape == 2, 1.0, 0.7)  # rough spread of each shape
        for code, kind in enumerate(_KINDS):
            hit = self._active_kind == code
            if not hit.any():
                continue
            mag = self._magnitude[hit] * typical[hit]
            progress = (t - self._active_start[hit] + 1) / (self._active_end[hit] - self._active_start[hit])
            if kind is AnomalyKind.SPIKE:
                out[hit] += 1.5 * mag
            elif kind is AnomalyKind.LEVEL_SHIFT:
                out[hit] += mag
            elif kind is AnomalyKind.STUCK:
                out[hit] = self._stuck_value[hit]
            elif kind is AnomalyKind.DRIFT:
                out[hit] += 1.5 * mag * progress
            elif kind is AnomalyKind.VARIANCE:
                out[hit] += noise[hit] * 8.0
            elif kind is AnomalyKind.BROKEN_SEASONALITY:
                out[hit] -= seasonal[hit]
        return out
