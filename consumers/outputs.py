"""What one micro-batch produces, built from its decoded messages and the engine's `StepResult`.

- dead letters: one per reading rejected while decoding or by the engine, the original copied,
  its reason and detail as headers;
- score records: one per scored reading (`score_records = "per_reading"`), or one per input
  message and sensor whose fields are arrays over its readings (`"per_message"`);
- alert events: one per alert raised or cleared, with `alert_id` and `kind` also as headers: together they
  are the event's identity, the key a consumer de-duplicates on (a redelivered event is the same bytes).

Every output says where its input was read (`source_topic`, `source_partition`, `source_offset`
and, for a reading of a batched message, `source_index`). Within a batch the dead letters come
first, then the score records, then the alerts, each kind in input order.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np
import orjson

from consumers import score_json
from consumers.channels import ChannelNames
from consumers.config import ServiceConfig
from consumers.decode import DeadLetterReason, Decoded
from consumers.metrics import ServiceStats
from detector.engine import StepResult
from detector.readings.reasons import SCORED, RejectReason

log = logging.getLogger("hiddenstate.serve")

JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


@dataclass(slots=True)
class Output:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    partition: int | None = None  # explicit partition (changelog records); None = by key


_PARTITION_HEADERS: dict[tuple[str, int], tuple[tuple[str, bytes], tuple[str, bytes]]] = {}
"""The source_topic and source_partition headers of each input partition seen (the same on every output)."""


def source_headers(msg, index: int = -1) -> list[tuple[str, bytes]]:
    """Where an output's input was read; `source_index`: the reading's position in a batched message."""
    where = _PARTITION_HEADERS.get((msg.topic, msg.partition))
    if where is None:
        if len(_PARTITION_HEADERS) > 10_000:
            _PARTITION_HEADERS.clear()
        where = _PARTITION_HEADERS[(msg.topic, msg.partition)] = (
            ("source_topic", msg.topic.encode()), ("source_partition", str(msg.partition).encode()))
    headers = [*where, ("source_offset", b"%d" % msg.offset)]
    if index >= 0:
        headers.append(("source_index", str(index).encode()))
    return headers


class OutputBuilder:
    """Builds a batch's outputs and counts them in `stats` (dead letters by reason, scores, alerts)."""

    def __init__(self, config: ServiceConfig, model_id: str, names: ChannelNames, stats: ServiceStats) -> None:
        self.config = config
        self.model_id = model_id
        self.names = names  # each sensor's channel names (or the configured ones) name its scores and alerts
        self.stats = stats
        self.sensor_text = score_json.SensorText()  # each sensor id's JSON and key, for its score records

    def build(self, messages: list, decoded: Decoded, result: StepResult | None) -> list[Output]:
        """The batch's dead letters, score records and alert events, in input order per kind."""
        engine_rows = decoded.engine_rows
        status = np.full(len(decoded), -1, dtype=np.int16)
        status[engine_rows] = result.status if result is not None else decoded.status[engine_rows]
        outputs = self._dead_letters(messages, decoded, status)
        if result is not None:
            outputs += self._scores(messages, decoded, result)
            outputs += self._alerts(messages, decoded, result)
        return outputs

    def _dead_letters(self, messages: list, decoded: Decoded, status: np.ndarray) -> list[Output]:
        """One dead letter per reading rejected while decoding or by the engine, with its reason."""
        outputs: list[Output] = []
        for i in np.flatnonzero(status != SCORED).tolist():
            dead = decoded.dead[i]
            if dead is None:
                reject = RejectReason(int(status[i]))
                dead = (DeadLetterReason[reject.name], decoded.details[i] or reject.detail)
            reason, detail = dead
            self.stats.dead_lettered[reason.value] = self.stats.dead_lettered.get(reason.value, 0) + 1
            msg = messages[decoded.message[i]]
            outputs.append(Output(
                self.config.dead_letter_topic, msg.key, decoded.dead_letter_value(i, msg.value),
                [("reason", reason.value.encode()), ("detail", detail.encode("utf-8", "replace")[:1000]),
                 *source_headers(msg, int(decoded.index[i]))],
            ))
        return outputs

    def _scores(self, messages: list, decoded: Decoded, result: StepResult) -> list[Output]:
        """The score records of the scored readings the engine released (a look-ahead model scores a reading
        `delay` readings later): one per reading, or one per input message and sensor."""
        scored = np.flatnonzero(result.status == SCORED)
        self.stats.scored += len(scored)
        if self.config.score_records == "per_message":
            columns = _per_message(messages, decoded, result, scored, self.names)
        else:
            js = scored[result.released[scored]]
            if _names_of(self.names, decoded, js) is None:  # channels as lists: written a column at a time
                outputs = self._json_records(messages, decoded, result, js)
                self.stats.score_messages += len(outputs)
                return outputs
            columns = _per_reading(messages, decoded, result, scored, self.names)
        topic, model_id, delay, version = self.config.scores_topic, self.model_id, result.delay, result.weights_version
        outputs = []
        for sensor, ts, score, surprise, anomalous, alerting, expected, seen, headers in zip(*columns):
            doc = {"sensor_id": sensor, "ts": ts, "score": score, "surprise": surprise, "anomalous": anomalous,
                   "alerting": alerting, "expected": expected, "values": seen, "model": model_id,
                   "weights_version": version}
            if delay:
                doc["delay"] = delay
            outputs.append(Output(topic, sensor.encode(), orjson.dumps(doc, option=JSON_OPTIONS), headers))
        self.stats.score_messages += len(outputs)
        return outputs

    def _json_records(self, messages: list, decoded: Decoded, result: StepResult, js: np.ndarray) -> list[Output]:
        """The per-reading score records of released rows `js` whose channels are lists, their JSON written a column
        at a time (consumers/score_json.py: the same bytes as `orjson.dumps` of each record's dict)."""
        sensors, headers = _sources(messages, decoded, result, js)
        json_ids, keys = self.sensor_text.of(sensors)
        values = score_json.records(json_ids, result.target_ts[js], result.score[js], result.surprise[js],
                                    result.anomalous[js], result.alerting[js], result.expected[js], result.seen[js],
                                    self.model_id, result.weights_version, result.delay)
        topic = self.config.scores_topic
        return [Output(topic, k, v, h) for k, v, h in zip(keys, values, headers)]

    def _alerts(self, messages: list, decoded: Decoded, result: StepResult) -> list[Output]:
        """One record per alert event, headers `alert_id` and `kind` (the dedup key), then the source headers of
        the reading that raised or cleared it."""
        if not result.events:
            return []
        js = np.flatnonzero((result.status == SCORED) & result.released)
        readings = zip((result.sensor_ids[j] for j in js.tolist()), result.target_ts[js].tolist())
        scored_at = dict(zip(readings, decoded.engine_rows[js].tolist()))  # (sensor, ts) -> row
        sets = self.names
        outputs = []
        for event in result.events:
            i = scored_at.get((event.sensor_id, event.ts))
            set_id = int(decoded.channel_set[i]) if i is not None else int(sets.bound([event.sensor_id])[0])
            names = sets.configured or sets.names(set_id)
            if names and event.channel_name is None and event.channel < len(names):
                event = dataclasses.replace(event, channel_name=names[event.channel])
            doc = event.as_dict()
            doc["model"], doc["weights_version"] = self.model_id, result.weights_version
            headers = [("alert_id", event.alert_id.encode()), ("kind", event.kind.value.encode())]  # the dedup key
            if i is not None:
                headers += source_headers(messages[decoded.message[i]], int(decoded.index[i]))
            outputs.append(Output(self.config.alerts_topic, event.sensor_id.encode(), orjson.dumps(doc), headers))
            self.stats.alerts += 1
            log.info("alert %s %s score=%.4f", event.kind.value, event.alert_id, event.score,
                     extra={"alert_kind": event.kind.value, "alert_id": event.alert_id,
                            "sensor_id": event.sensor_id, "score": float(event.score)})
        return outputs


