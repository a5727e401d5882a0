"""Durable sensor state against a real Kafka broker: changelog checkpoints, restore, kill -9 (docs/state.md).

The broker comes from tests/kafka_broker.py; every test uses its own topics and group (and so its
own changelog, `<group>.changelog`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import signal
import time

import numpy as np
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from consumers.checkpoints import MARKER_PREFIX
from consumers.service import ScoringService
from detector.engine import Engine
from tests.kafka_broker import (  # noqa: F401 - kafka_bootstrap is a fixture
    committed_offsets,
    create_topics,
    end_offsets,
    header,
    kafka_bootstrap,
    produce,
    read_all,
    unique_name,
    wait_committed,
)
from tests.test_serve_kafka import (  # noqa: F401 - model and model_dir are fixtures
    DETECTOR,
    _serve_command,
    _start,
    fleet,
    model,
    model_dir,
    new_topics,
    reference,
    service_config,
)

log = logging.getLogger(__name__)


def _scores(records) -> list[tuple[str, float, float]]:
    out = []
    for r in records:
        doc = orjson.loads(r.value)
        out.append((doc["sensor_id"], doc["ts"], doc["score"]))
    return out


def _episodes(records) -> list[tuple[str, str]]:
    return [(doc["kind"], doc["alert_id"]) for doc in (orjson.loads(r.value) for r in records)]


def _ref_episodes(events) -> set[tuple[str, str]]:
    return {(e.kind.value, e.alert_id) for e in events}


async def _run_until_committed(cfg, model, bootstrap, topic, target, timeout=120) -> ScoringService:
    async with ScoringService(cfg, model) as service:
        task = asyncio.create_task(service.run())
        try:
            await wait_committed(bootstrap, cfg.group_id, topic, target, timeout=timeout)
        finally:
            service.request_stop()
            await asyncio.wait_for(task, 30)
    return service


def test_graceful_restart_resumes_state(kafka_bootstrap, model):
    """Half the stream, stop, a new service, the rest: the scores and alerts of one uninterrupted run."""
    messages = fleet()  # 24 sensors x 120 steps; s05 spikes at steps 90-95 (in the second half)
    half = len(messages) // 2
    ref_scores, ref_events = reference(model, messages)
    assert any(e.kind.value == "raise" for e in ref_events)

    async def scenario():
        topics = await new_topics(kafka_bootstrap)
        group = unique_name("g")
        cfg = service_config(kafka_bootstrap, topics, group, max_batch=100)
        await produce(kafka_bootstrap, topics["in"], messages[:half])
        first = await _run_until_committed(cfg, model, kafka_bootstrap, topics["in"],
                                           await end_offsets(kafka_bootstrap, topics["in"]))
        await produce(kafka_bootstrap, topics["in"], messages[half:])
        second = await _run_until_committed(cfg, model, kafka_bootstrap, topics["in"],
                                            await end_offsets(kafka_bootstrap, topics["in"]))
        outputs = {k: await read_all(kafka_bootstrap, topics[k]) for k in ("scores", "alerts", "dlq")}
        changelog = await read_all(kafka_bootstrap, cfg.changelog_name)
        return first, second, outputs, changelog

    first, second, outputs, changelog = asyncio.run(scenario())
    assert first.checkpoint_stats.checkpoints > 0 and first.checkpoint_stats.records > 0
    assert second.checkpoint_stats.restored == 24 and second.checkpoint_stats.refused == 0
    assert second.checkpoint_stats.model_changed == 0
    assert outputs["dlq"] == []
    scores = _scores(outputs["scores"])
    assert len(scores) == len(messages)  # a graceful stop: no duplicates
    got = {(s, ts): v for s, ts, v in scores}
    assert got.keys() == ref_scores.keys()
    worst = max(abs(got[k] - ref_scores[k]) for k in got)
    assert worst < 1e-5, worst
    assert sorted(_episodes(outputs["alerts"])) == sorted(_ref_episodes(ref_events))
    # the changelog: records keyed by sensor id (plus one position marker key per input topic), in the
    # partition the sensor's readings come from
    sensors = {r.key.decode() for r in changelog if not r.key.startswith(MARKER_PREFIX)}
    assert sensors == {f"s{i:02d}" for i in range(24)}
    in_partition = {r.key: r.partition for r in outputs["scores"]}
    assert all(in_partition[r.key] is not None for r in changelog if not r.key.startswith(MARKER_PREFIX))
    markers = [r for r in changelog if r.key.startswith(MARKER_PREFIX)]
    assert markers and all(header(r, "kind") == "offset" for r in markers)


async def read_topic(bootstrap: str, topic: str, committed_only: bool, timeout: float = 60.0) -> list:
    """Every record of `topic` up to its end (the last stable offset with read_committed)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                isolation_level="read_committed" if committed_only else "read_uncommitted")
    await consumer.start()
    out: list = []
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        ends = await consumer.end_offsets(tps)
        todo = {tp: e for tp, e in ends.items() if e > 0}
        if not todo:
            return out
        consumer.assign(list(todo))
        await consumer.seek_to_beginning(*todo)
        deadline = time.monotonic() + timeout
        while True:
            positions = {tp: await consumer.position(tp) for tp in todo}
            if all(positions[tp] >= e for tp, e in todo.items()):
                return out
            if time.monotonic() > deadline:
                raise TimeoutError(f"read_topic({topic}): {positions} of {todo}")
            batch = await consumer.getmany(timeout_ms=300)
            for tp, records in batch.items():
                out.extend(r for r in records if r.offset < todo[tp])
    finally:
        await consumer.stop()


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_kill_9_mid_stream_loses_no_alert(kafka_bootstrap, model, model_dir, tmp_path, guarantee):
    """SIGKILL `hiddenstate serve` at 3 points of the stream, restarting it each time.

    At-least-once: every input offset is scored (or dead-lettered) at least once, every score equals the
    uninterrupted run's, and the alert episodes after de-duplication are exactly the uninterrupted run's.
    Exactly-once, read with read_committed: every input offset scored exactly once, no duplicate alert.
    """
    eos = guarantee == "exactly_once"
    messages = fleet(sensors=30, steps=120, seed=3)  # 3600 readings; the spike of s05 at steps 90-95
    ref_scores, ref_events = reference(model, messages)
    assert any(e.kind.value == "raise" for e in ref_events)
    kill_after = [600, 1700, 2800]  # committed offsets (all partitions) after which the process is killed

    async def scenario():
        topics = await new_topics(kafka_bootstrap)
        group = unique_name("g")
        cmd = _serve_command(kafka_bootstrap, topics, group, model_dir) + ["--processing-guarantee", guarantee]
        await produce(kafka_bootstrap, topics["in"], messages)
        ends = await end_offsets(kafka_bootstrap, topics["in"])
        killed_at = []
        for i, n in enumerate(kill_after):
            log_path = tmp_path / f"serve{i}.log"
            proc = await _start(cmd, log_path)
            try:
                committed = await wait_committed(kafka_bootstrap, group, topics["in"], {}, timeout=120,
                                                 predicate=lambda c, n=n: sum(c.values()) >= n)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                raise AssertionError(log_path.read_text()[-3000:]) from None
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            killed_at.append(sum((await committed_offsets(kafka_bootstrap, group, topics["in"])).values()))
            assert sum(committed.values()) < sum(ends.values()), "the stream ended before the kill"
        log_path = tmp_path / "serve-last.log"
        proc = await _start(cmd, log_path)
        try:
            await wait_committed(kafka_bootstrap, group, topics["in"], ends, timeout=180)
        finally:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 30)
        outputs = {k: await read_topic(kafka_bootstrap, topics[k], committed_only=eos)
                   for k in ("scores", "alerts", "dlq")}
        return ends, killed_at, outputs

    ends, killed_at, outputs = asyncio.run(scenario())
    logs = "".join((tmp_path / f"serve{i}.log").read_text() for i in (1, 2)) + (tmp_path / "serve-last.log").read_text()
    assert logs.count("restored state of partitions") >= 3, logs[-3000:]
    seen = {(int(header(r, "source_partition")), int(header(r, "source_offset")))
            for r in outputs["scores"] + outputs["dlq"]}
    wanted = {(p, o) for p, end in ends.items() for o in range(end)}
    assert wanted <= seen, f"{len(wanted - seen)} input offsets never scored"
    scores = _scores(outputs["scores"])
    got = {(s, ts) for s, ts, _ in scores}
    assert got == ref_scores.keys()  # every reading scored (duplicates of a re-consumed tail aside)
    worst = max(abs(v - ref_scores[(s, ts)]) for s, ts, v in scores)
    assert worst < 1e-5, worst
    episodes = _episodes(outputs["alerts"])
    assert set(episodes) == _ref_episodes(ref_events)
    if eos:  # the read_committed view: each reading scored once, each alert event once, no dead letter
        assert len(scores) == len(ref_scores) and outputs["dlq"] == []
        assert len(episodes) == len(set(episodes))
    reasons = collections.Counter(header(r, "reason") for r in outputs["dlq"])
    log.info(guarantee + ": kill -9 after %s committed of %d: %d scores for %d readings (%d duplicates), dead letters %s",
             killed_at, sum(ends.values()), len(scores), len(ref_scores), len(scores) - len(ref_scores),
             dict(reasons))


