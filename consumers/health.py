"""Health and readiness of the service, as `/healthz` and `/readyz` report them, and the broker probe behind them.

Healthy while the event loop and (once `run()` started) the processing loop go round within
`health_stall_seconds`, also while the broker is down (a restart would not bring it back) and
while a bounded wait on the broker (consumers/waits.py) is within its `broker_wait_seconds`; ready
while `run()` runs, the group has assigned this member its partitions and the broker answers: the
first failed broker probe makes it unready at once, the next successful round trip ready again, and
no answer within `broker_stale_seconds` counts as a failure too; a wait on the broker that has lasted
a few seconds (a transaction step, say) makes it unready until it ends.

`HealthMonitor` keeps the times those checks read: the event loop's turns (a ticker task), the
processing loop's polls (`heartbeat`), the last successful broker round trip (`broker_contact`,
called after every commit and probe), the assignment, and the consumer lag that the probe measures.
Written only by the event loop; read by the HTTP thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from consumers.config import ServiceConfig
from consumers.logs import CLIENT_LOG, error_text, partitions_text
from consumers.metrics import Checks
from consumers.waits import Waiting

log = logging.getLogger("hiddenstate.serve")


class HealthMonitor:
    """The liveness and readiness bookkeeping of one service."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.tick: float | None = None  # monotonic time the event loop last went round (ticker task)
        self.beat: float | None = None  # ... the processing loop last polled (None: run() not running)
        self.beat_wall: float | None = None
        self.running = False  # run() is running
        self.assigned: frozenset[TopicPartition] | None = None  # None: no assignment (yet, or being revoked)
        self.broker_ok: float | None = None  # monotonic time of the last successful broker round trip
        self.broker_ok_wall: float | None = None
        self.broker_lost: float | None = None  # monotonic time a broker probe first failed (None: answering)
        self.lag: dict[tuple[str, int], int] = {}
        self.waiting = Waiting()  # the bounded wait on the broker in progress (a transaction step, consumers/waits.py)
        self._probe_now = asyncio.Event()
        self._ticker: asyncio.Task | None = None

    @property
    def last_poll_time(self) -> float | None:
        """Unix time of the processing loop's last poll (None when run() is not running)."""
        return self.beat_wall if self.running else None

    # --- what the loops report -----------------------------------------------------------
    def start_ticker(self) -> None:
        if self._ticker is None:
            self.tick = time.monotonic()
            self._ticker = asyncio.create_task(self._tick_loop(), name="hiddenstate-ticker")

    async def stop_ticker(self) -> None:
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker

    async def _tick_loop(self) -> None:
        while True:
            self.tick = time.monotonic()
            await asyncio.sleep(0.5)

    def heartbeat(self) -> None:
        self.beat = time.monotonic()
        self.beat_wall = time.time()

    def broker_contact(self) -> None:
        self.broker_ok = time.monotonic()
        self.broker_ok_wall = time.time()
        if self.broker_lost is not None:
            log.info("Kafka at %s answers again after %.1fs%s", self.config.bootstrap_servers,
                     self.broker_ok - self.broker_lost, CLIENT_LOG.take())
            self.broker_lost = None

    def assign(self, assigned: set[TopicPartition] | None) -> None:
        """The group's assignment (None: revoked, or closing); the lag of the new partitions is measured now."""
        if assigned is None:
            self.assigned = None
            return
        self.assigned = frozenset(assigned)
        self.lag = {k: v for k, v in self.lag.items() if TopicPartition(*k) in assigned}
        self._probe_now.set()

    # --- the checks ----------------------------------------------------------------------
    def health(self) -> tuple[bool, Checks]:
        """Liveness: the event loop and, while `run()` runs, the processing loop go round."""
        limit = self.config.health_stall_seconds
        now = time.monotonic()
        checks: Checks = {}
        if self.tick is not None:
            age = now - self.tick
            checks["event_loop"] = (age <= limit, f"last turn {age:.1f}s ago (limit {limit:g}s)")
        if self.running and self.beat is not None:
            age = now - self.beat
            wait = self.waiting.current
            if age > limit and wait is not None and not wait.overdue():
                # a bounded wait on the broker (readiness says so); it ends by itself at its bound
                checks["processing_loop"] = (True, (f"last poll {age:.1f}s ago, waiting {wait.age():.0f}s for "
                                                    f"{wait.what} (bound {wait.limit:g}s)"))
            elif age > limit and self.broker_lost is not None:
                # waiting on a broker that does not answer (readiness says so): a restart would not bring it back
                checks["processing_loop"] = (True, (f"last poll {age:.1f}s ago, waiting for Kafka (not answering "
                                                    f"for {now - self.broker_lost:.0f}s)"))
            else:
                checks["processing_loop"] = (age <= limit, f"last poll {age:.1f}s ago (limit {limit:g}s)")
        return all(ok for ok, _ in checks.values()), checks

    def readiness(self, stopping: bool, restoring: bool) -> tuple[bool, Checks]:
        """Readiness: running, partitions assigned by the group, broker answered recently."""
        cfg = self.config
        checks: Checks = {}
        if stopping:
            checks["running"] = (False, "stopping")
        else:
            checks["running"] = (self.running, "processing" if self.running else "not processing yet")
        assigned = self.assigned
        if assigned is None:
            checks["partitions"] = (False, "no partition assignment from the group yet")
        else:
            checks["partitions"] = (True, f"{len(assigned)} assigned: {partitions_text(assigned)}")
        if restoring:
            checks["state"] = (False, "restoring sensor state from the changelog")
        wait = self.waiting.long_wait()
        if wait is not None:
            checks["broker_wait"] = (False, f"waiting {wait.age():.0f}s for {wait.what} (given up at {wait.limit:g}s, "
                                            "broker_wait_seconds)")
        now = time.monotonic()
        if self.broker_ok is None:
            checks["broker"] = (False, "not reached yet")
        elif self.broker_lost is not None:  # a probe failed: unready at once, not `broker_stale_seconds` later
            checks["broker"] = (False, f"not answering for {now - self.broker_lost:.1f}s (last answer "
                                       f"{now - self.broker_ok:.1f}s ago)")
        else:
            age = now - self.broker_ok
            checks["broker"] = (age <= cfg.broker_stale_seconds,
                                f"last answer {age:.1f}s ago (limit {cfg.broker_stale_seconds:g}s)")
        return all(ok for ok, _ in checks.values()), checks

    # --- the broker probe ----------------------------------------------------------------
    async def probe_loop(self, consumer: AIOKafkaConsumer) -> None:
        """Every `broker_probe_seconds` (and right after an assignment): measure the consumer lag.

        The high watermarks come from a ListOffsets round trip, which is also the broker check of
        /readyz; with no partition assigned a metadata request stands in for it.
        """
        while True:
            await self._probe(consumer)
            self._probe_now.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._probe_now.wait(), self.config.broker_probe_seconds)

    async def _probe(self, consumer: AIOKafkaConsumer) -> None:
        timeout = min(10.0, self.config.broker_stale_seconds)
        assigned = sorted(consumer.assignment(), key=lambda t: (t.topic, t.partition))
        try:
            if assigned:
                ends = await asyncio.wait_for(consumer.end_offsets(assigned), timeout)
            else:
                await asyncio.wait_for(consumer.topics(), timeout)
                ends = {}
        except (KafkaError, TimeoutError, OSError) as exc:
            if self.broker_lost is None:  # once per outage; the clients reconnect by themselves
                self.broker_lost = time.monotonic()
                reason = f"no answer within {timeout:g}s" if isinstance(exc, TimeoutError) else error_text(exc)
                log.warning("Kafka at %s not answering (%s); waiting for it, nothing is committed until the outputs "
                            "are acknowledged%s", self.config.bootstrap_servers, reason, CLIENT_LOG.take())
            else:
                log.debug("broker probe failed: %s", error_text(exc))
            return
        self.broker_contact()
        lag: dict[tuple[str, int], int] = {}
        for tp, end in ends.items():
            try:
                position = await asyncio.wait_for(consumer.position(tp), timeout)
            except (KafkaError, TimeoutError) as exc:  # revoked meanwhile, or no position yet
                log.debug("no position for %s: %s", partitions_text([tp]), error_text(exc))
                continue
            lag[(tp.topic, tp.partition)] = max(int(end) - int(position), 0)
        current = self.assigned or frozenset()
        self.lag = {k: v for k, v in lag.items() if TopicPartition(*k) in current}
