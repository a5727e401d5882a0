"""`hiddenstate demo --kafka`: the demo's simulated fleet through a real Kafka broker and the real service.

One process, one asyncio loop, three parts:

- a producer: each step of a `detector.readings.synthetic.Fleet` goes to the run's input topic as
  batched messages (arrays of up to `CHUNK` readings, the service's batched format);
- the `ScoringService` of `hiddenstate serve` (consumers/service.py), unchanged;
- a reader of the alerts topic: what comes out of Kafka feeds the live view of `demo` and,
  at the end, its precision and recall against the injected anomalies.

The broker is `--bootstrap` if given, else the packaged local one (`consumers.broker`, as `hiddenstate broker start`; and
stopped at the end if this command started it). Topics and group are per run
(`hiddenstate-demo-<run>-...`) and the topics are deleted at the end. The producer keeps at most
`MAX_AHEAD_STEPS` steps ahead of the service (backpressure), so "as fast as possible" means as
fast as the whole pipeline goes. `--duration` or Ctrl-C stops producing; the service then
finishes what was produced (for at most `DRAIN_SECONDS`) and the report is printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from consumers.broker import LocalBroker
from consumers.errors import KafkaDemoError
from detector.alerts import AlertKind
from detector.cli.options import config_from_args
from detector.config import DetectorConfig
from detector.evaluation import GRACE_STEPS, DemoReport, DemoSnapshot, OpenAlert, Truth, evaluate, format_report
from detector.readings.synthetic import Fleet

CHUNK = 500
"""Most readings per input message."""
MAX_AHEAD_STEPS = 4
"""Most steps produced but not yet consumed by the service."""
DRAIN_SECONDS = 60.0
"""After the last step: how long the service may take to score what was produced."""


@dataclass(frozen=True)
class DemoTopics:
    """The topics and group of one demo run."""

    readings: str
    scores: str
    alerts: str
    dead_letters: str
    group: str

    @classmethod
    def for_run(cls, run: str) -> DemoTopics:
        prefix = f"hiddenstate-demo-{run}"
        return cls(f"{prefix}-readings", f"{prefix}-scores", f"{prefix}-alerts", f"{prefix}-readings-dlq", prefix)

    @property
    def all(self) -> list[str]:
        return [self.readings, self.scores, self.alerts, self.dead_letters]


class _AlertBook:
    """The alerts read back from Kafka, matched against the injected anomalies as `run_demo` does."""

    def __init__(self, fleet: Fleet, grace: int) -> None:
        self.fleet = fleet
        self.index = {name: i for i, name in enumerate(fleet.names())}
        self.truth = Truth(grace)
        self.raises: list[tuple[int, int]] = []
        self.open: dict[str, OpenAlert] = {}
        self.cleared = 0

    def add(self, doc: dict) -> None:
        sensor = self.index.get(doc.get("sensor_id"))
        if sensor is None:
            return
        step = int(round((doc["ts"] - self.fleet.start) / self.fleet.interval))
        if doc["kind"] == AlertKind.RAISE.value:
            self.raises.append((sensor, step))
            hit = self.truth.match(sensor, step)
            channel = doc.get("channel")
            self.open[doc["sensor_id"]] = OpenAlert(
                doc["sensor_id"], channel if isinstance(channel, int) else 0, doc.get("expected", math.nan),
                doc.get("seen", math.nan), doc["score"], step, hit.kind.value if hit else None,
            )
        else:
            self.cleared += 1
            self.open.pop(doc["sensor_id"], None)


async def run_kafka_demo(
    config: DetectorConfig,
    bootstrap: str,
    sensors: int = 1000,
    duration: float = 30.0,
    seed: int = 0,
    anomaly_rate: float = 2.0,
    *,
    rate: float | None = None,
    max_steps: int | None = None,
    grace: int = GRACE_STEPS,
    on_progress: Callable[[DemoSnapshot], None] | None = None,
    progress_interval: float = 0.25,
    recent: int = 8,
    stop: asyncio.Event | None = None,
) -> DemoReport:
    """Produce a simulated fleet to Kafka, score it with the service, read the alerts back; returns the report.

    Like `run_demo`, but every reading and alert goes through the broker at `bootstrap`. Stops
    producing after `duration` wall seconds, `max_steps` steps, or when `stop` is set.
    """
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import KafkaError

    from consumers.config import ServiceConfig
    from consumers.service import ScoringService

    if sensors < 1:
        raise ValueError("sensors must be at least 1")
    stop = stop if stop is not None else asyncio.Event()
    topics = DemoTopics.for_run(uuid.uuid4().hex[:8])
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15_000)
    try:
        await asyncio.wait_for(admin.start(), 30)
        await admin.create_topics([NewTopic(t, 1, 1) for t in topics.all])
    except (KafkaError, OSError, TimeoutError) as exc:
        await admin.close()
        raise KafkaDemoError(f"cannot create the demo's topics on Kafka at {bootstrap}: {exc!r}") from None

    service = ScoringService(ServiceConfig(
        bootstrap_servers=bootstrap, input_topics=[topics.readings], scores_topic=topics.scores,
        alerts_topic=topics.alerts, dead_letter_topic=topics.dead_letters, group_id=topics.group,
        checkpoints_enabled=False, metrics_enabled=False, poll_timeout_ms=50, start_timeout_seconds=30,
        max_message_bytes=1 << 20, max_batch=max(1, 4 * math.ceil(sensors / CHUNK)),
        detector=config.model_copy(update={"channels": 1}),
    ))
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_request_size=2 << 20)
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    fleet = Fleet(sensors, seed=seed, anomaly_rate=anomaly_rate)
    names = fleet.names()
    book = _AlertBook(fleet, grace)
    steps = 0
    started = time.perf_counter()
    tasks: list[asyncio.Task] = []

    def snapshot() -> DemoSnapshot:
        newest = sorted(book.open.values(), key=lambda a: a.since_step, reverse=True)[:recent]
        return DemoSnapshot(
            elapsed=time.perf_counter() - started, steps=steps, readings=service.stats.scored, sensors=sensors,
            alerts_raised=len(book.raises), alerts_cleared=book.cleared, open_alerts=len(book.open),
            recent_open=newest, injected=len(fleet.anomalies),
        )

    async def read_alerts() -> None:
        alerts = TopicPartition(topics.alerts, 0)
        reader.assign([alerts])
        await reader.seek_to_beginning(alerts)
        while True:
            batch = await reader.getmany(timeout_ms=200)
            for record in batch.get(alerts, ()):
                book.add(orjson.loads(record.value))

    async def show_progress() -> None:
        while on_progress is not None:
            await asyncio.sleep(progress_interval)
            on_progress(snapshot())

    try:
        try:
            await service.start()
            await producer.start()
            await reader.start()
        except (KafkaError, OSError, TimeoutError) as exc:
            raise KafkaDemoError(f"cannot connect to Kafka at {bootstrap}: {exc!r}") from None
        tasks = [asyncio.create_task(service.run(), name="demo-service"),
                 asyncio.create_task(read_alerts(), name="demo-alerts"),
                 asyncio.create_task(show_progress(), name="demo-progress")]
        produced = 0
        seen_anomalies = 0
        sent: list[asyncio.Future] = []
        while not stop.is_set() and (max_steps is None or steps < max_steps):
            now = time.perf_counter()
            if now - started >= duration:
                break
            if rate is not None and rate > 0 and started + steps / rate > now:
                await _wait(stop, started + steps / rate - now)
                continue
            if produced - service.stats.consumed >= MAX_AHEAD_STEPS * sensors:  # the service is behind: wait
                await _wait(stop, 0.01)
                _check(tasks)
                continue
            ts, values, _ = fleet.step()
            book.truth.add(fleet.anomalies[seen_anomalies:])
            seen_anomalies = len(fleet.anomalies)
            rows = [{"sensor_id": name, "ts": ts, "value": value} for name, value in zip(names, values.tolist())]
            for i in range(0, sensors, CHUNK):
                sent.append(await producer.send(topics.readings, orjson.dumps(rows[i:i + CHUNK])))
            produced += sensors
            steps += 1
        for result in await asyncio.gather(*sent, return_exceptions=True):
            if isinstance(result, BaseException):
                raise KafkaDemoError(f"Kafka at {bootstrap} did not take the simulated readings: {result!r}")
        # let the service score what was produced, and read its alerts back
        deadline = time.perf_counter() + DRAIN_SECONDS
        while service.stats.consumed < produced and time.perf_counter() < deadline:
            _check(tasks)
            await asyncio.sleep(0.05)
        service.request_stop()
        await asyncio.wait_for(tasks[0], DRAIN_SECONDS)
        end = (await reader.end_offsets([TopicPartition(topics.alerts, 0)]))[TopicPartition(topics.alerts, 0)]
        while await reader.position(TopicPartition(topics.alerts, 0)) < end and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
        seconds = time.perf_counter() - started
        if on_progress is not None:
            on_progress(snapshot())
        engine = service.engine
        return evaluate(
            service.model.model_id, service.stats.scored, engine.stats.network_seconds if engine else 0.0,
            fleet, book.truth, book.raises, steps, seconds, book.cleared, len(book.open),
        )
    finally:
        service.request_stop()
        for task in tasks[1:]:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 30)
        await service.close()
        for client in (producer, reader):
            with contextlib.suppress(Exception):
                await client.stop()
        with contextlib.suppress(Exception):
            await admin.delete_topics(topics.all)
        await admin.close()


async def _wait(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), max(seconds, 0.0))


def _check(tasks: list[asyncio.Task]) -> None:
    """Raise the error of a background task that ended (the service must not die unnoticed)."""
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise KafkaDemoError(f"{task.get_name()} failed: {task.exception()!r}") from task.exception()


def run(args, render) -> int:
    """The `demo --kafka` command: broker, live view (`render(snapshot)` callbacks from demo.py), report."""

    # the live view is the output; keep aiokafka's connection chatter and the service's info lines out of it
    quiet = {"aiokafka": logging.CRITICAL, "hiddenstate": logging.WARNING}
    levels = {name: logging.getLogger(name).level for name in quiet}
    for name, level in quiet.items():
        logging.getLogger(name).setLevel(level)
    broker = LocalBroker()
    bootstrap = args.bootstrap
    try:
        if bootstrap is None:
            print("starting the local Kafka broker (hiddenstate broker start)…", flush=True)
            bootstrap = broker.start()
        print(f"Kafka at {bootstrap}: producing the simulated fleet and scoring it with the service", flush=True)

        async def main() -> DemoReport:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signal.SIGINT, stop.set)
            try:
                with render() as on_progress:
                    return await run_kafka_demo(
                        config_from_args(args), bootstrap, args.sensors, args.duration, args.seed,
                        args.anomaly_rate, rate=args.rate, on_progress=on_progress, stop=stop,
                    )
            finally:
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(signal.SIGINT)

        report = asyncio.run(main())
    finally:
        if broker.started:
            print("stopping the local Kafka broker (hiddenstate broker stop)…", flush=True)
            broker.stop()
        for name, level in levels.items():  # as they were (the command may run inside a longer process)
            logging.getLogger(name).setLevel(level)
    print(format_report(report))
    return 0
