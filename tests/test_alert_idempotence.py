"""At-least-once redelivery gives alert consumers byte-identical duplicates they fold on (alert_id, kind).

Issue 17, item 8: with `kill -9` during spikes one alert's clear came twice. Redelivery cannot be
avoided in at-least-once mode: the batch after the last commit is consumed again, from the state
checkpointed at that commit. This replays every batch that produced alert events a second time, the way
a restarted instance does (a new service, its sensors' state restored as the changelog holds it before
that batch, the same input records), and checks what a consumer of the alerts topic sees: the
duplicates are the same bytes (key, value, headers), and folding by the `alert_id` and `kind` headers
(no JSON parsing needed) leaves each raise and clear exactly once.
"""

from __future__ import annotations

import asyncio

from aiokafka.structs import ConsumerRecord

from consumers.config import ServiceConfig
from consumers.service import ScoringService
from detector.config import DetectorConfig
from detector.model.store import load_model
from tests.test_serve_kafka import fleet

TOPIC = "sensor-readings"
MODEL = load_model("gru-default")


def _service() -> ScoringService:
    cfg = ServiceConfig(metrics_enabled=False, checkpoints_enabled=False, detector=DetectorConfig(channels=1))
    return ScoringService(cfg, MODEL)


def _process(service: ScoringService, records: list[ConsumerRecord]) -> list:
    """One batch as `process` handles it, minus Kafka: decode, score, build the outputs."""
    decoded = service._decode(records)
    result = asyncio.run(service._score(decoded))
    return service._outputs(records, decoded, result)


def _header(out, name: str) -> str | None:
    return next((v.decode() for k, v in out.headers if k == name), None)


def test_a_redelivered_batch_repeats_its_alerts_byte_for_byte_and_folds_to_one_each():
    messages = fleet(sensors=6, steps=240, seed=2)  # s05 spikes at steps 90-95: a raise, then (later) a clear
    records = [ConsumerRecord(TOPIC, 0, i, 0, 0, k, v, None, len(k), len(v), []) for i, (k, v) in enumerate(messages)]
    batches = [records[i:i + 18] for i in range(0, len(records), 18)]  # 3 steps of 6 sensors per poll

    first = _service()
    delivered, replayed = [], []
    for batch in batches:
        sensors = sorted({r.key.decode() for r in batch} | set(first.ownership.owner))
        checkpoint = first.engine.export_state(sensors) if first.engine is not None else []  # the last commit
        outputs = [o for o in _process(first, batch) if o.topic == first.config.alerts_topic]
        delivered += outputs
        if outputs:  # killed before the commit: a new instance restores the checkpoint and consumes it again
            again = _service()
            again.engine = again._new_engine(1)
            held = [(s, c) for s, c in zip(sensors, checkpoint) if c is not None]
            assert again.engine.import_state([s for s, _ in held], [c for _, c in held]).restored == len(held)
            replayed += [o for o in _process(again, batch) if o.topic == again.config.alerts_topic]

    kinds = [_header(o, "kind") for o in delivered]
    assert kinds.count("raise") >= 1 and kinds.count("clear") >= 1, kinds
    # the duplicates a consumer receives are the very same records
    assert [(o.key, o.value, o.headers) for o in replayed] == [(o.key, o.value, o.headers) for o in delivered]
    # a consumer folding by (alert_id, kind) sees each raise and clear once
    folded: dict[tuple[str, str], bytes] = {}
    for out in delivered + replayed:
        key = (_header(out, "alert_id"), _header(out, "kind"))
        assert None not in key, out.headers
        assert folded.setdefault(key, out.value) == out.value  # same key, same bytes
    assert len(folded) == len(delivered)
    assert sorted(kind for _, kind in folded) == sorted(kinds)
    # and each episode's raise and clear share its alert_id
    for alert_id in {a for a, _ in folded}:
        assert (alert_id, "raise") in folded, alert_id
