"""`hiddenstate serve` without its broker: a quiet log, and readiness that says so (issue 17, items 5 and 6).

- With the broker unreachable the Kafka client logged an ERROR on every reconnect (about 75 a second in a
  25 s outage): now the first of each kind shows, the rest are folded into the service's own line.
- `/readyz` stayed 200 for a whole outage (until `broker_stale_seconds` after the last answer): now the
  first failed broker check makes it 503, and `/healthz` stays 200 (a restart would not help).

The readiness test starts a broker of its own (as tests/test_serve_broker_restart.py does) and stops it.
"""

from __future__ import annotations

import asyncio
import io
import logging
import socket
import time

from consumers.config import ServiceConfig
from consumers.logs import configure_logging
from consumers.service import ScoringService
from detector.config import DetectorConfig
from detector.model.store import untrained
from tests.test_serve_broker_restart import broker  # noqa: F401 - a fixture
from tests.test_serve_kafka import model, new_topics, service_config, unique_name  # noqa: F401 - a fixture


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _logged(level: str, run) -> list[str]:
    """The lines the service's own logging set-up writes while `run()` runs (then the test's handlers return)."""
    root = logging.getLogger()
    kept, kept_level = list(root.handlers), root.level
    stream = io.StringIO()
    handler = configure_logging(level, "text", stream=stream)
    try:
        run()
    finally:
        root.removeHandler(handler)
        for h in kept:
            root.addHandler(h)
        root.setLevel(kept_level)
        logging.getLogger("aiokafka").setLevel(logging.NOTSET)
    return stream.getvalue().splitlines()


def _start_against_nothing(seconds: float) -> None:
    cfg = ServiceConfig(bootstrap_servers=f"127.0.0.1:{_free_port()}", metrics_enabled=False,
                        retry_initial_seconds=0.05, retry_max_seconds=0.1, start_timeout_seconds=seconds,
                        detector=DetectorConfig(channels=1))

    async def scenario():
        service = ScoringService(cfg, untrained(8, 1))
        try:
            await service.start()
        except TimeoutError:
            return
        raise AssertionError("connected to a port nothing listens on")

    asyncio.run(scenario())


def test_the_kafka_clients_errors_are_folded_not_hidden():
    """A real unreachable port, 4 s of fast reconnects: the client's first error shows, the rest are counted."""
    lines = _logged("INFO", lambda: _start_against_nothing(4.0))
    client = [line for line in lines if " aiokafka" in line]
    own = [line for line in lines if "hiddenstate.serve: cannot reach Kafka" in line]
    assert len(own) >= 10, lines  # it did retry, fast
    assert 1 <= len(client) <= 2, "\n".join(client[:20])  # was one per attempt: 40 in 4 s
    assert "Unable connect to" in client[0]  # the first occurrence, as it came
    folded = [line for line in own if "more error(s), folded; last: Unable connect to" in line]
    assert len(folded) >= len(own) - 2, "\n".join(own)  # each own line says how many it stands for


def test_debug_logging_shows_every_client_record():
    lines = _logged("DEBUG", lambda: _start_against_nothing(1.0))
    client = [line for line in lines if "aiokafka" in line and "Unable connect to" in line]
    own = [line for line in lines if "hiddenstate.serve: cannot reach Kafka" in line]
    assert len(client) >= len(own) >= 3


def test_readyz_fails_as_soon_as_the_broker_is_gone_and_healthz_does_not(broker, model):  # noqa: F811
    async def scenario():
        topics = await new_topics(broker.bootstrap)
        cfg = service_config(broker.bootstrap, topics, unique_name("g"), retry_initial_seconds=0.2,
                             retry_max_seconds=2)  # broker_probe_seconds 5, broker_stale_seconds 30: the defaults
        async with ScoringService(cfg, model) as service:
            task = asyncio.create_task(service.run())
            deadline = time.monotonic() + 60
            while not service.readiness()[0]:
                assert time.monotonic() < deadline, service.readiness()
                await asyncio.sleep(0.2)
            await broker.stop()
            stopped = time.monotonic()
            while service.readiness()[0]:
                assert service.health()[0], service.health()
                assert time.monotonic() - stopped < 20, ("still ready without a broker", service.readiness())
                await asyncio.sleep(0.2)
            unready_after = time.monotonic() - stopped
            ready, checks = service.readiness()
            assert "not answering" in checks["broker"][1], checks
            for _ in range(10):  # the outage goes on: not ready, and alive
                await asyncio.sleep(0.5)
                assert service.health()[0] and not service.readiness()[0]
            await broker.restart()
            deadline = time.monotonic() + 90
            while not service.readiness()[0]:
                assert service.health()[0], service.health()
                assert time.monotonic() < deadline, service.readiness()
                await asyncio.sleep(0.2)
            assert not task.done()
            service.request_stop()
            await asyncio.wait_for(task, 30)
        return unready_after

    unready_after = asyncio.run(scenario())
    assert unready_after < 20
