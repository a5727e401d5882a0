"""`hiddenstate serve` against a real Kafka broker (scripts/kafka.sh): end to end, restart, broker down.

The broker is started once per session by tests/kafka_broker.py (port 19092 unless
HIDDENSTATE_TEST_BOOTSTRAP names one); every test uses its own topics and group.
"""

from __future__ import annotations

import asyncio
import re
import logging
import signal
import socket
import time
from pathlib import Path

import numpy as np
import orjson
import pytest

from consumers.config import ServiceConfig
from consumers.decode import Decoder
from consumers.process import serve
from consumers.service import ScoringService
from detector.config import DetectorConfig
from detector.engine import Engine
from detector.model.store import Model, load_model, save_model, shipped_model_names, untrained
from tests.kafka_broker import (  # noqa: F401 - kafka_bootstrap is a fixture
    committed_offsets,
    create_topics,
    end_offsets,
    header,
    kafka_bootstrap,
    produce,
    read_all,
    serve_command,
    start_serve,
    unique_name,
    wait_committed,
)

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_700_000_000.0
ANOMALOUS = "s05"
DETECTOR = DetectorConfig(channels=1)


@pytest.fixture(scope="module")
def model() -> Model:
    if "gru-default" in shipped_model_names():
        return load_model("gru-default")
    return untrained(8, 1)


@pytest.fixture(scope="module")
def model_dir(model, tmp_path_factory) -> Path:
    if model.path is not None:
        return model.path
    return save_model(model, tmp_path_factory.mktemp("model") / "small")


def fleet(sensors: int = 24, steps: int = 120, seed: int = 0) -> list[tuple[bytes, bytes]]:
    """Readings of a fleet in time order, keyed by sensor id; sensor s05 gets a big spike at steps 90-95."""
    rng = np.random.default_rng(seed)
    phases = rng.uniform(0, 6.28, sensors)
    out = []
    for t in range(steps):
        for s in range(sensors):
            sid = f"s{s:02d}"
            v = 10 + 2 * np.sin(t / 8.0 + phases[s]) + 0.1 * rng.standard_normal()
            if sid == ANOMALOUS and 90 <= t < 96:
                v += 40.0
            out.append((sid.encode(), orjson.dumps({"sensor_id": sid, "ts": T0 + 10 * t, "value": float(v)})))
    return out


# (key, value, expected dead-letter reason); inserted into the stream at step 60
BAD = [
    (b"s01", b"{not json", "malformed_json"),
    (b"s02", b'{"sensor_id": "s02", "ts": 1700000605, "value": NaN}', "not_finite"),
    (b"s02", b'{"sensor_id": "s02", "ts": 1700000606, "value": 1e999}', "not_finite"),
    (b"s03", b'{"sensor_id": "s03", "ts": 1700000607, "value": "abc"}', "not_numeric"),
    (b"s03", b'{"sensor_id": "s03", "ts": 1700000608, "value": true}', "not_numeric"),
    (b"s04", b'{"sensor_id": "s04", "ts": "yesterday", "value": 1.0}', "bad_timestamp"),
    (b"s06", b'{"sensor_id": ["s06"], "ts": 1700000609, "value": 1.0}', "bad_sensor_id"),
    (b"s07", b"3.5", "not_an_object"),
    (b"s08", b'{"sensor_id": "s08", "value": 1.0}', "missing_field"),
    (b"s09", b'{"sensor_id": "s09", "ts": 1700000000, "value": 1.0}', "out_of_order"),
    (b"s10", b'{"sensor_id": "s10", "ts": 1700000590, "value": 1.0}', "duplicate"),
    (b"s11", b'{"sensor_id": "s11", "ts": 1700000611, "value": 1.0, "pad": "' + b"x" * 70_000 + b'"}', "too_large"),
    (b"s12", b'{"sensor_id": "s12", "ts": 1700000612, "values": [1.0, 2.0]}', "wrong_channels"),
]


def stream_with_bad_messages() -> list[tuple[bytes, bytes]]:
    good = fleet()
    cut = 24 * 60  # after every sensor's 60th reading (ts T0 + 590)
    return good[:cut] + [(k, v) for k, v, _ in BAD] + good[cut:]


