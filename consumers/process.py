"""The `hiddenstate serve` process around one `ScoringService`: signals, the grace period, the exit status.

    asyncio.run(serve(load_service_config("service.toml")))

SIGTERM or SIGINT finishes the in-flight batch, commits, leaves the group and returns 0; a batch
still running when `grace_seconds` run out is abandoned uncommitted (1). `tune_gc` is the
garbage-collector setting the process runs with.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time

from consumers.config import ServiceConfig
from consumers.errors import BrokerAccessError, StopRequested
from consumers.service import ScoringService
from detector.model.store import Model

log = logging.getLogger("hiddenstate.serve")

GC_GEN0_THRESHOLD = 20_000


def tune_gc() -> None:
    """Let Python's cycle collector look at new objects every 20,000 allocations, not every 700 (its default).

    A micro-batch of thousands of readings keeps tens of thousands of small containers alive until its
    outputs are sent (parsed JSON, score documents, headers); at the default threshold the collector runs
    dozens of times per batch and walks all of them each time: about a third of the service's CPU per
    reading with one reading per message (docs/performance.md). Those objects are freed by reference
    counting anyway; the collector is only needed for cycles. Never lowers a threshold.
    """
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(gen0, GC_GEN0_THRESHOLD), gen1, gen2)


async def serve(config: ServiceConfig, model: Model | None = None, install_signals: bool = True) -> int:
    """Run the service until SIGTERM/SIGINT (or `start_timeout_seconds` at start); returns an exit status.

    0: stopped cleanly within `grace_seconds`; 1: the grace period ran out (the uncommitted
    batch is consumed again by the next owner); 2: the broker was never reachable, or refused this client.
    """
    tune_gc()
    service = ScoringService(config, model)
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    if install_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, service.request_stop)
                installed.append(sig)
            except (NotImplementedError, RuntimeError):  # not the main thread, or no signals here
                pass
    try:
        return await _serve(service, config)
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


async def _serve(service: ScoringService, config: ServiceConfig) -> int:
    try:
        await service.start()
    except StopRequested:
        log.info("stopped before the broker could be reached")
        return 0
    except (TimeoutError, BrokerAccessError):  # start() logged why
        return 2
    except OSError as exc:  # the metrics port is taken, or the address is not ours
        log.error("%s", exc)
        return 2
    run_task = asyncio.create_task(service.run(), name="hiddenstate-serve")
    stop_wait = asyncio.create_task(service.wait_for_stop())
    await asyncio.wait({run_task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
    deadline = time.monotonic() + config.grace_seconds
    status = 0
    if not run_task.done():
        done, _ = await asyncio.wait({run_task}, timeout=config.grace_seconds)
        if not done:
            log.error("grace period of %.1fs ran out during a batch; abandoning it uncommitted", config.grace_seconds)
            run_task.cancel()
            status = 1
    stop_wait.cancel()
    if run_task.done() and not run_task.cancelled() and run_task.exception() is not None:
        log.error("the service failed", exc_info=run_task.exception())
        status = 1
    remaining = max(deadline - time.monotonic(), 1.0)
    try:
        await asyncio.wait_for(service.close(), timeout=remaining)
    except TimeoutError:
        log.error("could not flush and leave the group within the grace period")
        status = 1
    return status
