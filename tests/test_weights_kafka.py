"""One weights version per consumer group (`learning = "online"` in serve), through a real broker.

Two instances learn as one group: one learns and writes versions to the weights topic, both score with
the versions they read back; a restart resumes the newest version; a record that does not fit is refused.
"""

from __future__ import annotations

import asyncio
import urllib.request

import numpy as np
import orjson
import torch
from aiokafka import AIOKafkaConsumer, TopicPartition

from consumers.config import ServiceConfig
from consumers.service import ScoringService
from detector import DetectorConfig
from detector.cli import main as hiddenstate
from detector.model.store import load_model
from detector.model.versions import WeightsVersion
from tests.kafka_broker import (  # noqa: F401 - kafka_bootstrap is a fixture
    create_topics, end_offsets, header, kafka_bootstrap, produce, read_all, unique_name, wait_committed,
)

T0 = 1_700_000_000.0
LEARNING = DetectorConfig(channels=1, learning="online", learning_sensors=16, learning_every=4, learning_rate=3e-3)


def readings(sensors: int, steps: range, seed: int = 0) -> list[tuple[bytes, bytes]]:
    rng = np.random.default_rng(seed)
    phases = rng.uniform(0, 6.28, sensors)
    return [(f"s{s:02d}".encode(), orjson.dumps({"sensor_id": f"s{s:02d}", "ts": T0 + 10 * t,
                                                  "value": float(10 + 2 * np.sin(t / 8 + phases[s])
                                                                 + 0.1 * rng.standard_normal())}))
            for t in steps for s in range(sensors)]


def config(bootstrap: str, topics: dict[str, str], group: str) -> ServiceConfig:
    return ServiceConfig(bootstrap_servers=bootstrap, input_topics=[topics["in"]], scores_topic=topics["scores"],
                         alerts_topic=topics["alerts"], dead_letter_topic=topics["dlq"], group_id=group,
                         poll_timeout_ms=100, grace_seconds=20, max_batch=64, metrics_address="127.0.0.1",
                         metrics_port=0, detector=LEARNING)


async def newest_on_topic(bootstrap: str, topic: str) -> WeightsVersion | None:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                                max_partition_fetch_bytes=16 * 1_048_576)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        end = (await consumer.end_offsets([tp]))[tp]
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        newest = None
        while await consumer.position(tp) < end:
            for record in (await consumer.getmany(tp, timeout_ms=500)).get(tp, []):
                newest = record.value
        return WeightsVersion.from_bytes(newest) if newest is not None else None
    finally:
        await consumer.stop()


async def until(condition, what: str, timeout: float = 60.0, tick=None) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await condition():
        assert loop.time() < deadline, what
        if tick is not None:
            await tick()
        await asyncio.sleep(0.3)


def scrape(service: ScoringService) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{service.http_port}/metrics", timeout=10) as response:
        return response.read().decode()