def reference(model: Model, messages: list[tuple[bytes, bytes]], **decoder_options):
    """What the engine says about the stream read in order, with no Kafka in between."""
    decoder = Decoder(DETECTOR.channels, **decoder_options)
    decoded = decoder.decode(messages)
    engine = Engine(model.network, DETECTOR, 1)
    rows = decoded.engine_rows
    result = engine.step([decoded.sensor_ids[i] for i in rows], decoded.ts[rows], decoded.values[rows],
                         decoded.status[rows])
    scores = {(result.sensor_ids[j], float(result.target_ts[j])): float(result.score[j])
              for j in range(len(result)) if result.released[j]}
    return scores, result.events


def service_config(bootstrap: str, topics: dict[str, str], group: str, **kw) -> ServiceConfig:
    kw = {"metrics_address": "127.0.0.1", "metrics_port": 0, **kw}  # several services at once: any free port
    return ServiceConfig(
        bootstrap_servers=bootstrap,
        input_topics=[topics["in"]],
        scores_topic=topics["scores"],
        alerts_topic=topics["alerts"],
        dead_letter_topic=topics["dlq"],
        group_id=group,
        poll_timeout_ms=100,
        grace_seconds=20,
        detector=DETECTOR,
        **kw,
    )


async def new_topics(bootstrap: str, partitions: int = 4) -> dict[str, str]:
    topics = {k: unique_name(f"t-{k}") for k in ("in", "scores", "alerts", "dlq")}
    await create_topics(bootstrap, {topics["in"]: partitions, topics["scores"]: 3, topics["alerts"]: 1,
                                    topics["dlq"]: 1})
    return topics


def test_reference_stream_has_one_alert_episode(model):
    """Sanity of the test data: offline, the spike raises exactly one alert and nothing else does."""
    _, events = reference(model, stream_with_bad_messages())
    raises = [e for e in events if e.kind.value == "raise"]
    assert [e.sensor_id for e in raises] == [ANOMALOUS]


def test_end_to_end(kafka_bootstrap, model):
    messages = stream_with_bad_messages()
    ref_scores, ref_events = reference(model, messages)

    async def scenario():
        topics = await new_topics(kafka_bootstrap)
        placed = await produce(kafka_bootstrap, topics["in"], messages)
        ends = await end_offsets(kafka_bootstrap, topics["in"])
        assert sum(ends.values()) == len(messages) and len(ends) == 4
        group = unique_name("g")
        cfg = service_config(kafka_bootstrap, topics, group, max_batch=200)
        started = time.perf_counter()
        async with ScoringService(cfg, model) as service:
            task = asyncio.create_task(service.run())
            await wait_committed(kafka_bootstrap, group, topics["in"], ends, timeout=120)
            elapsed = time.perf_counter() - started
            service.request_stop()
            await asyncio.wait_for(task, 20)
        outputs = {k: await read_all(kafka_bootstrap, topics[k]) for k in ("scores", "alerts", "dlq")}
        committed = await committed_offsets(kafka_bootstrap, group, topics["in"])
        return placed, ends, outputs, committed, service.stats, elapsed

    placed, ends, outputs, committed, stats, elapsed = asyncio.run(scenario())
    logging.getLogger(__name__).info("end to end: %d messages in %.2fs", len(messages), elapsed)
    assert committed == ends

    # scores: one per valid reading, equal to the offline engine's, keyed by sensor id
    scores = outputs["scores"]
    assert len(scores) == len(ref_scores) == len(messages) - len(BAD)
    got = {}
    for r in scores:
        doc = orjson.loads(r.value)
        assert r.key == doc["sensor_id"].encode()
        assert set(doc) == {"sensor_id", "ts", "score", "surprise", "anomalous", "alerting", "expected", "values",
                            "model", "weights_version"}
        assert doc["model"] == model.model_id and len(doc["values"]) == 1 and doc["weights_version"] == 0
        got[(doc["sensor_id"], doc["ts"])] = doc["score"]
    assert got.keys() == ref_scores.keys()
    assert max(abs(got[k] - ref_scores[k]) for k in got) < 1e-4

    # dead letters: every bad message, with its original bytes, key and reason
    dlq = outputs["dlq"]
    assert len(dlq) == len(BAD)
    by_value = {r.value: r for r in dlq}
    for i, (key, value, why) in enumerate(BAD):
        r = by_value[value]
        assert r.key == key and header(r, "reason") == why, (why, header(r, "reason"))
        assert header(r, "detail")
        src = (int(header(r, "source_partition")), int(header(r, "source_offset")))
        assert src == placed[24 * 60 + i] and header(r, "source_topic")
    assert sum(stats.dead_lettered.values()) == len(BAD)

    # alerts: the spike raises exactly one alert, for its sensor; same events as offline
    alerts = [orjson.loads(r.value) for r in outputs["alerts"]]
    raises = [a for a in alerts if a["kind"] == "raise"]
    assert [a["sensor_id"] for a in raises] == [ANOMALOUS]
    assert raises[0]["model"] == model.model_id and raises[0]["alert_id"].startswith(ANOMALOUS + "@")
    assert sorted((a["kind"], a["alert_id"]) for a in alerts) == sorted((e.kind.value, e.alert_id) for e in ref_events)
    assert all(r.key == ANOMALOUS.encode() for r in outputs["alerts"])


