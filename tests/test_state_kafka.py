"""Durable sensor state against a real Kafka broker: changelog checkpoints, restore, kill -9 (docs/state.md).

The broker comes from tests/kafka_broker.py; every test uses its own topics and group (and so its
own changelog, `<group>.changelog`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import logging
import signal
import time

import numpy as np
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from consumers import crash
from consumers.checkpoints import MARKER_PREFIX
from consumers.service import ScoringService
from detector.config import DetectorConfig
from detector.engine import Engine
from tests.kafka_broker import (  # noqa: F401 - kafka_bootstrap is a fixture
    committed_offsets,
    create_topics,
    end_offsets,
    header,
    kafka_bootstrap,
    produce,
    read_all,
    read_topic,
    start_serve,
    unique_name,
    wait_committed,
)
from tests.test_serve_kafka import (  # noqa: F401 - model and model_dir are fixtures
    DETECTOR,
    ROOT,
    T0,
    _serve_command,
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


def test_channel_names_survive_a_restart(kafka_bootstrap, model):
    """Each sensor's channel names go to the changelog with its state: after a restart A's records are still
    lists, B's and C's still objects by their own names, and B's other names are B's wrong_channels alone."""
    def reading(sensor: str, t: int, values: object) -> tuple[bytes, bytes]:
        field = "values" if isinstance(values, dict) else "value"
        return sensor.encode(), orjson.dumps({"sensor_id": sensor, "ts": T0 + 10 * t, field: values})

    def steps(first: int, last: int) -> list[tuple[bytes, bytes]]:
        return [m for t in range(first, last) for m in (reading("A", t, 1.0 + 0.1 * t),
                                                         reading("B", t, {"temp": 20.0 + t}),
                                                         reading("C", t, {"flow": 3.0 - 0.1 * t}))]

    async def scenario():
        topics = await new_topics(kafka_bootstrap, partitions=2)
        cfg = service_config(kafka_bootstrap, topics, unique_name("g"), max_batch=10)
        await produce(kafka_bootstrap, topics["in"], steps(0, 10))
        await _run_until_committed(cfg, model, kafka_bootstrap, topics["in"],
                                   await end_offsets(kafka_bootstrap, topics["in"]))
        changelog = await read_all(kafka_bootstrap, cfg.changelog_name)
        await produce(kafka_bootstrap, topics["in"], [reading("B", 10, {"flow": 1.0}), *steps(11, 20)])
        second = await _run_until_committed(cfg, model, kafka_bootstrap, topics["in"],
                                            await end_offsets(kafka_bootstrap, topics["in"]))
        outputs = {k: await read_all(kafka_bootstrap, topics[k]) for k in ("scores", "dlq")}
        return changelog, second, outputs

    changelog, second, outputs = asyncio.run(scenario())
    latest = {r.key: header(r, "channel_names") for r in changelog if not r.key.startswith(MARKER_PREFIX)}
    assert latest == {b"A": None, b"B": '["temp"]', b"C": '["flow"]'}
    assert second.checkpoint_stats.restored == 3 and second.checkpoint_stats.refused == 0
    values: dict[str, list] = collections.defaultdict(list)
    for r in outputs["scores"]:
        doc = orjson.loads(r.value)
        values[doc["sensor_id"]].append(doc["values"])
    assert len(values["A"]) == len(values["B"]) == len(values["C"]) == 19  # steps 0-9 and 11-19
    assert all(isinstance(v, list) for v in values["A"])
    assert all(list(v) == ["temp"] for v in values["B"]) and all(list(v) == ["flow"] for v in values["C"])
    (dead,) = outputs["dlq"]
    assert dead.key == b"B" and header(dead, "reason") == "wrong_channels"
    assert header(dead, "detail") == "keys ['flow'] differ from the channels sensor 'B' was first seen with: ['temp']"


async def run_until_restored(service: ScoringService, timeout: float = 60.0) -> None:
    """Run a started service until it has restored from the changelog once (or `timeout` s), then stop it."""
    task = asyncio.create_task(service.run())
    deadline = time.monotonic() + timeout
    while service.checkpoint_stats.restores == 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    service.request_stop()
    await asyncio.wait_for(task, 30)


def test_crash_point_setting_is_checked():
    """HIDDENSTATE_CRASH_AT (test-only) is `<point>:<n>`; anything else is refused, naming the points."""
    assert crash.parse("") is None
    assert crash.parse("before_commit:3") == ("before_commit", 3)
    for bad in ("scroed:1", "scored", "scored:0", "scored:x", ":2"):
        with pytest.raises(ValueError, match="restoring"):
            crash.parse(bad)


async def _committed_total(bootstrap: str, group: str, topic: str) -> int:
    """The group's committed offsets summed over the partitions (retrying while the coordinator loads)."""
    return sum((await wait_committed(bootstrap, group, topic, {}, predicate=lambda c: True)).values())