def metric(text: str, name: str) -> float:
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def test_a_group_scores_with_one_learnt_version_and_a_restart_resumes_it(kafka_bootstrap):
    async def scenario():
        topics = {k: unique_name(f"t-{k}") for k in ("in", "scores", "alerts", "dlq")}
        await create_topics(kafka_bootstrap, {topics["in"]: 2, topics["scores"]: 1, topics["alerts"]: 1,
                                              topics["dlq"]: 1})
        cfg = config(kafka_bootstrap, topics, unique_name("g"))
        # each its own model object: an instance adopts versions into its own network
        a, b = ScoringService(cfg, load_model("gru-default")), ScoringService(cfg, load_model("gru-default"))
        await a.start()
        await b.start()
        runs = [asyncio.create_task(s.run()) for s in (a, b)]

        async def split():
            return bool(a.consumer.assignment()) and bool(b.consumer.assignment())
        await until(split, "the group did not split the two partitions")
        learner, follower = (a, b) if a.weights.learns else (b, a)
        assert learner.weights.learns and not follower.weights.learns

        main = readings(16, range(300))
        await produce(kafka_bootstrap, topics["in"], main)
        await wait_committed(kafka_bootstrap, cfg.group_id, topics["in"],
                             await end_offsets(kafka_bootstrap, topics["in"]), timeout=180)
        learner.weights.learns = False  # no new versions from here: the group settles on the newest one
        clock = [300]

        def more(steps: int) -> list[tuple[bytes, bytes]]:  # the next readings of every sensor, in time order
            clock[0] += steps
            return readings(16, range(clock[0] - steps, clock[0]))

        async def trickle():  # batches are the boundaries where versions are published and adopted
            await produce(kafka_bootstrap, topics["in"], more(1))

        async def settled():
            newest = await newest_on_topic(kafka_bootstrap, cfg.weights_name)
            return newest is not None and a.engine.weights_version == b.engine.weights_version == newest.version \
                and not learner.weights._sends and learner.engine.learner.published is None
        await until(settled, "the two instances did not settle on the topic's newest version", tick=trickle)
        newest = await newest_on_topic(kafka_bootstrap, cfg.weights_name)
        mark = await end_offsets(kafka_bootstrap, topics["scores"])
        await produce(kafka_bootstrap, topics["in"], more(2))
        await wait_committed(kafka_bootstrap, cfg.group_id, topics["in"],
                             await end_offsets(kafka_bootstrap, topics["in"]), timeout=60)
        texts = [scrape(s) for s in (learner, follower)]
        for s in (a, b):
            s.request_stop()
        await asyncio.gather(*runs)
        await asyncio.gather(a.close(), b.close())

        # a restart (a new instance, alone in the group) resumes the newest version; a record that does not fit
        # the model (another channel count) is refused and the version kept
        c = ScoringService(cfg, load_model("gru-default"))
        await c.start()
        run_c = asyncio.create_task(c.run())
        foreign = WeightsVersion.of(load_model("gru-default").network, newest.version + 5, newest.base, 3, "other")
        await produce(kafka_bootstrap, cfg.weights_name, [(cfg.group_id.encode(), foreign.to_bytes())])
        restart_mark = await end_offsets(kafka_bootstrap, topics["scores"])
        await produce(kafka_bootstrap, topics["in"], more(2))
        await wait_committed(kafka_bootstrap, cfg.group_id, topics["in"],
                             await end_offsets(kafka_bootstrap, topics["in"]), timeout=60)

        async def refused():
            return c.weights.stats.refused >= 1
        await until(refused, "the foreign record was not refused", timeout=30, tick=trickle)
        version_c = c.engine.weights_version
        c.request_stop()
        await run_c
        await c.close()
        scores = await read_all(kafka_bootstrap, topics["scores"])
        return learner, follower, newest, mark, restart_mark, scores, texts, version_c

    learner, follower, newest, mark, restart_mark, scores, texts, version_c = asyncio.run(scenario())
    assert newest.version >= 2 and learner.weights.stats.published >= 2
    assert follower.weights.stats.published == 0 and follower.weights.stats.adopted >= 1
    # every record names its version; the follower scored with versions it read from the topic while the stream ran
    versions = [orjson.loads(r.value)["weights_version"] for r in scores]
    assert all(isinstance(v, int) for v in versions) and max(versions) == newest.version
    during = [orjson.loads(r.value)["weights_version"] for r in scores[:mark[0]]
              if int(header(r, "source_partition")) == 1]
    assert max(during) > 0, "the follower never scored with a learnt version"
    # after the group settled, both instances' records carry the same (newest) version
    tail = [orjson.loads(r.value)["weights_version"] for r in scores[mark[0]:restart_mark[0]]]
    assert tail and set(tail) == {newest.version}
    # the restarted instance scored with the newest learnt version, not the shipped weights, and kept it
    after = [orjson.loads(r.value)["weights_version"] for r in scores[restart_mark[0]:]]
    assert after and after[0] == newest.version and all(v >= newest.version for v in after)
    assert version_c >= newest.version and version_c != newest.version + 5
    learner_text, follower_text = texts
    assert metric(learner_text, "hiddenstate_learner_active") == 0.0  # its role was taken away above
    assert metric(follower_text, "hiddenstate_weights_version") == newest.version
    assert metric(learner_text, "hiddenstate_weights_versions_published_total") >= 2
    assert metric(follower_text, "hiddenstate_weights_age_seconds") >= 0


async def fit_first_group(bootstrap: str) -> tuple[dict[str, str], ServiceConfig]:
    """Fresh one-partition topics and a group whose detector fits on its first 2,000 readings."""
    topics = {k: unique_name(f"t-{k}") for k in ("in", "scores", "alerts", "dlq")}
    await create_topics(bootstrap, {topics["in"]: 1, topics["scores"]: 1, topics["alerts"]: 1, topics["dlq"]: 1})
    cfg = config(bootstrap, topics, unique_name("g"))
    return topics, cfg.model_copy(update={"detector": DetectorConfig(channels=1, fit_first=2000)})