async def run_to_the_end(bootstrap: str, model: Model, messages: list[tuple[bytes, bytes]], **config):
    """Produce `messages` to fresh topics and run a service on them until its commits reach the end.

    Returns (where each message was placed, end offsets, scores and dead letters read back, committed
    offsets, the service's stats).
    """
    topics = await new_topics(bootstrap)
    placed = await produce(bootstrap, topics["in"], messages)
    ends = await end_offsets(bootstrap, topics["in"])
    group = unique_name("g")
    async with ScoringService(service_config(bootstrap, topics, group, **config), model) as service:
        task = asyncio.create_task(service.run())
        await wait_committed(bootstrap, group, topics["in"], ends, timeout=120)
        service.request_stop()
        await asyncio.wait_for(task, 20)
    outputs = {k: await read_all(bootstrap, topics[k]) for k in ("scores", "dlq")}
    committed = await committed_offsets(bootstrap, group, topics["in"])
    return placed, ends, outputs, committed, service.stats


def batched_stream() -> tuple[list[tuple[bytes, bytes]], dict[tuple[int, int], tuple[bytes, str]]]:
    """The fleet in batched messages keyed by sensor, with bad readings inside batches.

    Returns the messages and, by (message number, reading index), each bad reading's JSON and reason
    (index -1: the message is dead as a whole).
    """
    chunks: dict[str, list[dict]] = {}
    for _, value in fleet(sensors=8, steps=60, seed=3):
        doc = orjson.loads(value)
        chunks.setdefault(doc["sensor_id"], []).append(doc)
    messages: list[tuple[bytes, bytes]] = []
    bad: dict[tuple[int, int], tuple[bytes, str]] = {}
    for step in range(0, 60, 10):
        for sid, docs in chunks.items():
            readings = [{"ts": d["ts"], "value": d["value"]} for d in docs[step:step + 10]]
            if sid == "s01" and step == 20:  # an array of full readings, one of them not a number
                readings = [{"sensor_id": sid, **r} for r in readings]
                readings[3]["value"] = "abc"
                bad[(len(messages), 3)] = (orjson.dumps(readings[3]), "not_numeric")
                messages.append((sid.encode(), orjson.dumps(readings)))
                continue
            if sid == "s02" and step == 30:  # a reading that is not an object, and one without ts
                readings.insert(5, 7)
                readings.insert(6, {"value": 1.0})
                bad[(len(messages), 5)] = (b"7", "not_an_object")
                bad[(len(messages), 6)] = (b'{"value":1.0}', "missing_field")
            messages.append((sid.encode(), orjson.dumps({"sensor_id": sid, "readings": readings})))
    too_many = orjson.dumps({"sensor_id": "zz", "readings": [{"ts": T0 + t, "value": 1.0} for t in range(51)]})
    bad[(len(messages), -1)] = (too_many, "too_many_readings")
    messages.append((b"zz", too_many))
    return messages, bad


