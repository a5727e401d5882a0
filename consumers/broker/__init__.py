"""A local single-node Kafka broker (KRaft) for development, tests and `hiddenstate demo --kafka`.

`kafka.sh` and the `pom.xml` it resolves the broker's jars from ship inside the package,
so the broker can be started wherever `pip install hiddenstate` works (Java 17+ and
Maven given), not only from the source tree. `LocalBroker` drives the script.
"""

from __future__ import annotations

import subprocess
from importlib import resources
from pathlib import Path

from consumers.errors import BrokerScriptError


def script_path() -> Path:
    """The packaged `kafka.sh` (inside the installed package or the source tree)."""
    return Path(str(resources.files(__name__) / "kafka.sh"))


class LocalBroker:
    """`kafka.sh start`/`stop`; stops only a broker this object started."""

    def __init__(self, script: Path | None = None) -> None:
        self.script = script or script_path()
        self.started = False

    def run(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        """Run `kafka.sh ARGS...` (stdout and stderr captured as text)."""
        return subprocess.run(["bash", str(self.script), *args], capture_output=True, text=True, timeout=timeout)

    def start(self) -> str:
        """Start (or find) the local broker; returns its bootstrap address."""
        proc = self.run("start")
        if proc.returncode != 0:
            raise BrokerScriptError(f"kafka.sh start failed (exit {proc.returncode}); it needs Java 17+ and Maven, "
                                    f"or pass --bootstrap HOST:PORT:\n{proc.stderr.strip()[-2000:]}")
        self.started = "already" not in proc.stderr and "not started by this script" not in proc.stderr
        return proc.stdout.strip().splitlines()[-1]

    def stop(self) -> None:
        if self.started:
            self.run("stop", timeout=120)
            self.started = False
