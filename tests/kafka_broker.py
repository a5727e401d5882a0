"""A real Kafka broker for the service tests, started with scripts/kafka.sh.

Use it from a test module by importing the fixture:
`from tests.kafka_broker import kafka_bootstrap  # noqa: F401`. The `kafka_bootstrap`
fixture (session scope) starts one broker on a dedicated port (KAFKA_PORT=19092,
KAFKA_CONTROLLER_PORT=19093, overridable with HIDDENSTATE_TEST_KAFKA_PORT /
HIDDENSTATE_TEST_KAFKA_CONTROLLER_PORT) and stops it at the end of the session (with
--clean; a broker that was already running is used and left running). If
HIDDENSTATE_TEST_BOOTSTRAP is set, that broker is used as is. If the broker cannot be
started (no Java, no Maven cache), the tests that need it are skipped with the reason,
unless HIDDENSTATE_REQUIRE_KAFKA=1 (meant for CI) turns that into a failure.

Helpers (tests/kafka_helpers.py, re-exported here): `create_topics`, `produce`, `read_all`,
`read_topic`, `committed_offsets`, `end_offsets`, `wait_committed`, `header`, `unique_name`,
`serve_command` and `start_serve`.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from tests.kafka_helpers import (  # noqa: F401 - re-exported for the test modules
    ROOT,
    committed_offsets,
    create_topics,
    end_offsets,
    header,
    produce,
    read_all,
    read_topic,
    serve_command,
    start_serve,
    topic_partitions,
    unique_name,
    wait_committed,
)

SCRIPT = ROOT / "scripts" / "kafka.sh"


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    external = os.environ.get("HIDDENSTATE_TEST_BOOTSTRAP")
    if external:
        yield external
        return
    env = dict(os.environ)
    env["KAFKA_PORT"] = os.environ.get("HIDDENSTATE_TEST_KAFKA_PORT", "19092")
    env["KAFKA_CONTROLLER_PORT"] = os.environ.get("HIDDENSTATE_TEST_KAFKA_CONTROLLER_PORT", "19093")
    proc = subprocess.run([str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        message = f"scripts/kafka.sh start failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
        if os.environ.get("HIDDENSTATE_REQUIRE_KAFKA") == "1":
            pytest.fail(message)
        pytest.skip(message)
    bootstrap = proc.stdout.strip().splitlines()[-1]
    # a broker that was already up (another session, a developer's) is used but not stopped
    ours = "already" not in proc.stderr and "not started by this script" not in proc.stderr
    try:
        yield bootstrap
    finally:
        if ours:  # --clean: the per-test topics are throwaway; do not let them pile up across sessions
            subprocess.run([str(SCRIPT), "stop", "--clean"], env=env, capture_output=True, text=True, timeout=120)
