"""Stream the ASD servers through the engine (benchmarks/streaming.py), as ASD's detections.

Each server is one sensor with C channels of one `Detector`; the servers are replayed side by side,
batch k holding row k of every server that has one, train part first, every row scored once on
arrival. As for SKAB, the harness overrides only `idle_ttl` (None: no idle eviction; eviction is fleet
bookkeeping, not detection). The per-row scores are StepResult's `score` and, where the engine's result
has them, the EXTRA_SCORES; alert openings are the `raise` AlertEvents, placed at the row of their
timestamp, with their `channel`.
"""

from __future__ import annotations

import numpy as np

from benchmarks.asd.data import AsdFile
from benchmarks.asd.metrics import Detection
from benchmarks.streaming import EngineOutput, score_files
from detector import AlertKind, DetectorConfig

EXTRA_SCORES = ("surprise",)
"""Per-row fields of StepResult ranked besides `score`, those the engine has (none at this engine version)."""


def detection(f: AsdFile, out: EngineOutput) -> Detection:
    """The engine's output on one server in the shape metrics.evaluate takes."""
    opened = [(int(np.searchsorted(f.ts, e.ts)), int(e.channel)) for e in out.events if e.kind is AlertKind.RAISE]
    return Detection(scores={"score": out.score, **out.extra}, alerting=out.alerting, opened=opened)


def run_engine(files: list[AsdFile], config: DetectorConfig, model: str | None = None
               ) -> tuple[list[Detection], list[EngineOutput], float, str]:
    """(detections, raw outputs, seconds spent scoring, model id) of the engine on every server."""
    outs, seconds, model_id = score_files(files, config, model, fields=EXTRA_SCORES)
    return [detection(f, o) for f, o in zip(files, outs)], outs, seconds, model_id