# The kills of test_crash_at_every_step_loses_nothing, one process each, in this order: the six crash points of
# consumers/crash.py (the n-th arrival; `restoring:1` is the restore at start of a process whose predecessor
# checkpointed; `two_in_flight:1` the first batch scored while the one before it was still being delivered, which
# the backlog of a stream produced in advance makes happen from the second batch on), then one kill -9 from outside
# at a point of the broker's timing (committed offsets >= the number given, counted from the committed offsets at
# the start of that process).
CRASHES = ["scored:8", "produced:8", "restoring:1", "before_commit:8", "committed:8", "two_in_flight:1",
           "external:300"]


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_crash_at_every_step_loses_nothing(kafka_bootstrap, model, model_dir, tmp_path, guarantee):
    """SIGKILL `hiddenstate serve` at each step of a batch (and once from outside), restarting it each time.

    One stream, eight processes: seven die (CRASHES), the last reads to the end. exactly_once includes two
    kills inside an open transaction (`produced`, `before_commit`), and both guarantees one with two batches in
    flight (`two_in_flight`: one scored, the one before it not yet committed).
    At-least-once: every input offset is scored (or dead-lettered) at least once, every score equals the
    uninterrupted run's within 1e-5, and the alert episodes after de-duplication are exactly the uninterrupted
    run's. Exactly-once, read with read_committed: every input offset scored exactly once, each alert event
    once, no dead letter.
    """
    eos = guarantee == "exactly_once"
    messages = fleet(sensors=30, steps=120, seed=3)  # 3600 readings; the spike of s05 at steps 90-95
    ref_scores, ref_events = reference(model, messages)
    assert any(e.kind.value == "raise" for e in ref_events)

    async def scenario():
        topics = await new_topics(kafka_bootstrap)
        group = unique_name("g")
        cmd = _serve_command(kafka_bootstrap, topics, group, model_dir) + ["--processing-guarantee", guarantee]
        await produce(kafka_bootstrap, topics["in"], messages)
        ends = await end_offsets(kafka_bootstrap, topics["in"])
        killed_at = []
        for i, crash in enumerate(CRASHES):
            log_path = tmp_path / f"serve{i}.log"
            point, n = crash.split(":")
            before = await _committed_total(kafka_bootstrap, group, topics["in"])
            if point == "external":
                proc = await start_serve(cmd, log_path)
                try:
                    await wait_committed(kafka_bootstrap, group, topics["in"], {}, timeout=120,
                                         predicate=lambda c, n=before + int(n): sum(c.values()) >= n)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
                    raise AssertionError(log_path.read_text()[-3000:]) from None
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
            else:
                proc = await start_serve(cmd, log_path, HIDDENSTATE_CRASH_AT=crash)
                try:
                    await asyncio.wait_for(proc.wait(), 120)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
                    raise AssertionError(f"{crash} never reached:\n{log_path.read_text()[-3000:]}") from None
                assert f"crash point {point} reached" in log_path.read_text(), log_path.read_text()[-3000:]
            assert proc.returncode == -signal.SIGKILL, (crash, proc.returncode)
            after = await _committed_total(kafka_bootstrap, group, topics["in"])
            killed_at.append((crash, before, after))
            assert after < sum(ends.values()), f"the stream ended before the kill at {crash}"
        log_path = tmp_path / "serve-last.log"
        proc = await start_serve(cmd, log_path)
        try:
            await wait_committed(kafka_bootstrap, group, topics["in"], ends, timeout=180)
        finally:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 30)
        outputs = {k: await read_topic(kafka_bootstrap, topics[k], committed_only=eos)
                   for k in ("scores", "alerts", "dlq")}
        outputs["all_scores"] = await read_topic(kafka_bootstrap, topics["scores"], committed_only=False)
        return ends, killed_at, outputs

    ends, killed_at, outputs = asyncio.run(scenario())
    if eos:  # the kills inside open transactions left aborted outputs behind, which read_committed hides
        assert len(outputs["all_scores"]) > len(outputs["scores"])
    logs = "".join((tmp_path / f"serve{i}.log").read_text() for i in range(1, len(CRASHES)))
    logs += (tmp_path / "serve-last.log").read_text()
    # every process after the first restored (but the one killed while restoring)
    assert logs.count("restored state of partitions") >= len(CRASHES) - 1, logs[-3000:]
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
    log.info(guarantee + ": killed at (point, committed before, committed after) %s of %d: %d scores for %d readings "
             "(%d duplicates; %d with aborted ones), %d alert events for %d, dead letters %s", killed_at,
             sum(ends.values()), len(scores), len(ref_scores), len(scores) - len(ref_scores),
             len(outputs["all_scores"]), len(episodes), len(ref_events), dict(reasons))


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_rebalance_moves_state_through_the_changelog(kafka_bootstrap, model, guarantee):
    """Mid-stream, B joins A's group (A hands over partitions, B restores them), then A leaves (B restores the rest).

    The readings keep arriving while the partitions move. Every sensor's state goes from A to B through the
    changelog, so the outputs are those of one uninterrupted instance: every reading scored, scores within 1e-5,
    the same alert episodes (s05's spike comes after B joined, at the end: a sensor started fresh would still be
    warming up and miss it); exactly once in the read_committed view with exactly_once.
    """
    eos = guarantee == "exactly_once"
    sensors, steps = 32, 120
    messages = fleet(sensors=sensors, steps=steps, seed=6)
    ref_scores, ref_events = reference(model, messages)
    assert any(e.kind.value == "raise" for e in ref_events)
    part1, part2 = sensors * 30, sensors * 60  # steps 0-29: A alone; 30-39: B joins; 40-59: split; 60-: A leaves

    async def scenario():
        topics = await new_topics(kafka_bootstrap)
        group = unique_name("g")
        cfg = service_config(kafka_bootstrap, topics, group, max_batch=64, processing_guarantee=guarantee)
        # two instances in one process: each needs its own transactional id
        a = ScoringService(cfg.model_copy(update={"transactional_id": unique_name("txn-a")}), model)
        b = ScoringService(cfg.model_copy(update={"transactional_id": unique_name("txn-b")}), model)
        b_joined, split_seen, a_leaving = asyncio.Event(), asyncio.Event(), asyncio.Event()

        async def feed():
            await produce(kafka_bootstrap, topics["in"], messages[:part1])
            await b_joined.wait()
            for i in range(part1, part2, sensors):  # one step of the fleet every 0.1 s
                if i == part1 + 10 * sensors:  # ten steps while B joins, the rest once the partitions are split
                    await split_seen.wait()
                await produce(kafka_bootstrap, topics["in"], messages[i:i + sensors])
                await asyncio.sleep(0.1)
            await a_leaving.wait()
            for i in range(part2, len(messages), sensors):
                await produce(kafka_bootstrap, topics["in"], messages[i:i + sensors])
                await asyncio.sleep(0.1)

        feeding = asyncio.create_task(feed())
        loop = asyncio.get_running_loop()
        await a.start()
        run_a = asyncio.create_task(a.run())
        await wait_committed(kafka_bootstrap, group, topics["in"], {}, timeout=120,
                             predicate=lambda c: sum(c.values()) >= part1)
        await b.start()
        run_b = asyncio.create_task(b.run())
        b_joined.set()
        deadline = loop.time() + 90
        while not (b.checkpoint_stats.restores >= 1 and a.consumer.assignment() and b.consumer.assignment()):
            assert loop.time() < deadline, "the group did not split the partitions"
            await asyncio.sleep(0.1)
        split = {"a": {tp.partition for tp in a.consumer.assignment()},
                 "b": {tp.partition for tp in b.consumer.assignment()}}
        split_seen.set()
        await wait_committed(kafka_bootstrap, group, topics["in"], {}, timeout=120,
                             predicate=lambda c: sum(c.values()) >= part2 - 5 * sensors)
        a_leaving.set()
        a.request_stop()
        await asyncio.wait_for(run_a, 60)
        await a.close()  # leaves the group: B gets every partition
        await feeding
        ends = await end_offsets(kafka_bootstrap, topics["in"])
        await wait_committed(kafka_bootstrap, group, topics["in"], ends, timeout=120)
        b_partitions = {tp.partition for tp in b.consumer.assignment()}
        b.request_stop()
        await asyncio.wait_for(run_b, 60)
        await b.close()
        outputs = {k: await read_topic(kafka_bootstrap, topics[k], committed_only=eos)
                   for k in ("scores", "alerts", "dlq")}
        return split, b_partitions, a, b, ends, outputs

    split, b_partitions, a, b, ends, outputs = asyncio.run(scenario())
    assert split["a"] and split["b"] and not split["a"] & split["b"]
    assert b_partitions == {0, 1, 2, 3}
    # B restored A's sensors twice over: its share when it joined, the rest when A left
    assert b.checkpoint_stats.restores >= 2 and b.checkpoint_stats.restored >= sensors
    assert b.checkpoint_stats.refused == 0 and b.checkpoint_stats.model_changed == 0
    assert a.stats.dropped_sensors > 0 and a.stats.scored > 0 and b.stats.scored > 0
    seen = {(int(header(r, "source_partition")), int(header(r, "source_offset"))) for r in outputs["scores"]}
    assert seen == {(p, o) for p, end in ends.items() for o in range(end)}
    assert outputs["dlq"] == []
    scores = _scores(outputs["scores"])
    assert {(s, ts) for s, ts, _ in scores} == ref_scores.keys()
    worst = max(abs(v - ref_scores[(s, ts)]) for s, ts, v in scores)
    assert worst < 1e-5, worst
    episodes = _episodes(outputs["alerts"])
    assert set(episodes) == _ref_episodes(ref_events)
    if eos:
        assert len(scores) == len(ref_scores) and len(episodes) == len(set(episodes))
    log.info("%s: split A %s / B %s, B restored %d sensors in %d restores; %d scores for %d readings",
             guarantee, sorted(split["a"]), sorted(split["b"]), b.checkpoint_stats.restored,
             b.checkpoint_stats.restores, len(scores), len(ref_scores))


