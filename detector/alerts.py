"""Alert hysteresis and de-duplication: one raise and one clear per episode.

A single anomalous reading pages nobody. An alert is raised when `raise_k` of
the last `raise_n` readings were anomalous (bits of a per-sensor word), stays
open, and clears after `clear_m` consecutive normal readings. Every episode
has a stable id (sensor and start time) so downstream consumers can drop
repeats after a redelivery.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from detector.scoring.causes import Cause


class AlertKind(str, Enum):
    RAISE = "raise"
    CLEAR = "clear"


@dataclass(frozen=True)
class AlertEvent:
    """An alert being raised or cleared, with the reason an on-call engineer needs."""

    kind: AlertKind
    sensor_id: str
    ts: float
    started: float
    score: float
    channel: int
    expected: float
    seen: float
    cause: Cause = Cause.FORECAST  # the view that raised it (raise events); with LEVEL and CORRELATION,
    # `expected` is the channel's usual level
    threshold_error: float = float("nan")
    peak_score: float = float("nan")
    channel_name: str | None = field(default=None, compare=False)

    @property
    def alert_id(self) -> str:
        """Stable id of the episode: the same for its raise and clear, and across redeliveries."""
        return f"{self.sensor_id}@{self.started!r}"

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "alert_id": self.alert_id,
            "kind": self.kind.value,
            "sensor_id": self.sensor_id,
            "ts": self.ts,
            "started": self.started,
            "score": self.score,
            "channel": self.channel_name if self.channel_name is not None else self.channel,
            "expected": self.expected,
            "seen": self.seen,
        }
        if self.kind is AlertKind.RAISE:
            out["cause"] = Cause(self.cause).label
            out["threshold_error"] = self.threshold_error
        else:
            out["peak_score"] = self.peak_score
            out["duration"] = self.ts - self.started
        return out


@dataclass
class Transitions:
    """Per-row outcome of one hysteresis update."""

    raised: np.ndarray
    cleared: np.ndarray
    flags: np.ndarray
    active: np.ndarray
    calm: np.ndarray
    peak: np.ndarray


def update(
    flags: np.ndarray,
    active: np.ndarray,
    calm: np.ndarray,
    peak: np.ndarray,
    anomalous: np.ndarray,
    score: np.ndarray,
    raise_k: int,
    raise_n: int,
    clear_m: int,
    quiet: np.ndarray | None = None,
) -> Transitions:
    """Advance each row's hysteresis by one reading.

    `quiet` marks readings that count towards clearing (default: those not anomalous); with a clear
    threshold below the raise threshold, readings between the two neither raise nor clear.
    """
    quiet = ~anomalous if quiet is None else quiet & ~anomalous
    window = np.uint32((1 << raise_n) - 1)
    flags = ((flags.astype(np.uint32) << np.uint32(1)) | anomalous.astype(np.uint32)) & window
    raised = ~active & (np.bitwise_count(flags) >= raise_k)
    calm = np.where(active & quiet, calm + 1, 0).astype(np.uint16)
    cleared = active & (calm >= clear_m)
    peak = np.where(raised, score, np.where(active, np.maximum(peak, score), 0.0)).astype(np.float32)
    new_active = (active | raised) & ~cleared
    flags = np.where(cleared, np.uint32(0), flags).astype(np.uint32)
    calm = np.where(cleared, 0, calm).astype(np.uint16)
    return Transitions(raised, cleared, flags, new_active, calm, peak)
