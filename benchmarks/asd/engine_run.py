"""Stream the ASD servers through the engine: SKAB's replay (benchmarks/skab/engine_run.py), ASD's outputs.

Each server is one sensor with C channels of one `Detector`; the servers are replayed side by side,
batch k holding row k of every server that has one, train part first, every row scored once on
arrival. As for SKAB, the harness overrides only `idle_ttl` (None: no idle eviction; eviction is fleet
bookkeeping, not detection). The per-row score is StepResult's `score`; alert openings are the `raise`
AlertEvents, placed at the row of their timestamp, with their `channel`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from benchmarks.asd.data import AsdFile
from benchmarks.asd.metrics import Detection
from benchmarks.skab.engine_run import EngineOutput, score_files
from detector import AlertKind, DetectorConfig, StepResult

EXTRA_SCORES = ("surprise",)
"""Per-row fields ranked besides `score` when StepResult has them (the SKAB replay collects none yet)."""


def extra_scores_available() -> list[str]:
    """The EXTRA_SCORES that StepResult has at this engine version."""
    names = {f.name for f in dataclasses.fields(StepResult)}
    return [n for n in EXTRA_SCORES if n in names]


def detection(f: AsdFile, out: EngineOutput) -> Detection:
    """The engine's output on one server in the shape metrics.evaluate takes."""
    opened = [(int(np.searchsorted(f.ts, e.ts)), int(e.channel)) for e in out.events if e.kind is AlertKind.RAISE]
    return Detection(scores={"score": out.score}, alerting=out.alerting, opened=opened)


def run_engine(files: list[AsdFile], config: DetectorConfig, model: str | None = None
               ) -> tuple[list[Detection], list[EngineOutput], float, str]:
    """(detections, raw outputs, seconds spent scoring, model id) of the engine on every server."""
    outs, seconds, model_id = score_files(files, config, model)  # type: ignore[arg-type]  # AsdFile quacks as SkabFile
    return [detection(f, o) for f, o in zip(files, outs)], outs, seconds, model_id
