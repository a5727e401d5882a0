"""Event-level and per-row metrics of one detector's output on the ASD test parts.

Events (per server, pooled over servers by summing counts):
- an alert is counted where it OPENS; only alerts that open in the test part count (one already open
  when the test part starts is neither a hit nor a false alarm: it is reported as "open all test" when
  it stays open throughout);
- an alert that opens in segment [start, end] or in the `grace` rows after it (default 0) is a true
  alert and catches that segment (every such segment, if two overlap); any other one is a false alarm;
- precision = true alerts / alerts opened in the test part; recall = segments caught / segments;
  F1 = 2PR / (P + R); false alerts per server-day = false alarms / (test rows / 288);
- delay of a caught segment = row of its first alert − its start row (× 5 min);
- reason hit rate = among true alerts, the share whose channel is among the labelled metrics of the
  segment (any of the segments) it opened in.

Per row: ROC-AUC of the per-row score against the anomaly label over all test rows (ties count half),
and the share of test rows (and of normal test rows) whose score equals the top score, a saturation check
(benchmarks/ranking.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields

import numpy as np

from benchmarks.asd.data import ROW_MINUTES, ROWS_PER_DAY, AsdFile, Segment
from benchmarks.ranking import ranking


@dataclass
class Detection:
    """One detector's output on one server, aligned with the file's rows (train part included)."""

    scores: dict[str, np.ndarray]  # name → [N] per-row score, higher = more anomalous; the first is the headline
    alerting: np.ndarray  # [N] bool: an alert is open after this row
    opened: list[tuple[int, int]]  # (row, channel) of every alert that opened, in row order


@dataclass
class EventCounts:
    """Event outcome of one server (or, summed, of many)."""

    segments: int = 0
    caught: int = 0
    alerts: int = 0  # opened in the test part
    true_alerts: int = 0
    reason_hits: int = 0
    test_rows: int = 0
    delays: list[int] = field(default_factory=list)  # rows, one per caught segment

    @property
    def false_alerts(self) -> int:
        return self.alerts - self.true_alerts

    def __add__(self, other: EventCounts) -> EventCounts:
        return EventCounts(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


def event_counts(segments: Sequence[Segment], opened: Iterable[tuple[int, int]], test_rows: int,
                 grace: int = 0) -> EventCounts:
    """Counts of one server: `opened` holds (test row, channel) of every alert that opened in the test part."""
    out = EventCounts(segments=len(segments), test_rows=test_rows)
    first: dict[int, int] = {}
    for row, channel in sorted(opened):
        inside = [i for i, s in enumerate(segments) if s.holds(row, grace)]
        out.alerts += 1
        if not inside:
            continue
        out.true_alerts += 1
        out.reason_hits += any(channel in segments[i].metrics for i in inside)
        for i in inside:
            first.setdefault(i, row)
    out.caught = len(first)
    out.delays = [row - segments[i].start for i, row in sorted(first.items())]
    return out


def _ratio(num: float, den: float) -> float:
    return num / den if den else float("nan")


def event_scores(c: EventCounts) -> dict[str, float]:
    """Precision, recall, F1, false alerts per server-day, delays and reason hit rate, with the counts."""
    precision, recall = _ratio(c.true_alerts, c.alerts), _ratio(c.caught, c.segments)
    d = np.asarray(c.delays, dtype=np.float64)
    return {
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0,
        "false_per_day": _ratio(c.false_alerts, c.test_rows / ROWS_PER_DAY),
        "median_delay_rows": float(np.median(d)) if d.size else float("nan"),
        "mean_delay_rows": float(d.mean()) if d.size else float("nan"),
        "median_delay_min": float(np.median(d)) * ROW_MINUTES if d.size else float("nan"),
        "mean_delay_min": float(d.mean()) * ROW_MINUTES if d.size else float("nan"),
        "reason_hit_rate": _ratio(c.reason_hits, c.true_alerts),
        "segments": c.segments,
        "caught": c.caught,
        "alerts": c.alerts,
        "true_alerts": c.true_alerts,
        "false_alerts": c.false_alerts,
        "reason_hits": c.reason_hits,
        "test_rows": c.test_rows,
    }


@dataclass
class ServerEval:
    """What one server contributes: event counts and its test rows' scores, labels and alert state."""

    counts: EventCounts
    scores: dict[str, np.ndarray]
    label: np.ndarray
    alerting: np.ndarray


def evaluate_server(f: AsdFile, d: Detection, grace: int = 0) -> ServerEval:
    """Evaluate one server's test part (rows from f.train_rows on)."""
    test = slice(f.train_rows, None)
    opened = [(row - f.train_rows, ch) for row, ch in d.opened if row >= f.train_rows]
    return ServerEval(
        counts=event_counts(f.segments, opened, f.test_rows, grace),
        scores={k: np.asarray(v)[test] for k, v in d.scores.items()},
        label=f.anomaly[test],
        alerting=np.asarray(d.alerting, dtype=bool)[test],
    )


def summarise(evals: Sequence[ServerEval]) -> dict:
    """Pooled event scores, per-row AUC and top-tie share per score, alert-open share and servers open throughout."""
    out = event_scores(sum((e.counts for e in evals), EventCounts()))
    label = np.concatenate([e.label for e in evals])
    for name in evals[0].scores:
        pooled = np.concatenate([e.scores[name] for e in evals])
        out.update(ranking(name, pooled, label))
    alerting = np.concatenate([e.alerting for e in evals])
    out["alert_open_share"] = float(alerting.mean())
    out["open_all_test"] = sum(bool(e.alerting.all()) for e in evals)
    out["servers"] = len(evals)
    return out


def evaluate(files: Sequence[AsdFile], detections: Sequence[Detection], grace: int = 0) -> dict:
    """Metrics pooled over all servers ("all") and per server ("servers": key → metrics)."""
    evals = [evaluate_server(f, d, grace) for f, d in zip(files, detections, strict=True)]
    return {"all": summarise(evals), "servers": {f.key: summarise([e]) for f, e in zip(files, evals)}}
