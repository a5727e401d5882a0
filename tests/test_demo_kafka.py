"""`hiddenstate demo --kafka` against a real broker: the same detection as the in-process demo, and the command.

The broker is the session's (tests/kafka_broker.py); `--bootstrap` points the demo at it, so
the test does not start or stop a broker of its own.
"""

from __future__ import annotations

import asyncio
import logging
import math

from detector.cli import main
from detector.config import DetectorConfig
from detector.demo import run_demo
from consumers.commands.kafka_demo import run_kafka_demo
from tests.kafka_broker import kafka_bootstrap  # noqa: F401 - a fixture


def _topics(bootstrap: str) -> set[str]:
    from aiokafka.admin import AIOKafkaAdminClient

    async def listing() -> set[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            return set(await admin.list_topics())
        finally:
            await admin.close()

    return asyncio.run(listing())


def test_through_kafka_detects_what_the_in_process_demo_detects(kafka_bootstrap):
    """Same fleet, same steps: the alerts read back from Kafka are those of the engine run in process."""
    sensors, steps = 30, 400
    offline = run_demo(DetectorConfig(), sensors=sensors, duration=math.inf, seed=1, max_steps=steps)
    snapshots = []
    through = asyncio.run(run_kafka_demo(DetectorConfig(), kafka_bootstrap, sensors=sensors, duration=math.inf,
                                         seed=1, max_steps=steps, on_progress=snapshots.append))
    assert through.steps == offline.steps == steps
    assert through.readings == offline.readings == sensors * steps
    assert offline.alerts_raised > 0
    for figure in ("alerts_raised", "alerts_cleared", "open_at_end", "injected", "evaluated", "caught",
                   "caught_during", "true_alerts"):
        assert getattr(through, figure) == getattr(offline, figure), figure
    assert through.model_id == offline.model_id
    assert snapshots and snapshots[-1].readings == sensors * steps
    assert not any(t.startswith("hiddenstate-demo-") for t in _topics(kafka_bootstrap))  # cleaned up


def test_demo_command_with_bootstrap(kafka_bootstrap, capsys):
    before = {name: logging.getLogger(name).level for name in ("aiokafka", "hiddenstate")}
    rc = main(["demo", "--kafka", "--bootstrap", kafka_bootstrap, "--duration", "4", "--sensors", "50", "--no-live"])
    assert {name: logging.getLogger(name).level for name in before} == before  # quietened for the run only
    out = capsys.readouterr().out
    assert rc == 0, out
    assert f"Kafka at {kafka_bootstrap}" in out
    assert "hiddenstate demo: 50 simulated sensors" in out and "readings scored" in out
    scored = int(out.split("readings scored")[1].split()[0].replace(",", ""))
    assert scored > 0 and scored % 50 == 0  # whole steps: everything produced was scored
    assert "starting the local Kafka broker" not in out  # --bootstrap: no broker of its own
