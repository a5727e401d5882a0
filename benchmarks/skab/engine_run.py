"""Stream the SKAB files through the engine, every row scored once on arrival.

Each file is one sensor of one `Detector` (its own hidden state, statistics, calibration and alert
state), and the files are replayed side by side: batch k holds row k of every file that has one.
The engine's outputs do not depend on how a stream is cut into batches (a property its tests hold
it to), so this is the same as replaying each file alone through a fresh detector — `isolated=True`
does exactly that, 10–20× slower, to check it (at engine commit 550fdaf: identical flags, alerts,
events and metrics; scores equal to within 6e-8, float32 rounding). The only setting the harness overrides is
`idle_ttl` (set to None): the files were recorded on days a month apart, and side by side the engine
would otherwise evict the February files as idle once it sees March timestamps. Eviction is fleet
bookkeeping, not detection.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from benchmarks.skab.data import SkabFile
from detector import Detector, DetectorConfig
from detector.alerts import AlertEvent


@dataclass
class EngineOutput:
    """Per-row outputs of one file (arrays aligned with the file's rows)."""

    score: np.ndarray
    anomalous: np.ndarray
    alerting: np.ndarray
    residual: np.ndarray  # [N, C] seen − expected (NaN where no forecast yet)
    status: np.ndarray
    events: list[AlertEvent] = field(default_factory=list)


def harness_config(config: DetectorConfig) -> DetectorConfig:
    """The config the harness runs: the given one with idle eviction off (see the module docstring)."""
    return config.model_copy(update={"idle_ttl": None})


def score_files(
    files: list[SkabFile], config: DetectorConfig, model: str | None = None, isolated: bool = False
) -> tuple[list[EngineOutput], float, str]:
    """Score every file; returns (outputs, seconds spent scoring, model id)."""
    config = harness_config(config)
    channels = files[0].values.shape[1]
    outs = [
        EngineOutput(
            score=np.zeros(len(f), dtype=np.float32),
            anomalous=np.zeros(len(f), dtype=bool),
            alerting=np.zeros(len(f), dtype=bool),
            residual=np.full((len(f), channels), np.nan),
            status=np.zeros(len(f), dtype=np.int8),
        )
        for f in files
    ]
    started = time.perf_counter()
    if isolated:
        model_id = ""
        for f, out in zip(files, outs):
            det = Detector(model or config.model, config=config, channels=channels)
            model_id = det.model.model_id
            r = det.score_arrays([f.key] * len(f), f.ts, f.values)
            _store(out, r)
    else:
        det = Detector(model or config.model, config=config, channels=channels)
        model_id = det.model.model_id
        longest = max(len(f) for f in files)
        index = {f.key: i for i, f in enumerate(files)}
        for k in range(longest):
            live = [i for i, f in enumerate(files) if k < len(f)]
            r = det.score_arrays(
                [files[i].key for i in live],
                np.array([files[i].ts[k] for i in live]),
                np.stack([files[i].values[k] for i in live]),
            )
            for j, i in enumerate(live):
                out = outs[i]
                out.status[k] = r.status[j]
                if r.released[j]:  # a look-ahead model's score is for the row `delay` back
                    t = k - r.delay
                    out.score[t], out.anomalous[t], out.alerting[t] = r.score[j], r.anomalous[j], r.alerting[j]
                    out.residual[t] = r.residual[j]
            for e in r.events:
                outs[index[e.sensor_id]].events.append(e)
    seconds = time.perf_counter() - started
    for f, out in zip(files, outs):
        if np.any(out.status != 0):
            raise RuntimeError(f"{f.key}: {np.count_nonzero(out.status)} rows rejected by the engine")
    return outs, seconds, model_id


def _store(out: EngineOutput, r) -> None:
    """A whole file's result; a look-ahead model's scores are for the rows `delay` back."""
    out.status[:] = r.status
    n = len(r) - r.delay
    out.score[:n], out.anomalous[:n], out.alerting[:n] = r.score[r.delay:], r.anomalous[r.delay:], r.alerting[r.delay:]
    out.residual[:n] = r.residual[r.delay:]
    out.events.extend(r.events)
