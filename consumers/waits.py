"""Bounded waits on the broker: a warning once a wait grows long, a `BrokerWaitTimeout` at `broker_wait_seconds`.

Several of aiokafka's waits have no timeout of their own. A transactional producer retries its
transaction requests for as long as the broker answers with a retriable error: `begin_transaction`
(InitProducerId while the transaction coordinator is unavailable or loading),
`send_offsets_to_transaction` (AddOffsetsToTxn, TxnOffsetCommit: a partition the group coordinator
does not know, `UnknownTopicOrPartition`, is retried for ever), `commit_transaction` and
`abort_transaction` (EndTxn); a record batch for a partition that was never added to the transaction
is held back (muted) and never expires. A record batch for a partition without a known leader waits
`request_timeout_ms` (40 s) and then fails with `NotLeaderForPartitionError`. None of these logs a
line the service shows, and while the service waits its /healthz stayed healthy and /readyz ready
(issue 17, defect 9: a first transaction that hung 40 s in silence).

`bounded` puts every such wait under the service's bound: after `WARN_AFTER` seconds it logs one
warning naming what it waits for, and after `broker_wait_seconds` it gives the wait up with a
`BrokerWaitTimeout` (the caller aborts the transaction, replaces the producer and consumes the batch
again). `Waiting` records the wait in progress, for /readyz (not ready while a wait is long) and
/healthz (a wait within its bound is not a stuck loop).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

from consumers.errors import BrokerWaitTimeout

log = logging.getLogger("hiddenstate.serve")

T = TypeVar("T")

WARN_AFTER = 5.0
"""Seconds after which a wait on the broker is logged as a warning (and /readyz reports it), if shorter than its bound."""


@dataclass(frozen=True, slots=True)
class Wait:
    """One wait in progress: what for, since when (monotonic), and its bound in seconds."""

    what: str
    since: float
    limit: float

    def age(self) -> float:
        return time.monotonic() - self.since

    def overdue(self) -> bool:
        """Past its bound (and a second's slack): `bounded` should have given it up; something is stuck."""
        return self.age() > self.limit + 1.0


class Waiting:
    """The bounded wait on the broker in progress, if any (written by the event loop, read by the HTTP thread)."""

    def __init__(self) -> None:
        self.current: Wait | None = None

    def long_wait(self) -> Wait | None:
        """The wait in progress if it has lasted `WARN_AFTER` seconds (or half its bound, if that is shorter)."""
        wait = self.current
        if wait is not None and wait.age() >= warn_after(wait.limit):
            return wait
        return None


def warn_after(limit: float) -> float:
    return min(WARN_AFTER, limit / 2)


async def bounded(awaitable: Awaitable[T], what: str, limit: float, waiting: Waiting | None = None) -> T:
    """Await `awaitable`, at most `limit` seconds: a warning naming `what` after `warn_after(limit)` seconds, then
    `BrokerWaitTimeout`, the awaitable cancelled. `what` reads in "waiting for <what>"."""
    task = asyncio.ensure_future(awaitable)
    wait = Wait(what, time.monotonic(), limit)
    if waiting is not None:
        waiting.current = wait
    try:
        early = warn_after(limit)
        done, _ = await asyncio.wait({task}, timeout=early)
        if not done:
            log.warning("waiting for %s: no answer from the broker for %gs; giving up at %gs (broker_wait_seconds)",
                        what, early, limit)
            done, _ = await asyncio.wait({task}, timeout=limit - early)
        if not done:
            task.cancel()
            await asyncio.wait({task})
            raise BrokerWaitTimeout(f"no answer from the broker within {limit:g}s while waiting for {what} "
                                    "(broker_wait_seconds)")
        return task.result()
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        if waiting is not None and waiting.current is wait:
            waiting.current = None