def test_fit_first_in_serve_fits_once_for_the_group_and_a_restart_does_not_fit_again(kafka_bootstrap):
    async def scenario():
        topics, cfg = await fit_first_group(kafka_bootstrap)
        clock = [0]

        def more(steps: int) -> list[tuple[bytes, bytes]]:
            clock[0] += steps
            return readings(16, range(clock[0] - steps, clock[0]))

        seen = {}
        for run in ("first", "restart"):
            service = ScoringService(cfg, load_model("gru-default"))
            await service.start()
            task = asyncio.create_task(service.run())
            await produce(kafka_bootstrap, topics["in"], more(200 if run == "first" else 2))

            async def adopted(s=service):
                return s.engine is not None and s.engine.weights_version == 1

            async def tick():
                await produce(kafka_bootstrap, topics["in"], more(1))
            await until(adopted, f"{run}: the fit was not adopted", tick=tick)
            seen[run] = (service.engine.fitter, service.weights.stats.published)
            service.request_stop()
            await task
            await service.close()
        newest = await newest_on_topic(kafka_bootstrap, cfg.weights_name)
        records = (await end_offsets(kafka_bootstrap, cfg.weights_name))[0]
        return seen, newest, records

    seen, newest, records = asyncio.run(scenario())
    assert newest.version == 1 and newest.writer.startswith("fit-") and records == 1  # one fit, written once
    assert seen["first"] == (None, 1)
    assert seen["restart"] == (None, 0)  # the restarted instance took the group's fit, and fitted nothing


def test_the_weights_command_lists_rolls_back_and_exports_a_groups_versions(kafka_bootstrap, tmp_path, capsys):
    async def scenario():
        topics, cfg = await fit_first_group(kafka_bootstrap)
        flags = ["--bootstrap", kafka_bootstrap, "--group", cfg.group_id]
        clock = [0]

        async def tick():
            clock[0] += 1
            await produce(kafka_bootstrap, topics["in"], readings(16, range(clock[0] - 1, clock[0])))

        service = ScoringService(cfg, load_model("gru-default"))
        await service.start()
        task = asyncio.create_task(service.run())
        clock[0] = 200
        await produce(kafka_bootstrap, topics["in"], readings(16, range(200)))

        async def at(version: int):
            return service.engine is not None and service.engine.weights_version == version
        await until(lambda: at(1), "the fit was not adopted", tick=tick)
        fitted = {k: v.clone() for k, v in service.engine.network.state_dict().items()}
        codes = {"list": await asyncio.to_thread(hiddenstate, ["weights", "list", *flags])}
        listed = capsys.readouterr().out
        codes["reset"] = await asyncio.to_thread(hiddenstate, ["weights", "reset", *flags])
        await until(lambda: at(2), "the group did not adopt the reset version", tick=tick)
        after_reset = {k: v.clone() for k, v in service.engine.network.state_dict().items()}
        codes["export"] = await asyncio.to_thread(
            hiddenstate, ["weights", "export", "--version", "1", "--out", str(tmp_path / "v1"), *flags])
        service.request_stop()
        await task
        await service.close()
        codes["missing"] = await asyncio.to_thread(
            hiddenstate, ["weights", "list", "--bootstrap", kafka_bootstrap, "--group", unique_name("none")])
        return codes, listed, fitted, after_reset

    codes, listed, fitted, after_reset = asyncio.run(scenario())
    out = capsys.readouterr()
    assert codes == {"list": 0, "reset": 0, "export": 0, "missing": 2}
    assert "version      1" in listed and "by fit-" in listed and "fits: yes" in listed
    # roll-back: the running instance went back to the loaded model's weights, as a new version
    shipped = load_model("gru-default").network.state_dict()
    assert all(torch.equal(after_reset[k], shipped[k]) for k in shipped)
    assert any(not torch.equal(fitted[k], shipped[k]) for k in shipped)
    # export: version 1 as a model directory that loads and holds the fitted weights
    exported = load_model(tmp_path / "v1")
    assert exported.meta["learnt_online"]["version"] == 1 and exported.name == "gru-default-v1"
    assert all(torch.equal(exported.network.state_dict()[k], fitted[k]) for k in fitted)
    assert "no weights topic" in out.err
