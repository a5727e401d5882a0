"""The Python API: a River-like `Detector` over the batched engine.

    >>> from detector import Detector
    >>> det = Detector()                      # the shipped gru-default model
    >>> s = det.score_one("pump-7", 1700000000.0, [3.2, 41.0])
    >>> s.score, s.is_anomaly, s.expected

Nothing is learned from the data except each sensor's running statistics and
hidden state; the network's weights stay fixed (train them with `hiddenstate train`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detector.alerts import AlertEvent
from detector.config import DetectorConfig
from detector.engine import Engine, EngineStats, StepResult
from detector.model.store import Model, load_model
from detector.readings.coerce import to_arrays
from detector.readings.reasons import RejectReason


@dataclass(frozen=True)
class Score:
    """The outcome of one reading."""

    sensor_id: str
    ts: float
    score: float
    """The calibrated score in [0, 1] of the reading at `scored_ts`; NaN when the reading was rejected (`rejected`
    says why) or, with a look-ahead model, released no reading to score. Never a normal-looking 0."""
    is_anomaly: bool
    alerting: bool
    expected: tuple[float, ...]
    residual: tuple[float, ...]
    rejected: RejectReason | None
    events: tuple[AlertEvent, ...]
    surprise: float = 0.0
    """−log10 of the tail probability behind `score` (3 at 0.999): keeps its order where the score is 1.0."""
    scored_ts: float = math.nan
    """The time of the reading scored: `ts` itself, except with a look-ahead model (`Detector.delay` k), whose
    scores come k readings late: then the sensor's reading k before this one, and NaN until it has one."""


class Detector:
    """Scores readings of many sensors with one shared model and per-sensor state.

    model: a shipped model name, a model directory, or a loaded `Model`.
    config: engine settings; keyword arguments override single fields of it.
    """

    def __init__(self, model: str | Path | Model | None = None, config: DetectorConfig | None = None, **settings: Any):
        config = config or DetectorConfig()
        if settings:
            config = config.model_copy(update=settings)
            config = DetectorConfig(**config.model_dump())  # re-validate the overrides
        self.config = config
        self.model = model if isinstance(model, Model) else load_model(model or config.model)
        self._engine: Engine | None = None
        if config.channels is not None:
            self._engine = Engine.for_model(self.model, config, config.channels)

    @property
    def engine(self) -> Engine:
        """The engine, created once the number of channels is known."""
        if self._engine is None:
            raise RuntimeError("the number of channels is not known yet: score a reading or set channels=")
        return self._engine

    @property
    def stats(self) -> EngineStats:
        return self.engine.stats

    def score_one(self, sensor_id: str, ts: object, values: object) -> Score:
        """Score one reading: `values` is a number or a sequence of one number per channel."""
        result = self.score_many([sensor_id], [ts], [values])
        return Score(
            sensor_id=result.sensor_ids[0],
            ts=float(result.ts[0]),
            score=float(result.score[0]),
            is_anomaly=bool(result.anomalous[0]),
            alerting=bool(result.alerting[0]),
            expected=tuple(result.expected[0].tolist()),
            residual=tuple(result.residual[0].tolist()),
            rejected=result.reason(0),
            events=tuple(result.events),
            surprise=float(result.surprise[0]),
            scored_ts=float(result.target_ts[0]),
        )

    def score_many(self, sensor_ids: Sequence[object], timestamps: Sequence[object], values: Sequence[object]) -> StepResult:
        """Score a batch of loose readings (any sensors, any order); bad rows come back rejected."""
        if self._engine is None:
            self._engine = Engine.for_model(self.model, self.config, _infer_channels(values))
        ids, ts, rows, status = to_arrays(sensor_ids, timestamps, values, self._engine.channels)
        return self._engine.step(ids, ts, rows, status)

    def score_arrays(
        self, sensor_ids: Sequence[str], ts: np.ndarray, values: np.ndarray, status: np.ndarray | None = None
    ) -> StepResult:
        """Score a batch already in arrays (ts [B] seconds, values [B, C]): the fast path.

        The engine's guards hold here too: a ts that is no usable instant (before 1970, from 5138 on: a
        millisecond array is refused, not read as seconds) or more than `max_future_seconds` ahead of the clock
        is bad_timestamp, a value beyond ±1e15 not_finite, an id that is no printable string of 1-256 characters
        bad_sensor_id.

        status: optional per-row RejectReason codes found while decoding (0 = fine); those rows are
        passed through as rejected with that reason.
        """
        values = np.asarray(values, dtype=np.float64)
        if values.ndim == 1:
            values = values[:, None]
        if self._engine is None:
            self._engine = Engine.for_model(self.model, self.config, values.shape[1])
        return self._engine.step(sensor_ids, ts, values, status)

    @property
    def delay(self) -> int:
        """Readings a sensor's score comes after its reading: the model's look-ahead (0 but for `bidir`)."""
        return self.model.network.lookahead

    def forget(self, sensor_ids: Sequence[str]) -> int:
        """Drop the state of these sensors; returns how many were held."""
        return self._engine.pool.remove(sensor_ids) if self._engine else 0

    def __len__(self) -> int:
        return len(self._engine.pool) if self._engine else 0


def _infer_channels(values: Sequence[object]) -> int:
    for row in values:
        if isinstance(row, (int, float)) and not isinstance(row, bool):
            return 1
        if isinstance(row, (list, tuple, np.ndarray)) and len(row) > 0:
            return len(row)
    return 1