def test_batched_messages_end_to_end(kafka_bootstrap, model):
    """Many readings per message: each is scored or dead-lettered on its own; offsets committed to the end."""
    messages, bad = batched_stream()
    ref_scores, _ = reference(model, messages, max_readings=50)

    placed, ends, outputs, committed, stats = asyncio.run(
        run_to_the_end(kafka_bootstrap, model, messages, max_batch=7, max_readings_per_message=50)
    )
    assert committed == ends
    # 480 readings, 2 bad ones inserted, and the batch dead as a whole counts once
    assert stats.messages == len(messages) and stats.consumed == 8 * 60 + 2 + 1
    # every valid reading scored once, as the engine scores the stream offline
    got = {}
    for r in outputs["scores"]:
        doc = orjson.loads(r.value)
        assert r.key == doc["sensor_id"].encode() and header(r, "source_index") is not None
        got[(doc["sensor_id"], doc["ts"])] = doc["score"]
    assert len(outputs["scores"]) == len(got) == len(ref_scores) == 8 * 60 - 1
    assert got.keys() == ref_scores.keys()
    assert max(abs(got[k] - ref_scores[k]) for k in got) < 1e-4
    # each bad reading dead-lettered alone: its own JSON, its message's coordinates and its index
    where = {placed[m]: m for m in range(len(messages))}
    dead = {}
    for r in outputs["dlq"]:
        m = where[(int(header(r, "source_partition")), int(header(r, "source_offset")))]
        index = header(r, "source_index")
        dead[(m, -1 if index is None else int(index))] = (r.value, header(r, "reason"))
        assert r.key == messages[m][0] and header(r, "detail")
    assert dead == bad


def test_columnar_messages_with_one_score_record_per_message(kafka_bootstrap, model):
    """Columnar batches in, `score_records = "per_message"` out: one record per message, its fields arrays
    over the message's readings, equal to the engine's scores; a bad cell is dead-lettered alone."""
    chunks: dict[str, list[dict]] = {}
    for _, value in fleet(sensors=8, steps=60, seed=5):
        doc = orjson.loads(value)
        chunks.setdefault(doc["sensor_id"], []).append(doc)
    messages: list[tuple[bytes, bytes]] = []
    for step in range(0, 60, 12):
        for sid, docs in chunks.items():
            block = docs[step:step + 12]
            values: list[object] = [d["value"] for d in block]
            if sid == "s03" and step == 24:
                values[4] = "abc"  # the batch takes the reading-by-reading path; its siblings are scored
            doc = {"sensor_id": sid, "ts": [d["ts"] for d in block], "value": values}
            messages.append((sid.encode(), orjson.dumps(doc)))
    ref_scores, _ = reference(model, messages)

    placed, ends, outputs, committed, stats = asyncio.run(
        run_to_the_end(kafka_bootstrap, model, messages, max_batch=9, score_records="per_message")
    )
    assert committed == ends
    assert stats.scored == 8 * 60 - 1 and len(outputs["dlq"]) == 1
    assert header(outputs["dlq"][0], "reason") == "not_numeric" and header(outputs["dlq"][0], "source_index") == "4"
    where = {placed[m]: m for m in range(len(messages))}
    got, seen_messages = {}, set()
    for r in outputs["scores"]:
        doc = orjson.loads(r.value)
        m = where[(int(header(r, "source_partition")), int(header(r, "source_offset")))]
        assert m not in seen_messages and header(r, "source_index") is None
        seen_messages.add(m)
        assert r.key == messages[m][0] == doc["sensor_id"].encode()
        n = len(doc["ts"])
        assert n == len(doc["score"]) == len(doc["anomalous"]) == len(doc["alerting"]) == len(doc["values"])
        assert doc["ts"] == [t for t in orjson.loads(messages[m][1])["ts"] if (doc["sensor_id"], t) in ref_scores]
        got.update({(doc["sensor_id"], t): score for t, score in zip(doc["ts"], doc["score"])})
    assert seen_messages == set(range(len(messages)))
    assert got.keys() == ref_scores.keys()
    assert max(abs(got[k] - ref_scores[k]) for k in got) < 1e-4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_broker_unreachable_at_start_retries_then_gives_up(model, caplog):
    port = _free_port()
    cfg = ServiceConfig(bootstrap_servers=f"127.0.0.1:{port}", retry_initial_seconds=0.1, retry_max_seconds=0.4,
                        start_timeout_seconds=2.0, metrics_port=0, detector=DETECTOR)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="hiddenstate.serve"):
        rc = asyncio.run(serve(cfg, model, install_signals=False))
    assert rc == 2
    assert time.monotonic() - started < 10
    retries = [r for r in caplog.records if "cannot reach Kafka" in r.getMessage() and "retrying in" in r.getMessage()]
    assert len(retries) >= 3
    # the line may end with the client's folded errors: "retrying in 0.1s (the Kafka client logged ...)"
    delays = [float(re.search(r"retrying in ([0-9.]+)s", r.getMessage()).group(1)) for r in retries]
    assert delays[:3] == [0.1, 0.2, 0.4] and max(delays) == 0.4  # capped exponential backoff
    assert any("giving up" in r.getMessage() for r in caplog.records)