Columns = tuple[list, list, list, list, list, list, list, list, list[list[tuple[str, bytes]]]]
"""The score records of a batch by field: sensor, ts, score, surprise, anomalous, alerting, expected, values,
headers."""


def _names_of(sets: ChannelNames, decoded: Decoded, js: np.ndarray) -> list[list[str] | None] | None:
    """The channel names of the sensor of each of these engine rows (None: it has none, its channels are a list);
    None when no row's sensor has names."""
    if sets.configured is not None:
        return [sets.configured] * len(js)
    if not sets.any_bound:
        return None
    ids = decoded.channel_set[decoded.engine_rows[js]].tolist()
    named = {k: sets.names(k) for k in set(ids)}
    return [named[k] for k in ids] if any(named.values()) else None


def _sources(messages: list, decoded: Decoded, result: StepResult, js: np.ndarray
             ) -> tuple[list[str], list[list[tuple[str, bytes]]]]:
    """The sensor and the source headers of each of these engine rows (the readings of one message share theirs,
    plus `source_index` in a batched message)."""
    rows = decoded.engine_rows[js]
    row_message, row_index = decoded.message[rows].tolist(), decoded.index[rows].tolist()
    sensor_ids = result.sensor_ids
    sensors = [sensor_ids[j] for j in js.tolist()]
    if not any(i >= 0 for i in row_index) and len(set(row_message)) == len(row_message):  # one reading a message
        return sensors, [source_headers(messages[m]) for m in row_message]
    headers = []
    message_headers: dict[int, list[tuple[str, bytes]]] = {}
    for m, index in zip(row_message, row_index):
        h = message_headers.get(m)
        if h is None:
            h = message_headers[m] = source_headers(messages[m])
        if index >= 0:  # a reading of a batched message
            h = [*h, ("source_index", str(index).encode())]
        headers.append(h)
    return sensors, headers


