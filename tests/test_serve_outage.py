"""`hiddenstate serve` without its broker: a quiet log (issue 17, item 5).

With the broker unreachable the Kafka client logged an ERROR on every reconnect (about 75 a second in a
25 s outage): now the first of each kind shows, the rest are folded into the service's own line.
"""

from __future__ import annotations

import asyncio
import io
import logging
import socket

from consumers.config import ServiceConfig
from consumers.logs import configure_logging
from consumers.service import ScoringService
from detector.config import DetectorConfig
from detector.model.store import untrained


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