def test_stop_while_waiting_for_the_broker_exits_cleanly(model):
    cfg = ServiceConfig(bootstrap_servers=f"127.0.0.1:{_free_port()}", retry_initial_seconds=5, metrics_port=0,
                        detector=DETECTOR)

    async def scenario():
        service = ScoringService(cfg, model)
        task = asyncio.create_task(service.start())
        await asyncio.sleep(0.5)
        service.request_stop()
        with pytest.raises(Exception) as info:
            await asyncio.wait_for(task, 3)
        return info.value

    exc = asyncio.run(scenario())
    assert type(exc).__name__ == "StopRequested"


def _serve_command(bootstrap: str, topics: dict[str, str], group: str, model_dir: Path) -> list[str]:
    return serve_command(bootstrap, topics, group, model_dir, "--max-batch", "50", "--poll-timeout-ms", "100",
                         "--grace", "15")


async def _sigterm(proc: asyncio.subprocess.Process, log_path: Path) -> tuple[int, float]:
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        rc = await asyncio.wait_for(proc.wait(), 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"serve did not exit within 30s of SIGTERM:\n{log_path.read_text()[-3000:]}") from None
    return rc, time.monotonic() - started


def test_sigterm_mid_stream_and_restart_skips_nothing(kafka_bootstrap, model_dir, tmp_path):
    """`hiddenstate serve` gets SIGTERM while readings still arrive; a new process continues from the commits."""
    messages = fleet(sensors=40, steps=100, seed=1)  # 4000 readings, produced over ~8 s

    stopped = asyncio.Event()

    async def producer(topic: str):
        # Half the stream, then (however slow the machine) the rest only once the first process was told to
        # stop: the stop always falls mid-stream.
        for i in range(0, len(messages), 50):
            if i == len(messages) // 2:
                await stopped.wait()
            await produce(kafka_bootstrap, topic, messages[i:i + 50])
            await asyncio.sleep(0.1)

    async def scenario():
        topics = await new_topics(kafka_bootstrap)
        group = unique_name("g")
        cmd = _serve_command(kafka_bootstrap, topics, group, model_dir)
        feeding = asyncio.create_task(producer(topics["in"]))
        log1, log2 = tmp_path / "serve1.log", tmp_path / "serve2.log"
        first = await start_serve(cmd, log1)
        try:
            mid = await wait_committed(kafka_bootstrap, group, topics["in"], {}, timeout=90,
                                       predicate=lambda c: sum(c.values()) >= 300)
        except TimeoutError:
            first.kill()
            raise AssertionError(log1.read_text()[-3000:]) from None
        assert not feeding.done(), "the stream ended before the stop: not mid-stream"
        stop = asyncio.create_task(_sigterm(first, log1))
        await asyncio.sleep(0.2)
        stopped.set()
        rc1, stop_seconds = await stop
        at_stop = await committed_offsets(kafka_bootstrap, group, topics["in"])
        second = await start_serve(cmd, log2)
        await feeding
        ends = await end_offsets(kafka_bootstrap, topics["in"])
        try:
            final = await wait_committed(kafka_bootstrap, group, topics["in"], ends, timeout=120)
        finally:
            rc2, _ = await _sigterm(second, log2)
        outputs = {k: await read_all(kafka_bootstrap, topics[k]) for k in ("scores", "dlq")}
        return rc1, rc2, stop_seconds, mid, at_stop, ends, final, outputs

    rc1, rc2, stop_seconds, mid, at_stop, ends, final, outputs = asyncio.run(scenario())
    logging.getLogger(__name__).info("SIGTERM to exit: %.2fs; committed at stop %d of %d; %d duplicate outputs",
                                     stop_seconds, sum(at_stop.values()), sum(ends.values()),
                                     len(outputs["scores"]) + len(outputs["dlq"]) - sum(ends.values()))
    log_text = (tmp_path / "serve1.log").read_text()
    assert rc1 == 0, log_text[-3000:]
    assert rc2 == 0, (tmp_path / "serve2.log").read_text()[-3000:]
    assert stop_seconds < 15, f"SIGTERM took {stop_seconds:.1f}s"
    assert "stopped: consumed=" in log_text and "stop requested" in log_text
    assert sum(at_stop.values()) < sum(ends.values())  # the first process stopped mid-stream
    assert final == ends
    # every input offset appears in the outputs (scores or dead letters) at least once
    seen = {(int(header(r, "source_partition")), int(header(r, "source_offset")))
            for r in outputs["scores"] + outputs["dlq"]}
    wanted = {(p, o) for p, end in ends.items() for o in range(end)}
    assert wanted <= seen, f"skipped {len(wanted - seen)} input offsets"
    assert len(outputs["dlq"]) == 0 and len(outputs["scores"]) >= len(messages)