def _per_reading(messages: list, decoded: Decoded, result: StepResult, scored: np.ndarray,
                 sets: ChannelNames) -> Columns:
    """One score record per released reading, its fields numbers (channels: a list, or an object by its sensor's
    names)."""
    js = scored[result.released[scored]]
    sensors, headers = _sources(messages, decoded, result, js)
    expected, seen = result.expected[js].tolist(), result.seen[js].tolist()
    names = _names_of(sets, decoded, js)
    if names is not None:
        expected = [dict(zip(n, e)) if n else e for n, e in zip(names, expected)]
        seen = [dict(zip(n, v)) if n else v for n, v in zip(names, seen)]
    return (sensors, result.target_ts[js].tolist(), result.score[js].tolist(), result.surprise[js].tolist(),
            result.anomalous[js].tolist(), result.alerting[js].tolist(), expected, seen, headers)


def _per_message(messages: list, decoded: Decoded, result: StepResult, scored: np.ndarray,
                 sets: ChannelNames) -> Columns:
    """One score record per input message and sensor, its fields arrays over the message's released readings
    of that sensor (channels: arrays, or an object of arrays by the sensor's names after the message)."""
    columns: Columns = ([], [], [], [], [], [], [], [], [])
    sensors, ts, score, surprise, anomalous, alerting, expected, seen, headers = columns
    engine_rows, released = decoded.engine_rows, result.released  # (a property: computed on each read)
    message_of = decoded.message[engine_rows[scored]]
    bounds = np.flatnonzero(np.diff(message_of)) + 1
    for js in np.split(scored, bounds) if scored.size else []:
        m = int(decoded.message[engine_rows[js[0]]])
        if m in decoded.columns:  # one sensor
            groups: dict[str, list[int] | np.ndarray] = {result.sensor_ids[js[0]]: js}
        else:
            groups = {}
            for j in js.tolist():
                groups.setdefault(result.sensor_ids[j], []).append(j)
        for sensor, rows in groups.items():
            rows = np.asarray(rows)
            rows = rows[released[rows]]
            if rows.size == 0:
                continue
            e, v = result.expected[rows], result.seen[rows]
            names = (_names_of(sets, decoded, rows[-1:]) or [None])[0]
            sensors.append(sensor)
            ts.append(result.target_ts[rows])
            score.append(result.score[rows])
            surprise.append(result.surprise[rows])
            anomalous.append(result.anomalous[rows])
            alerting.append(result.alerting[rows])
            # columns copied: orjson writes only C-contiguous arrays
            expected.append({n: c.copy() for n, c in zip(names, e.T)} if names else e)
            seen.append({n: c.copy() for n, c in zip(names, v.T)} if names else v)
            headers.append(source_headers(messages[m]))
    return columns