def _states(model, sensors: int, steps: int, seed: int) -> tuple[list[str], list[bytes], Engine]:
    rng = np.random.default_rng(seed)
    engine = Engine(model.network, DETECTOR, 1, model.meta.get("sha256", ""))
    ids = [f"dev-{i:06d}" for i in range(sensors)]
    for t in range(steps):
        engine.step(ids, np.full(sensors, 1_700_000_000.0 + 10 * t), 10 + rng.standard_normal((sensors, 1)))
    return ids, engine.export_state(ids), engine


def test_restore_many_sensors(kafka_bootstrap, model, capsys):
    """20k sensor states written to the changelog (twice: the later record wins) are restored on assignment."""
    n = 20_000
    ids, old, _ = _states(model, n, 3, seed=1)
    _, new, engine = _states(model, n, 6, seed=2)
    partitions = 4

    async def scenario():
        topics = await new_topics(kafka_bootstrap, partitions=partitions)
        group = unique_name("g")
        cfg = service_config(kafka_bootstrap, topics, group)
        await create_topics(kafka_bootstrap, {cfg.changelog_name: partitions})
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=20)
        await producer.start()
        try:
            futures = []
            for records in (old, new):
                for i, (sid, rec) in enumerate(zip(ids, records)):
                    futures.append(await producer.send(cfg.changelog_name, rec, key=sid.encode(),
                                                       partition=i % partitions))
            await asyncio.gather(*futures)
        finally:
            await producer.stop()
        nbytes = sum(len(r) for r in new)
        not_ready = []
        async with ScoringService(cfg, model) as service:
            task = asyncio.create_task(service.run())

            async def watch():
                while True:
                    ok, checks = service.readiness()
                    if "state" in checks:
                        not_ready.append(ok)
                    await asyncio.sleep(0.002)

            watcher = asyncio.create_task(watch())
            deadline = time.monotonic() + 120
            while service.checkpoint_stats.restores == 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            watcher.cancel()
            service.request_stop()
            await asyncio.wait_for(task, 30)
        return service, nbytes, not_ready

    service, nbytes, not_ready = asyncio.run(scenario())
    stats = service.checkpoint_stats
    assert stats.restores >= 1
    assert stats.restored == n and stats.refused == 0 and stats.model_changed == 0
    assert service.engine.export_state(ids) == new  # the latest record per key won
    assert not_ready and not any(not_ready)  # /readyz said "restoring" while it restored
    seconds = service.checkpoint_metrics.restore_duration._sum
    with capsys.disabled():
        print(f"\nrestore of {n} sensors ({nbytes / 2**20:.1f} MiB of latest records, {2 * n} records read): "
              f"{seconds:.2f}s ({seconds / n * 1e5:.1f}s per 100k sensors)")