def test_two_instances_split_partitions_and_score_everything(kafka_bootstrap, model):
    """A second instance joins mid-stream: the partitions split, the first drops the moved sensors' state."""
    messages = fleet(sensors=32, steps=80, seed=2)
    half = len(messages) // 2

    async def scenario():
        topics = await new_topics(kafka_bootstrap)
        group = unique_name("g")
        cfg = service_config(kafka_bootstrap, topics, group, max_batch=100)
        placed = await produce(kafka_bootstrap, topics["in"], messages[:half])
        partition_of = {messages[i][0]: placed[i][0] for i in range(half)}
        a, b = ScoringService(cfg, model), ScoringService(cfg, model)
        await a.start()
        run_a = asyncio.create_task(a.run())
        ends = await end_offsets(kafka_bootstrap, topics["in"])
        await wait_committed(kafka_bootstrap, group, topics["in"], ends, timeout=120)
        held_alone = len(a.engine.pool)
        await b.start()
        run_b = asyncio.create_task(b.run())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while not (a.consumer.assignment() and b.consumer.assignment()
                   and len(a.consumer.assignment() | b.consumer.assignment()) == 4):
            assert loop.time() < deadline, "the group did not split the partitions"
            await asyncio.sleep(0.2)
        await produce(kafka_bootstrap, topics["in"], messages[half:])
        ends = await end_offsets(kafka_bootstrap, topics["in"])
        await wait_committed(kafka_bootstrap, group, topics["in"], ends, timeout=120)
        assignment = {"a": {tp.partition for tp in a.consumer.assignment()},
                      "b": {tp.partition for tp in b.consumer.assignment()}}
        everyone = [key.decode() for key in partition_of]
        sensors = {name: {s for s in everyone if svc.engine.pool.slot_of(s) is not None}
                   for name, svc in (("a", a), ("b", b))}
        for service in (a, b):
            service.request_stop()
        await asyncio.gather(run_a, run_b)
        await asyncio.gather(a.close(), b.close())
        scores = await read_all(kafka_bootstrap, topics["scores"])
        return held_alone, assignment, sensors, partition_of, a.stats, b.stats, scores, ends

    held_alone, assignment, sensors, partition_of, stats_a, stats_b, scores, ends = asyncio.run(scenario())
    assert held_alone == 32
    assert assignment["a"] and assignment["b"] and not assignment["a"] & assignment["b"]
    assert stats_a.dropped_sensors > 0 and stats_a.scored > 0 and stats_b.scored > 0
    for name in ("a", "b"):  # each instance holds only the sensors of its own partitions
        assert sensors[name] and all(partition_of[s.encode()] in assignment[name] for s in sensors[name])
    covered = [(int(header(r, "source_partition")), int(header(r, "source_offset"))) for r in scores]
    assert set(covered) == {(p, o) for p, end in ends.items() for o in range(end)}
    # the rebalance waited for the in-flight batch to commit: nothing was scored twice
    assert len(covered) == len(set(covered)) == len(messages)
