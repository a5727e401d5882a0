"""Stream several recorded files through one `Detector`, side by side, every row scored once on arrival.

Shared by the detection benchmarks (benchmarks/skab/, benchmarks/asd/). Each file is one sensor of one
`Detector` (its own hidden state, statistics, calibration and alert state), with as many channels as
the file has value columns, and the files are replayed side by side: batch k holds row k of every file
that has one. The engine's outputs do not depend on how a stream is cut into batches (a property its
tests hold it to), so this is the same as replaying each file alone through a fresh detector —
`isolated=True` does exactly that, 10–20× slower, to check it (on SKAB at engine commit 550fdaf:
identical flags, alerts, events and metrics; scores equal to within 6e-8, float32 rounding).

The only setting the harness overrides is `idle_ttl` (set to None): recordings can be days or a month
apart (SKAB's are), and side by side the engine would otherwise evict the earlier files as idle once
it sees the later timestamps. Eviction is fleet bookkeeping, not detection.

Besides `score`, `anomalous`, `alerting`, `residual`, `status` and the alert events, `fields=` names
further per-row arrays of the engine's result (`StepResult`) to collect, e.g. `("surprise",)`; a name the
result does not have at this engine version is skipped, and `EngineOutput.extra` holds only those found.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from detector import Detector, DetectorConfig, StepResult
from detector.alerts import AlertEvent


class Recording(Protocol):
    """What the replay needs of a file: its sensor id, timestamps [N] in seconds and values [N, C]."""

    @property
    def key(self) -> str: ...

    @property
    def ts(self) -> np.ndarray: ...

    @property
    def values(self) -> np.ndarray: ...

    def __len__(self) -> int: ...


@dataclass
class EngineOutput:
    """Per-row outputs of one file (arrays aligned with the file's rows)."""

    score: np.ndarray
    anomalous: np.ndarray
    alerting: np.ndarray
    residual: np.ndarray  # [N, C] seen − expected (NaN where no forecast yet)
    status: np.ndarray
    events: list[AlertEvent] = field(default_factory=list)
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # the `fields` asked for that the engine has


def harness_config(config: DetectorConfig) -> DetectorConfig:
    """The config the harness runs: the given one with idle eviction off (see the module docstring)."""
    return config.model_copy(update={"idle_ttl": None})


def row_fields(result: StepResult, names: Sequence[str]) -> list[str]:
    """Those of `names` that `result` has as per-row arrays (one entry per input row)."""
    return [n for n in names
            if isinstance(getattr(result, n, None), np.ndarray) and len(getattr(result, n)) == len(result)]


def score_files(
    files: Sequence[Recording], config: DetectorConfig, model: str | None = None, isolated: bool = False,
    fields: Sequence[str] = (),
) -> tuple[list[EngineOutput], float, str]:
    """Score every file; returns (outputs, seconds spent scoring, model id)."""
    config = harness_config(config)
    channels = files[0].values.shape[1]
    outs = [
        EngineOutput(
            score=np.zeros(len(f), dtype=np.float64),
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
            _store(out, r, fields)
    else:
        det = Detector(model or config.model, config=config, channels=channels)
        model_id = det.model.model_id
        longest = max(len(f) for f in files)
        index = {f.key: i for i, f in enumerate(files)}
        collected: list[str] | None = None
        for k in range(longest):
            live = [i for i, f in enumerate(files) if k < len(f)]
            r = det.score_arrays(
                [files[i].key for i in live],
                np.array([files[i].ts[k] for i in live]),
                np.stack([files[i].values[k] for i in live]),
            )
            if collected is None:
                collected = row_fields(r, fields)
                for f, out in zip(files, outs):
                    out.extra = {n: _column(getattr(r, n), len(f)) for n in collected}
            for j, i in enumerate(live):
                out = outs[i]
                out.status[k] = r.status[j]
                if r.released[j]:  # a look-ahead model's score is for the row `delay` back
                    t = k - r.delay
                    out.score[t], out.anomalous[t], out.alerting[t] = r.score[j], r.anomalous[j], r.alerting[j]
                    out.residual[t] = r.residual[j]
                    for n in collected:
                        out.extra[n][t] = getattr(r, n)[j]
            for e in r.events:
                outs[index[e.sensor_id]].events.append(e)
    seconds = time.perf_counter() - started
    for f, out in zip(files, outs):
        if np.any(out.status != 0):
            raise RuntimeError(f"{f.key}: {np.count_nonzero(out.status)} rows rejected by the engine")
    return outs, seconds, model_id


def _column(like: np.ndarray, rows: int) -> np.ndarray:
    """A zeroed per-row array for a file of `rows` rows, of the dtype and row shape of the result's `like`."""
    return np.zeros((rows, *like.shape[1:]), dtype=like.dtype)


def _store(out: EngineOutput, r: StepResult, fields: Sequence[str]) -> None:
    """A whole file's result; a look-ahead model's scores are for the rows `delay` back."""
    out.status[:] = r.status
    n = len(r) - r.delay
    out.score[:n], out.anomalous[:n], out.alerting[:n] = r.score[r.delay:], r.anomalous[r.delay:], r.alerting[r.delay:]
    out.residual[:n] = r.residual[r.delay:]
    for name in row_fields(r, fields):
        out.extra[name] = _column(getattr(r, name), len(r))
        out.extra[name][:n] = getattr(r, name)[r.delay:]
    out.events.extend(r.events)