def test_model_change_keeps_statistics(kafka_bootstrap, model):
    """Records written under other weights restore with `model_changed`, never a crash; garbage is refused."""
    ids, records, _e = _states(model, 50, 3, seed=4)
    bad_records = [b"\x00garbage"] * 5

    async def scenario():
        topics = await new_topics(kafka_bootstrap, partitions=2)
        group = unique_name("g")
        cfg = service_config(kafka_bootstrap, topics, group)
        await create_topics(kafka_bootstrap, {cfg.changelog_name: 2})
        engine = Engine(model.network, DETECTOR, 1, "0" * 64)  # the "previous model"
        engine.import_state(ids, records)
        changed = engine.export_state(ids)
        msgs = [(s.encode(), r) for s, r in zip(ids, changed)] + [(f"bad{i}".encode(), r)
                                                                 for i, r in enumerate(bad_records)]
        await produce(kafka_bootstrap, cfg.changelog_name, msgs, partition_of={k: 0 for k, _ in msgs})
        async with ScoringService(cfg, model) as service:
            task = asyncio.create_task(service.run())
            deadline = time.monotonic() + 60
            while service.checkpoint_stats.restores == 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            service.request_stop()
            await asyncio.wait_for(task, 30)
        return service

    stats = asyncio.run(scenario()).checkpoint_stats
    assert stats.refused == 5
    assert stats.model_changed == 50


def test_exactly_once_zombie_is_fenced(kafka_bootstrap, model):
    """A second instance with the same transactional id fences the first: its next transaction fails, it stops."""
    messages = fleet(sensors=8, steps=40, seed=5)

    async def scenario():
        topics = await new_topics(kafka_bootstrap, partitions=2)
        group = unique_name("g")
        cfg = service_config(kafka_bootstrap, topics, group, max_batch=20, processing_guarantee="exactly_once",
                             transactional_id=unique_name("txn"))
        await produce(kafka_bootstrap, topics["in"], messages[:80])
        zombie = ScoringService(cfg, model)
        await zombie.start()
        task = asyncio.create_task(zombie.run())
        await wait_committed(kafka_bootstrap, group, topics["in"], await end_offsets(kafka_bootstrap, topics["in"]))
        # the new instance (another group here, so that the zombie keeps its partitions) takes the id over
        other = ScoringService(cfg.model_copy(update={"group_id": unique_name("g2")}), model)
        await other.start()
        try:
            await produce(kafka_bootstrap, topics["in"], messages[80:])
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 60)
            return task, zombie
        finally:
            await zombie.close()
            await other.close()

    task, zombie = asyncio.run(scenario())
    assert task.done() and task.exception() is not None, "the zombie was not fenced"
    assert type(task.exception()).__name__ == "ProducerFenced"
    assert zombie.stopping