async def _topic_configs(bootstrap: str, topic: str, update: dict[str, str] | None = None) -> dict[str, str]:
    """The topic's configuration; with `update`, first set those keys (keeping the topic's other settings)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        def current(responses) -> dict[str, str]:
            resource = responses[0].resources[0]  # (error_code, error_message, type, name, configs)
            assert resource[0] == 0, resource[1]
            return {entry[0]: entry[1] for entry in resource[4]}

        configs = current(await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)]))
        if update:
            # AlterConfigs replaces the whole set: send the settings made on the topic plus the update
            ours = {k: configs[k] for k in ("cleanup.policy", "min.compaction.lag.ms")}
            await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, {**ours, **update})])
            configs = current(await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)]))
    finally:
        await admin.close()
    return configs


def test_changelog_is_compacted_to_one_record_per_sensor(kafka_bootstrap, model, caplog):
    """The changelog the service creates is compacted: once the broker's log cleaner ran, one record per sensor
    (its latest state) and one marker per partition are left, and a restore reads just those.

    The service writes every sensor's state at each of 60 batches; the test makes the broker roll the topic's
    segments every 200 ms and clean at any dirty ratio, then waits for the cleaner (it wakes every 15 s).
    """
    sensors, steps, partitions = 40, 60, 2
    messages = fleet(sensors=sensors, steps=steps, seed=7)
    ids = [f"s{i:02d}" for i in range(sensors)]

    async def scenario():
        topics = await new_topics(kafka_bootstrap, partitions=partitions)
        group = unique_name("g")
        cfg = service_config(kafka_bootstrap, topics, group, max_batch=sensors)
        changelog = cfg.changelog_name
        async with ScoringService(cfg, model) as service:  # start() creates the changelog
            created = await _topic_configs(kafka_bootstrap, changelog)
            tuned = await _topic_configs(kafka_bootstrap, changelog,
                                         {"segment.ms": "200", "min.cleanable.dirty.ratio": "0.01"})
            task = asyncio.create_task(service.run())
            await produce(kafka_bootstrap, topics["in"], messages)
            ends = await end_offsets(kafka_bootstrap, topics["in"])
            await wait_committed(kafka_bootstrap, group, topics["in"], ends, timeout=120)
            service.request_stop()
            await asyncio.wait_for(task, 30)
        latest = dict(zip(ids, service.engine.export_state(ids)))
        written = service.checkpoint_stats.records
        # the cleaner never touches the active segment: one more record per partition, after segment.ms, rolls it
        await asyncio.sleep(0.5)
        roll = b"\x00roll"
        for p in range(partitions):
            await produce(kafka_bootstrap, changelog, [(roll, None)], partition_of={roll: p})
        deadline = time.monotonic() + 90
        while True:
            records = await read_all(kafka_bootstrap, changelog)
            per_key = collections.Counter((r.partition, r.key) for r in records)
            if max(per_key.values()) == 1 or time.monotonic() > deadline:
                break
            await asyncio.sleep(1.0)
        caplog.set_level(logging.INFO, logger="hiddenstate.serve")
        async with ScoringService(cfg, model) as restorer:  # a restart: restores from the compacted changelog
            await run_until_restored(restorer)
        restored = restorer.engine.export_state(ids) if restorer.engine is not None else None
        return created, tuned, written, latest, ends, records, per_key, restorer, restored

    created, tuned, written, latest, ends, records, per_key, restorer, restored = asyncio.run(scenario())
    assert created["cleanup.policy"] == "compact"
    assert tuned["cleanup.policy"] == "compact" and tuned["segment.ms"] == "200"
    assert written >= sensors * steps // 2  # every sensor written at many checkpoints
    assert max(per_key.values()) == 1, f"not compacted within 90 s: {per_key.most_common(3)}"
    states = {r.key.decode(): r.value for r in records if not r.key.startswith((MARKER_PREFIX, b"\x00roll"))}
    assert states == latest  # one record per sensor: its latest state
    markers = {r.partition: int(r.value) for r in records if r.key.startswith(MARKER_PREFIX)}
    assert markers == ends  # one marker per partition: the end of the input
    assert len(records) == sensors + 2 * partitions
    assert restorer.checkpoint_stats.restored == sensors and restored == [latest[s] for s in ids]
    lines = [r.getMessage() for r in caplog.records if "restored state of partitions" in r.getMessage()]
    assert lines and f"{len(records)} record(s) read" in lines[-1], lines
    log.info("changelog: %d state records written, %d records left after compaction", written, len(records))


async def _topics(bootstrap: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return await admin.list_topics()
    finally:
        await admin.close()


def test_existing_changelog_that_is_not_compacted_is_warned(kafka_bootstrap, model, caplog):
    """A changelog topic made beforehand without compaction is used, with a warning that says how to fix it."""
    async def scenario():
        topics = await new_topics(kafka_bootstrap, partitions=2)
        cfg = service_config(kafka_bootstrap, topics, unique_name("g"))
        await create_topics(kafka_bootstrap, {cfg.changelog_name: 2})  # the broker's default: cleanup.policy=delete
        while cfg.changelog_name not in await _topics(kafka_bootstrap):  # a topic the service finds, not makes
            await asyncio.sleep(0.1)
        with caplog.at_level(logging.WARNING, logger="hiddenstate.serve"):
            async with ScoringService(cfg, model) as service:
                partitions = service.checkpoints.partitions
        return cfg, partitions

    cfg, partitions = asyncio.run(scenario())
    assert partitions == 2
    warnings = [r.getMessage() for r in caplog.records if "not compact" in r.getMessage()]
    assert len(warnings) == 1 and cfg.changelog_name in warnings[0] and "cleanup.policy=compact" in warnings[0]


def _states(model, sensors: int, steps: int, seed: int) -> tuple[list[str], list[bytes], Engine]:
    rng = np.random.default_rng(seed)
    engine = Engine.for_model(model, DETECTOR, 1)
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
            await run_until_restored(service)
        return service

    stats = asyncio.run(scenario()).checkpoint_stats
    assert stats.refused == 5
    assert stats.model_changed == 50


def test_records_refused_after_the_engine_starts_are_reported(kafka_bootstrap, model, caplog):
    """Channels unknown at the restore: the states wait for the first reading; unreadable ones are then warned about.

    (A layout change between two versions of the code makes every old record unreadable: the log must say so.)
    """
    async def scenario():
        topics = await new_topics(kafka_bootstrap, partitions=1)
        group = unique_name("g")
        cfg = service_config(kafka_bootstrap, topics, group).model_copy(update={"detector": DetectorConfig()})
        assert cfg.detector.channels is None  # learnt from the first reading
        await create_topics(kafka_bootstrap, {cfg.changelog_name: 1})
        await produce(kafka_bootstrap, cfg.changelog_name, [(f"s{i:02d}".encode(), b"\x00garbage") for i in range(3)])
        await produce(kafka_bootstrap, topics["in"], fleet(sensors=3, steps=1))
        with caplog.at_level(logging.WARNING, logger="hiddenstate.serve"):
            service = await _run_until_committed(cfg, model, kafka_bootstrap, topics["in"],
                                                 await end_offsets(kafka_bootstrap, topics["in"]))
        return service

    stats = asyncio.run(scenario()).checkpoint_stats
    assert stats.refused == 3 and stats.restored == 0
    assert any("3 changelog record(s) refused" in r.getMessage() for r in caplog.records)


def test_exactly_once_zombie_is_fenced(kafka_bootstrap, model):  # noqa: F811 - fixtures
    """A second instance with the same transactional id fences the first: its next transaction fails, it stops.

    The fence is handled where it happens: no future is left with its ProducerFenced unretrieved, which asyncio
    would print with a long traceback when it is collected (issue 17: a passing run's output carried them).
    """
    messages = fleet(sensors=8, steps=40, seed=5)
    unretrieved: list[dict] = []

    async def scenario():
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: unretrieved.append(context))
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
    task.exception()  # the test's own: retrieved above
    del task, zombie
    gc.collect()  # a future's unretrieved exception is reported when the future is collected
    assert not [c.get("message") for c in unretrieved], unretrieved
