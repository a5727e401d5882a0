"""Score CSV or JSON-lines files with the streaming engine (`hiddenstate replay`, `detector.cli.replay`).

Every file goes through ONE `Detector`, the same engine the service runs, in
micro-batches of `--batch` rows: what replay says about a file is what the
service would have said had the readings arrived in that order. The rows of a
file are fed in timestamp order (a stable sort, so a sorted file goes in file
order), one file after the other; a sensor seen in several files keeps its state.

Writes a scores CSV (one row per reading, rejected ones included with the
reason and an empty score), the alert events as JSON lines, optionally a plot, and prints a summary.
`replay_files` does the work; `write_scores` and `write_alerts` write its outputs.
"""

from __future__ import annotations

import csv
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

from detector.alerts import AlertEvent, AlertKind
from detector.config import DetectorConfig
from detector.api import Detector
from detector.engine import EngineStats
from detector.errors import InputFileError
from detector.model.store import check_channel_names
from detector.readings.files import Readings, read_readings
from detector.readings.reasons import SCORED, RejectReason

PENDING = -1
"""Status of a row a look-ahead model accepted but never scored: no later reading of its sensor released it."""


@dataclass(frozen=True)
class Episode:
    """One alert episode: its raise and, if it closed before the end of the data, its clear."""

    sensor_id: str
    start: float
    end: float | None  # None: still open at the end of the replay
    channel_name: str
    expected: float
    seen: float
    score: float  # at the raise
    peak_score: float

    @property
    def duration(self) -> float | None:
        return None if self.end is None else self.end - self.start


@dataclass
class ReplayResult:
    """Everything a replay produced, row i for the i-th reading scored (files concatenated, each sorted by time).

    status: 0 if scored, PENDING if accepted but never scored (a look-ahead model's last readings of a sensor,
    which no later reading released), else a RejectReason value; score: NaN unless scored (so an empty cell in
    the scores CSV); expected: the forecast (NaN if none);
    labels: ground-truth columns of the files (NaN where a file had none);
    skipped: (file, line, reason) of rows that never reached the engine.
    """

    sources: list[str]
    channel_names: list[str]
    sensor_ids: list[str]
    ts: np.ndarray
    values: np.ndarray
    status: np.ndarray
    score: np.ndarray
    anomalous: np.ndarray
    alerting: np.ndarray
    expected: np.ndarray
    surprise: np.ndarray  # −log10 of the tail probability behind `score`, in the unit thresholds read
    events: list[AlertEvent]
    stats: EngineStats
    model_id: str
    config: DetectorConfig
    seconds: float
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    skipped: list[tuple[str, int, str]] = field(default_factory=list)
    reordered: int = 0
    delay: int = 0  # readings a score comes after its reading (the model's look-ahead)

    def __len__(self) -> int:
        return len(self.sensor_ids)

    @property
    def scored(self) -> int:
        return int(np.count_nonzero(self.status == SCORED))

    def rejected(self) -> dict[RejectReason, int]:
        """Rows rejected by the engine, per reason (only reasons that occurred)."""
        codes, counts = np.unique(self.status[self.status > SCORED], return_counts=True)
        return {RejectReason(int(c)): int(n) for c, n in zip(codes.tolist(), counts.tolist())}

    def sensors(self) -> list[str]:
        """Sensor ids in order of first appearance."""
        return list(dict.fromkeys(self.sensor_ids))

    def rows_of(self, sensor_id: str) -> np.ndarray:
        """Row indices of one sensor, in scoring order."""
        return np.flatnonzero(np.asarray(self.sensor_ids, dtype=object) == sensor_id)

    def episodes(self) -> list[Episode]:
        """Alert episodes from the events; episodes still open at the end get end None and their peak so far."""
        opened: dict[str, AlertEvent] = {}
        out: list[Episode] = []
        for event in self.events:
            if event.kind is AlertKind.RAISE:
                opened[event.alert_id] = event
                continue
            raised = opened.pop(event.alert_id, None)
            start = raised or event
            out.append(Episode(event.sensor_id, event.started, event.ts, _channel(start), start.expected,
                               start.seen, start.score, event.peak_score))
        ids = np.asarray(self.sensor_ids, dtype=object)
        for event in opened.values():
            rows = (ids == event.sensor_id) & (self.ts >= event.started) & (self.status == SCORED)
            peak = float(self.score[rows].max()) if rows.any() else event.score
            out.append(Episode(event.sensor_id, event.started, None, _channel(event), event.expected, event.seen,
                               event.score, peak))
        return sorted(out, key=lambda e: (e.sensor_id, e.start))


