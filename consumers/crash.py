"""Test-only crash points: SIGKILL this process at a named point of a batch (tests/test_state_kafka.py).

A kill -9 from outside lands wherever the process happens to be; to show that the changelog and the
transactions hold at *every* step of a batch, the crash test needs to kill at chosen steps. With
`HIDDENSTATE_CRASH_AT=<point>:<n>` in its environment, the n-th time the process reaches `<point>`
it kills itself with SIGKILL: no flush, no cleanup, no leaving the group, exactly like kill -9. Never
set it in production; unset (the default) `crash_point` returns at once.

Points (marked in `consumers/service.py`; in `delivery.py` for a transaction, in `checkpoints.py` for
`restoring`), in the order a batch reaches them:

- `scored`: the engine stepped the batch (state changed in memory), nothing produced yet;
- `produced`: at_least_once: the outputs are acknowledged, the checkpoint not written; exactly_once:
  the transaction is open, outputs and changelog records are sent and acknowledged, the offsets not
  yet added (mid-transaction);
- `before_commit`: at_least_once: outputs and changelog acknowledged, offsets not committed;
  exactly_once: the offsets are in the open transaction too, it is not committed (mid-transaction);
- `committed`: the offsets (or the transaction) committed, before the next poll;
- `two_in_flight`: the next batch scored (outputs and changelog records built) while this one's delivery
  has not ended (reached only when it is still in flight: pipelining, docs/service.md);
- `restoring`: on assignment, the changelog has been read, no state imported and no position moved.

A malformed value raises `ValueError` when this module is imported (the service does not start):
a misspelt point would otherwise never fire.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

POINTS = ("scored", "produced", "before_commit", "committed", "two_in_flight", "restoring")
ENV = "HIDDENSTATE_CRASH_AT"

log = logging.getLogger("hiddenstate.serve")


def parse(spec: str) -> tuple[str, int] | None:
    """`"<point>:<n>"` -> (point, n); `""` -> None."""
    if not spec:
        return None
    point, _, count = spec.partition(":")
    if point not in POINTS or not count.isdigit() or int(count) < 1:
        raise ValueError(f"{ENV}={spec!r}: expected <point>:<n> with n >= 1 and point one of {', '.join(POINTS)} "
                         "(a test-only hook: unset it to run normally)")
    return point, int(count)


_target = parse(os.environ.get(ENV, ""))
_reached = 0


def crash_point(point: str) -> None:
    """SIGKILL this process if `HIDDENSTATE_CRASH_AT` names `point` and this is its n-th arrival."""
    global _reached
    if _target is None or _target[0] != point:
        return
    _reached += 1
    if _reached < _target[1]:
        return
    log.critical("crash point %s reached (%s=%s:%d): killing this process with SIGKILL", point, ENV, *_target)
    for handler in logging.getLogger().handlers + log.handlers:
        handler.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)
