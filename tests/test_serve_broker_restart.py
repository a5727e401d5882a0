"""`hiddenstate serve` while its broker is stopped and started again mid-stream.

The test starts a broker of its own with scripts/kafka.sh, on free ports and a data directory
under tmp_path (not the shared session broker: it stops it), stops it *without* `--clean` while
the service is working through a stream, waits, starts it again on the same data, and produces
more. At-least-once must hold across the outage: every input offset is scored at least once,
the committed offsets reach the end, the service never restarts itself, /healthz stays healthy
while it waits for the broker (a liveness probe would otherwise restart it for nothing), and its log
says that the broker went away and came back. The outage is longer than aiokafka's request timeout
(40 s), so an in-flight output batch can expire: the idempotent producer must then be replaced, or
every later batch is refused with OutOfOrderSequenceNumber.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from consumers.service import ScoringService
from tests.kafka_broker import SCRIPT, end_offsets, header, read_all, wait_committed
from tests.test_serve_kafka import fleet, model, new_topics, service_config, unique_name  # noqa: F401 - a fixture


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """One scripts/kafka.sh broker on its own ports and data directory; start/stop keep the data."""

    def __init__(self, data_dir: Path) -> None:
        self.env = {**os.environ, "KAFKA_PORT": str(_free_port()), "KAFKA_CONTROLLER_PORT": str(_free_port()),
                    "KAFKA_DATA_DIR": str(data_dir), "KAFKA_STOP_TIMEOUT": "20"}
        self.bootstrap = f"127.0.0.1:{self.env['KAFKA_PORT']}"

    def _script(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(SCRIPT), *args], env=self.env, capture_output=True, text=True, timeout=900)

    def start(self) -> None:
        proc = self._script("start")
        if proc.returncode != 0:
            raise RuntimeError(f"scripts/kafka.sh start failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")

    async def stop(self, clean: bool = False) -> None:
        await asyncio.to_thread(self._script, "stop", *(["--clean"] if clean else []))

    async def restart(self) -> None:
        await asyncio.to_thread(self.start)


@pytest.fixture
def broker(tmp_path) -> Iterator[Broker]:
    broker = Broker(tmp_path / "kafka-data")
    try:
        broker.start()
    except RuntimeError as exc:
        if os.environ.get("HIDDENSTATE_REQUIRE_KAFKA") == "1":
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    try:
        yield broker
    finally:
        asyncio.run(broker.stop(clean=True))


OUTAGE_SECONDS = 45


def test_broker_stopped_and_started_mid_stream(broker, model, caplog):
    messages = fleet(sensors=20, steps=250, seed=4)  # 5000 readings
    first, second = messages[:4000], messages[4000:]

    async def produce(topic: str, batch: list) -> None:
        from tests.kafka_broker import produce as send

        for i in range(0, len(batch), 200):
            await send(broker.bootstrap, topic, batch[i:i + 200])

    async def scenario():
        topics = await new_topics(broker.bootstrap)
        group = unique_name("g")
        cfg = service_config(broker.bootstrap, topics, group, max_batch=10, broker_probe_seconds=0.5,
                             broker_stale_seconds=5, retry_initial_seconds=0.2, retry_max_seconds=2,
                             health_stall_seconds=10)
        async with ScoringService(cfg, model) as service:
            task = asyncio.create_task(service.run())
            await produce(topics["in"], first)
            # stop the broker while the service is still working through the first part
            await wait_committed(broker.bootstrap, group, topics["in"], {}, timeout=120,
                                 predicate=lambda c: sum(c.values()) >= 100)
            await broker.stop()
            at_stop = service.stats.scored
            for _ in range(OUTAGE_SECONDS):  # longer than health_stall_seconds: still healthy, not ready
                await asyncio.sleep(1)
                healthy, checks = service.health()
                assert healthy, checks
                assert not task.done(), "the service stopped while the broker was down"
            assert not service.readiness()[0]
            await broker.restart()
            await produce(topics["in"], second)
            ends = await end_offsets(broker.bootstrap, topics["in"])
            await wait_committed(broker.bootstrap, group, topics["in"], ends, timeout=180)
            assert not task.done()
            service.request_stop()
            await asyncio.wait_for(task, 30)
        scores = await read_all(broker.bootstrap, topics["scores"])
        dlq = await read_all(broker.bootstrap, topics["dlq"])
        return ends, at_stop, scores, dlq, service.stats

    with caplog.at_level(logging.INFO, logger="hiddenstate.serve"):
        ends, at_stop, scores, dlq, stats = asyncio.run(scenario())
    assert sum(ends.values()) == len(messages)
    assert at_stop < len(first), "the broker stopped after the first part was scored: not mid-stream"
    # at-least-once: every input offset has a score (duplicates of an uncommitted tail allowed)
    covered = {(int(header(r, "source_partition")), int(header(r, "source_offset"))) for r in scores}
    assert covered == {(p, o) for p, end in ends.items() for o in range(end)}
    assert not dlq and len(scores) >= len(messages)
    assert stats.connect_attempts == 1  # it rode out the outage; no reconnect loop of its own
    # the log says what happened: the broker went away, and came back
    lines = [r.getMessage() for r in caplog.records if r.name == "hiddenstate.serve"]
    assert any("not answering" in line for line in lines), "\n".join(lines[-40:])
    assert any("answers again" in line for line in lines), "\n".join(lines[-40:])