def _channel(event: AlertEvent) -> str:
    return event.channel_name if event.channel_name is not None else str(event.channel)


def replay_files(
    paths: Sequence[str | Path],
    config: DetectorConfig | None = None,
    batch: int = 1024,
    time_column: str | None = None,
    sensor_column: str | None = None,
    value_columns: Sequence[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    detector: Detector | None = None,
) -> ReplayResult:
    """Read `paths` and score them with one Detector, in micro-batches of `batch` rows.

    progress(done, total) is called after each batch. A `detector` may be passed
    to continue from its state (its config then wins over `config`).
    """
    if batch < 1:
        raise InputFileError(f"--batch must be at least 1, not {batch}")
    if not paths:
        raise InputFileError("give at least one file to replay")
    files = [read_readings(p, time_column, sensor_column, value_columns) for p in paths]
    # `is None`, not truthiness: a Detector holding no sensors yet has len 0
    _check_channels(files, (detector.config if detector is not None else config or DetectorConfig()).channels)
    det = detector if detector is not None else Detector(config=config)
    check_channel_names(det.model, files[0].channel_names, files[0].source)  # a joint model's fixed channel set
    channels = files[0].channels

    reordered = 0
    for i, readings in enumerate(files):
        order = np.argsort(readings.ts, kind="stable")
        if np.any(order != np.arange(order.size)):
            reordered += int(np.count_nonzero(order != np.arange(order.size)))
            files[i] = readings.take(order)

    total = sum(len(f) for f in files)
    status = np.zeros(total, dtype=np.int8)
    score, surprise = np.full(total, np.nan), np.full(total, np.nan)  # NaN: rejected, or never scored (`PENDING`)
    anomalous = np.zeros(total, dtype=bool)
    alerting = np.zeros(total, dtype=bool)
    expected = np.full((total, channels), np.nan, dtype=np.float32)
    names = files[0].channel_names
    events: list[AlertEvent] = []
    started = time.perf_counter()
    offset = 0
    for readings in files:
        index: dict[tuple[str, float], int] = {}  # (sensor, ts) -> row, to place a look-ahead model's late scores
        if det.delay:
            for row, key in enumerate(zip(readings.sensor_ids, readings.ts.tolist())):
                index.setdefault(key, row)
        for start in range(0, len(readings), batch):
            stop = min(start + batch, len(readings))
            out = det.score_arrays(
                readings.sensor_ids[start:stop], readings.ts[start:stop], readings.values[start:stop]
            )
            status[offset + start : offset + stop] = out.status
            released = np.flatnonzero(out.released)
            if out.delay:  # a look-ahead model scores each sensor's reading `delay` readings back
                status[offset + start + np.flatnonzero(out.status == SCORED)] = PENDING  # until its score arrives
                targets = offset + np.array([index[(out.sensor_ids[j], out.target_ts[j])] for j in released.tolist()],
                                            dtype=np.int64)
                status[targets] = SCORED
            else:
                targets = offset + start + released
            score[targets], anomalous[targets] = out.score[released], out.anomalous[released]
            surprise[targets] = out.surprise[released]
            alerting[targets], expected[targets] = out.alerting[released], out.expected[released]
            events.extend(dataclasses.replace(e, channel_name=names[e.channel]) for e in out.events)
            if progress is not None:
                progress(offset + stop, total)
        offset += len(readings)
    seconds = time.perf_counter() - started

    label_names = list(dict.fromkeys(name for f in files for name in f.labels))
    labels = {
        name: np.concatenate([f.labels.get(name, np.full(len(f), np.nan)) for f in files]) for name in label_names
    }
    return ReplayResult(
        sources=[f.source for f in files],
        channel_names=list(names),
        sensor_ids=[s for f in files for s in f.sensor_ids],
        ts=np.concatenate([f.ts for f in files]),
        values=np.concatenate([f.values for f in files]),
        status=status,
        score=score,
        surprise=surprise,
        anomalous=anomalous,
        alerting=alerting,
        expected=expected,
        events=events,
        stats=det.stats,
        model_id=det.model.model_id,
        config=det.config,
        seconds=seconds,
        labels=labels,
        skipped=[(f.source, line, reason) for f in files for line, reason in f.skipped],
        reordered=reordered,
        delay=det.delay,
    )


def _check_channels(files: list[Readings], configured: int | None) -> None:
    """One engine needs one channel layout: every file must have the same value columns."""
    first = files[0]
    if configured is not None and configured != first.channels:
        raise InputFileError(
            f"{first.source} has {first.channels} value columns but the configuration says channels={configured}; "
            "pick columns with --columns or change the setting"
        )
    for other in files[1:]:
        if other.channel_names != first.channel_names:
            raise InputFileError(
                f"{other.source} has value columns {other.channel_names}, {first.source} has {first.channel_names}; "
                "files replayed together need the same ones: pick them with --columns"
            )


# ----------------------------------------------------------------------------- outputs


def iso_times(ts: np.ndarray) -> np.ndarray:
    """ISO 8601 UTC strings ('Z') for epoch seconds, with the finest unit the data needs (s, ms or µs)."""
    micros = np.round(ts * 1e6)
    finite = np.isfinite(micros)
    unit = "s"
    if np.any(micros[finite] % 1_000_000):
        unit = "ms" if not np.any(micros[finite] % 1_000) else "us"
    stamps = np.where(finite, micros, 0).astype(np.int64).astype("datetime64[us]")
    out = np.datetime_as_string(stamps, unit=unit, timezone="UTC")
    out[~finite] = ""
    return out


def write_scores(result: ReplayResult, path: Path) -> None:
    """The scores CSV: ts, sensor_id, score, surprise, anomalous, alerting, status, then value_<ch> and expected_<ch>.

    The score is written in full (shortest round-trip float64), so scores near 1 keep their order; the
    surprise (−log10 of the tail probability) is the same order on a scale that reads. A row that was
    not scored (status a reject reason, or `pending`) has empty score and surprise cells, never a 0.
    """
    labels = {SCORED: "scored", PENDING: "pending", **{r.value: r.label for r in RejectReason}}
    header = ["ts", "sensor_id", "score", "surprise", "anomalous", "alerting", "status"]
    header += [f"value_{c}" for c in result.channel_names] + [f"expected_{c}" for c in result.channel_names]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        step = 65_536
        for start in range(0, len(result), step):
            rows = slice(start, start + step)
            columns: list[list[str]] = [
                iso_times(result.ts[rows]).tolist(),
                result.sensor_ids[rows],
                [_fmt(s, repr) for s in result.score[rows].tolist()],  # empty: not scored
                [_fmt(s, "{:.6g}".format) for s in result.surprise[rows].tolist()],
                result.anomalous[rows].astype(np.int8).tolist(),
                result.alerting[rows].astype(np.int8).tolist(),
                [labels[s] for s in result.status[rows].tolist()],
            ]
            columns += [[_fmt(v, repr) for v in col] for col in result.values[rows].T.tolist()]
            columns += [[_fmt(v, "{:.7g}".format) for v in col] for col in result.expected[rows].T.tolist()]
            writer.writerows(zip(*columns))


def _fmt(value: float, how: Callable[[float], str]) -> str:
    return "" if value != value else how(value)  # NaN (no value, no forecast) is an empty cell


def write_alerts(result: ReplayResult, path: Path) -> None:
    """Alert events as JSON lines of AlertEvent.as_dict(), channel named."""
    with open(path, "wb") as handle:
        handle.writelines(orjson.dumps(event.as_dict()) + b"\n" for event in result.events)
