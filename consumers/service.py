"""`ScoringService`: consume readings from Kafka, score them, produce scores, alerts and dead letters.

One loop, micro-batches in a two-stage pipeline (at most two batches in flight, each of at most
`max_batch` messages: that is the backpressure):

    batch n+1:  getmany ─► decode ─► Engine.step ─► outputs, changelog records   (`_prepare`: CPU, the engine)
    batch n:    produce outputs ─► await every ack (acks=all) ─► changelog ─► commit   (`_deliver`: network only)

Batch n+1 is decoded and scored while batch n is acknowledged and committed; batch n+1's delivery
starts only once batch n's has ended, so commits stay in input order and a transactional producer
has one transaction open at a time. `_deliver` never touches the engine (the next batch may be
stepping it in a worker thread): a failed commit or transaction is handed back, and `_drain` drops
or rewinds the state. While a batch is in flight the next one stays open for more messages, up to
`max_batch` messages or `max_batch_delay_ms`; with nothing in flight a batch is scored at once.
`pipelining = false` delivers and commits each batch before the next poll.

Offsets are committed only after all outputs of the batch are acknowledged, so delivery is
at-least-once: after a crash the uncommitted tail (up to two batches) is consumed and scored again
(see docs/service.md for what duplicates look like).

One `Engine` serves every assigned partition. Messages are keyed by sensor id,
so a sensor's readings live in one partition; the service remembers which
partition each sensor was last seen on (consumers/ownership.py) and, after a
rebalance, drops the state of sensors whose partition went to another member. A
revocation first waits for the batches in flight to be produced and committed.

State checkpoints (docs/state.md, consumers/checkpoints.py): before each commit the
states of the sensors the batch changed (exported right after its step) go to a compacted changelog topic (partition =
input partition), with a position marker per input partition; newly assigned partitions
are restored from it before they are scored. `processing_guarantee="exactly_once"` puts
outputs, changelog records and offsets in one Kafka transaction (`_transact`).

The pieces, each handed what it needs and none calling back here: `OutputBuilder`
(consumers/outputs.py) builds a batch's outputs, `Delivery` (consumers/delivery.py)
gets them acknowledged, `Checkpointer` writes and restores the changelog, `Ownership`
keeps sensor -> partition, `HealthMonitor` (consumers/health.py) what /healthz and
/readyz report, `ServiceMetrics` (consumers/metrics.py) reads a `snapshot()` at scrape time.

Lifecycle: `start()` opens the HTTP endpoints (`/metrics`, `/healthz`, `/readyz`)
and connects (retrying with capped exponential backoff while the broker is
unreachable), `run()` loops until `request_stop()`, `close()` flushes, leaves the
group, closes and stops the endpoints. `serve()` (consumers/process.py) wires
signals and the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError, ProducerFenced

from consumers.broker_access import diagnose
from consumers.checkpoints import Checkpointer
from consumers.clients import make_consumer, make_producer, quietly_stop
from consumers.config import ServiceConfig
from consumers.crash import crash_point
from consumers.decode import Decoded, Decoder
from consumers.delivery import Delivery
from consumers.errors import BrokerWaitTimeout, StopRequested
from consumers.health import HealthMonitor
from consumers.logs import CLIENT_LOG, error_text, partitions_text
from consumers.metrics import Checks, HttpEndpoints, ServiceMetrics, ServiceSnapshot, ServiceStats, open_endpoints
from consumers.outputs import Output, OutputBuilder
from consumers.ownership import Ownership, RebalanceListener
from consumers.waits import bounded
from consumers.weights import WeightsTopic
from detector.engine import Engine, StepResult
from detector.model.store import Model, check_channel_names, load_model
from detector.readings.reasons import SCORED
from detector.version import __version__

log = logging.getLogger("hiddenstate.serve")


@dataclass
class Scored:
    """A batch decoded and scored, with everything its delivery needs: no engine access after this."""

    offsets: dict[TopicPartition, int]  # the next offset of each input partition of the batch
    outputs: list[Output]  # dead letters, score records, alert events
    polled_at: float  # `time.perf_counter()` when its poll returned
    scored_ts: np.ndarray  # event times of its scored readings (the event-lag histogram)
    checkpoint: list[Output] = field(default_factory=list)  # changelog records and position markers
    checkpoint_records: int = 0
    checkpoint_bytes: int = 0


@dataclass
class Unfinished:
    """A delivered batch whose commit (at_least_once) or transaction (exactly_once) failed."""

    partitions: set[TopicPartition]  # whose sensors' state includes readings that will come again
    error: str
    rewind: bool  # exactly_once: restore the partitions from the changelog and seek them to the committed offsets
    reason: str = ""


class ScoringService:
    """The Kafka service around one Engine. Use as `async with ScoringService(cfg) as s: await s.run()`."""

    def __init__(self, config: ServiceConfig, model: Model | None = None) -> None:
        self.config = config
        self.model = model if model is not None else load_model(config.detector.model)
        check_channel_names(self.model, config.channel_names, "the service's channel_names")  # joint-gru's set
        self.decoder = Decoder(config.detector.channels, config.channel_names, config.max_message_bytes,
                               config.max_readings_per_message, max_key_bytes=config.max_key_bytes,
                               max_channels=config.max_channels, sensor_id_pattern=config.sensor_id_pattern,
                               max_future_seconds=config.detector.max_future_seconds)
        self.engine: Engine | None = None
        if self.decoder.channels is not None:
            self.engine = self._new_engine(self.decoder.channels)
        self.stats = ServiceStats()
        self.consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()  # one batch scored at a time; rebalances wait for it
        self._in_flight: asyncio.Task[Unfinished | None] | None = None  # the batch being delivered and committed
        self._delivering: Scored | None = None  # ... that batch
        self._stop = asyncio.Event()
        self._closed = False
        self._last_report = time.monotonic()
        # observability: read by the HTTP thread, written only by the event loop
        self.metrics = ServiceMetrics(self.snapshot, __version__, self.model.model_id)
        self.monitor = HealthMonitor(config)
        self._http: HttpEndpoints | None = None
        # a batch's way out: outputs, their delivery, the partition of each sensor, the changelog (docs/state.md)
        self.outputs = OutputBuilder(config, self.model.model_id, self.decoder.names, self.stats)
        self.delivery = Delivery(config, self.stats, self.monitor.heartbeat, self.monitor.waiting)
        self.ownership = Ownership(self.stats, track_changes=config.checkpoints_enabled)
        self.checkpoints = Checkpointer(config, self.ownership, self.metrics.registry, self.decoder.names)
        self.checkpoint_stats = self.checkpoints.stats
        self.checkpoint_metrics = self.checkpoints.metrics
        self.weights = WeightsTopic(config, self.metrics.registry) if config.learning else None  # consumers/weights.py

    # --- lifecycle ------------------------------------------------------------------
    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def request_stop(self) -> None:
        """Finish the batches in flight, then leave `run()` (safe to call from a signal handler)."""
        if not self._stop.is_set():
            log.info("stop requested: finishing the batches in flight")
        self._stop.set()

    async def wait_for_stop(self) -> None:
        """Return once a stop is requested (or `close()` began)."""
        await self._stop.wait()

    async def __aenter__(self) -> ScoringService:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Open the HTTP endpoints, then connect consumer and producer, retrying with capped exponential backoff.

        Raises StopRequested if a stop is requested while waiting, TimeoutError after
        `start_timeout_seconds` (if set), BrokerAccessError at once if the broker refuses this
        client (untrusted certificate, client certificate refused, wrong SASL credentials), OSError
        if the endpoints cannot listen on `metrics_address:metrics_port`.
        """
        cfg = self.config
        log.info("starting: %s model_id=%s", cfg.summary(), self.model.model_id,
                 extra={"model_id": self.model.model_id, "version": __version__})
        self._start_observability()
        try:
            await self._connect()
        except BaseException:
            await self._stop_observability()
            raise

    async def _connect(self) -> None:
        cfg = self.config
        delay = cfg.retry_initial_seconds
        started = time.monotonic()
        while True:
            self.stats.connect_attempts += 1
            consumer, producer = make_consumer(cfg), make_producer(cfg)
            try:
                # a transactional producer's start waits for its producer id (InitProducerId), without a bound
                await bounded(producer.start(), "the producer to start (its producer id, InitProducerId)",
                              cfg.broker_wait_seconds, self.monitor.waiting)
                await consumer.start()
                if cfg.checkpoints_enabled:
                    await self.checkpoints.open()
                if self.weights is not None:
                    await self.weights.open()
            except (KafkaError, BrokerWaitTimeout) as exc:
                await quietly_stop(consumer, producer)
                refused = await diagnose(cfg)  # TLS trust, client certificate, SASL credentials: retrying cannot help
                if refused is not None:
                    log.error("cannot connect to Kafka at %s: %s", cfg.bootstrap_servers, refused)
                    raise refused from None
                waited = time.monotonic() - started
                if cfg.start_timeout_seconds is not None and waited + delay > cfg.start_timeout_seconds:
                    log.error("cannot reach Kafka at %s: %s; giving up after %.1fs (start_timeout_seconds)%s",
                              cfg.bootstrap_servers, error_text(exc), waited, CLIENT_LOG.take())
                    raise TimeoutError(
                        f"Kafka at {cfg.bootstrap_servers} unreachable for {waited:.1f}s: {error_text(exc)}"
                    ) from None
                log.warning("cannot reach Kafka at %s (attempt %d): %s; retrying in %.1fs%s",
                            cfg.bootstrap_servers, self.stats.connect_attempts, error_text(exc), delay,
                            CLIENT_LOG.take())
                await self._sleep_unless_stopped(delay)
                delay = min(delay * 2, cfg.retry_max_seconds)
                continue
            self.consumer, self.delivery.producer = consumer, producer
            self.monitor.broker_contact()
            await self.delivery.learn_limits()  # each output topic's max.message.bytes: sizes checked before sending
            consumer.subscribe(topics=list(cfg.input_topics),
                               listener=RebalanceListener(self._on_revoked, self._on_assigned))
            log.info("connected to %s; consuming %s as group %s", cfg.bootstrap_servers,
                     ",".join(cfg.input_topics), cfg.group_id,
                     extra={"attempts": self.stats.connect_attempts, "group": cfg.group_id})
            return

    async def close(self) -> None:
        """Flush the producer, leave the group, close both clients and the endpoints (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()  # not ready from here on
        try:
            await self.delivery.flush()
            if self.weights is not None:
                await self.weights.close()
            await quietly_stop(self.consumer, self.delivery.producer)
        finally:
            self.monitor.assign(None)
            await self._stop_observability()
        sensors = self._sensors()
        log.info("stopped: %s", self.stats.report_line(sensors), extra=self.stats.report_fields(sensors))

    # --- observability ----------------------------------------------------------------
    @property
    def http_port(self) -> int | None:
        """The port /metrics, /healthz and /readyz listen on (None when they are off or not started)."""
        return self._http.port if self._http is not None else None

    @property
    def assigned_partitions(self) -> frozenset[TopicPartition] | None:
        return self.monitor.assigned

    def health(self) -> tuple[bool, Checks]:
        """Liveness: the event loop and, while `run()` runs, the processing loop go round."""
        return self.monitor.health()

    def readiness(self) -> tuple[bool, Checks]:
        """Readiness: running, partitions assigned by the group, broker answered recently, no restore under way."""
        return self.monitor.readiness(stopping=self.stopping, restoring=self.checkpoints.restoring)

    def snapshot(self) -> ServiceSnapshot:
        """What /metrics reports, read at scrape time (from the HTTP thread)."""
        engine, monitor = self.engine, self.monitor
        return ServiceSnapshot(
            stats=self.stats, engine=engine.stats if engine is not None else None,
            pool=engine.pool if engine is not None else None, capacity=self.config.detector.capacity,
            assigned=monitor.assigned, lag=monitor.lag, last_broker_contact=monitor.broker_ok_wall,
            ready=self.readiness()[0], last_poll=monitor.last_poll_time,
            weights_version=engine.weights_version if engine is not None else 0,
        )

    def _start_observability(self) -> None:
        cfg = self.config
        self.monitor.start_ticker()
        if cfg.metrics_enabled and self._http is None:
            self._http = open_endpoints(self.metrics.registry, self.health, self.readiness,
                                        cfg.metrics_address, cfg.metrics_port)

    async def _stop_observability(self) -> None:
        await self.monitor.stop_ticker()
        http, self._http = self._http, None
        if http is not None:
            await asyncio.to_thread(http.stop)

    # --- the loop -------------------------------------------------------------------
    async def run(self) -> None:
        """Consume, score and produce until `request_stop()`; the batches in flight always complete."""
        if self.consumer is None:
            raise RuntimeError("start() the service first")
        cfg = self.config
        monitor = self.monitor
        monitor.heartbeat()
        monitor.running = True
        probe = asyncio.create_task(monitor.probe_loop(self.consumer), name="hiddenstate-probe")
        try:
            while not self._stop.is_set():
                monitor.heartbeat()
                try:
                    records, polled_at = await self._poll()
                except KafkaError as exc:
                    log.warning("poll failed: %s; retrying", error_text(exc))
                    await self._sleep_unless_stopped(cfg.retry_initial_seconds, raise_on_stop=False)
                    continue
                if records:
                    await self.process(records, polled_at=polled_at)
                self._maybe_report()
            async with self._lock:
                await self._drain()
        finally:
            if self._in_flight is not None:  # cancelled (the grace period ran out) or failed: abandon it uncommitted
                self._in_flight.cancel()
            monitor.running = False
            probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe

    async def _poll(self) -> tuple[dict[TopicPartition, list], float]:
        """The next batch's messages and `time.perf_counter()` when its first poll returned.

        While the previous batch is in flight the batch stays open for more messages, up to `max_batch`
        messages or `max_batch_delay_ms` after its first poll; with nothing in flight it is closed at once.
        """
        assert self.consumer is not None
        cfg = self.config
        records = await self.consumer.getmany(timeout_ms=cfg.poll_timeout_ms, max_records=cfg.max_batch)
        polled_at = time.perf_counter()
        count = sum(len(msgs) for msgs in records.values())
        closes = polled_at + cfg.max_batch_delay_ms / 1000
        while records and count < cfg.max_batch and self._in_flight is not None and not self._in_flight.done():
            left_ms = int((closes - time.perf_counter()) * 1000)
            if left_ms <= 0:
                break
            more = await self.consumer.getmany(timeout_ms=left_ms, max_records=cfg.max_batch - count)
            for tp, msgs in more.items():
                records.setdefault(tp, []).extend(msgs)  # a partition's messages stay in offset order
                count += len(msgs)
        return records, polled_at

    async def process(self, records: dict[TopicPartition, list], polled_at: float | None = None) -> None:
        """Score one getmany batch, then hand it over to be produced, acknowledged and committed.

        The previous batch's delivery (started by the previous call) runs meanwhile; it is awaited before
        this batch's starts, so commits stay in input order and at most two batches are in flight: one
        being scored, one being delivered. With `pipelining` off each batch is committed before this returns.
        polled_at: `time.perf_counter()` when the poll returned (default: now), for the latency histogram.
        """
        polled_at = time.perf_counter() if polled_at is None else polled_at
        async with self._lock:
            batch = await self._prepare(records, polled_at)
            if batch is not None and self._in_flight is not None and not self._in_flight.done():
                crash_point("two_in_flight")  # this batch scored, the previous one not yet delivered and committed
            if not await self._drain(also=batch):
                return  # the previous batch's transaction failed: this one was scored on state now rolled back
            if batch is None:
                return
            self._delivering = batch
            self._in_flight = asyncio.create_task(self._deliver(batch), name="hiddenstate-deliver")
            if not self.config.pipelining:
                await self._drain()

    async def _prepare(self, records: dict[TopicPartition, list], polled_at: float) -> Scored | None:
        """Decode and score a batch, build its outputs and its changelog records: everything that needs the engine.

        None for an empty batch.
        """
        assert self.consumer is not None
        metrics = self.metrics
        messages = [m for tp in sorted(records, key=lambda t: (t.topic, t.partition)) for m in records[tp]]
        if not messages:
            return None
        metrics.batch_messages.observe(len(messages))
        decoded = self._decode(messages)
        if self.weights is not None and self.engine is not None:  # a batch boundary: the version this batch scores with
            self.weights.sync(self.engine)
        self.stats.messages += len(messages)
        self.stats.consumed += len(decoded)
        stepped = time.perf_counter()
        result = await self._score(decoded)
        crash_point("scored")
        if result is not None:
            metrics.engine_step.observe(time.perf_counter() - stepped)
        outputs = self._outputs(messages, decoded, result)
        offsets = {tp: msgs[-1].offset + 1 for tp, msgs in records.items() if msgs}
        batch = Scored(offsets, outputs, polled_at,
                       result.ts[result.status == SCORED] if result is not None else np.empty(0))
        if self.config.checkpoints_enabled:  # the state after this batch, exported before the next one steps
            assigned = self.consumer.assignment()
            mine = {tp: off for tp, off in offsets.items() if tp in assigned}
            batch.checkpoint, batch.checkpoint_records, batch.checkpoint_bytes = await self.checkpoints.records(
                self.engine, assigned, mine)
        return batch

    async def _deliver(self, batch: Scored) -> Unfinished | None:
        """Produce a scored batch's outputs, wait for the acks, write its checkpoint, commit its offsets.

        Network only, never the engine (the next batch may be stepping it in a worker thread): what a
        failure means for the engine's state is returned, for `_drain` to apply.
        """
        metrics = self.metrics
        if self.config.exactly_once:
            unfinished = await self._transact(batch)
            if unfinished is None:
                metrics.processing_latency.observe(time.perf_counter() - batch.polled_at)
                self.stats.batches += 1
            return unfinished
        await self.delivery.deliver(batch.outputs)
        crash_point("produced")
        metrics.processing_latency.observe(time.perf_counter() - batch.polled_at)
        metrics.event_lag.observe_many(np.maximum(time.time() - batch.scored_ts, 0.0))
        if batch.checkpoint:  # after the outputs' acks, before the commit: never behind the committed offsets
            started = time.perf_counter()
            await self.delivery.deliver(batch.checkpoint)
            self.checkpoints.count(batch.checkpoint_records, batch.checkpoint_bytes, started)
        crash_point("before_commit")
        unfinished = await self._commit(batch.offsets)
        crash_point("committed")
        self.stats.batches += 1
        return unfinished

    async def _drain(self, also: Scored | None = None) -> bool:
        """Wait for the batch in flight to be delivered and committed, and apply what its failure means.

        also: a batch scored after it, not yet delivered. Returns False when that batch must be dropped: the
        transaction before it failed, so its partitions are rolled back with the failed batch's.
        """
        task, batch = self._in_flight, self._delivering
        if task is None or batch is None:
            return True
        try:
            unfinished = await task
        except ProducerFenced:
            self.ownership.drop(set(batch.offsets) | (set(also.offsets) if also else set()), self.engine)
            self.request_stop()
            raise
        finally:
            if task.done():  # else this wait was cancelled, and `run` abandons the batch
                self._in_flight = self._delivering = None
        if unfinished is None:
            return True
        if not unfinished.rewind:  # at_least_once: the commit failed; the batch after it is delivered as usual
            dropped = self.ownership.drop(unfinished.partitions, self.engine)
            self.ownership.held -= unfinished.partitions  # restore them from the changelog if they come back
            log.warning("commit failed%s: %s; those messages will be consumed again "
                        "(dropped the state of %d sensor(s))", unfinished.reason, unfinished.error, dropped)
            return True
        await self._rewind(unfinished.partitions | (set(also.offsets) if also else set()), unfinished.error)
        return False

    def _decode(self, messages: list) -> Decoded:
        """The batch as rows. The first batch that tells the channel count starts the engine, which takes the states
        restored before it; if they brought channel names, the batch is decoded again, by its sensors' names."""
        pairs = [(m.key, m.value) for m in messages]
        decoded = self.decoder.decode(pairs)
        if self.engine is None and self.decoder.channels is not None:
            self.engine = self._new_engine(self.decoder.channels)
            self.checkpoints.engine_ready(self.engine)
            configured = self.decoder.names.configured
            log.info("engine ready: %d channel(s)%s", self.decoder.channels, f" {configured}" if configured else "")
            if self.decoder.names.any_bound:
                decoded = self.decoder.decode(pairs)
        return decoded

    async def _score(self, decoded: Decoded) -> StepResult | None:
        rows = decoded.engine_rows
        if rows.size == 0 or self.engine is None:
            return None
        ids = [decoded.sensor_ids[i] for i in rows.tolist()]
        # the network step is CPU work: keep the event loop (heartbeats, fetches) responsive
        result = await asyncio.to_thread(self.engine.step, ids, decoded.ts[rows], decoded.values[rows], decoded.status[rows])
        self.decoder.names.bind(decoded.bindings)  # the sensors that took channel names now have state to keep them
        return result

    def _new_engine(self, channels: int) -> Engine:
        engine = Engine.for_model(self.model, self.config.detector, channels)
        self.decoder.names.pool = engine.pool  # each sensor's channel names live with its state
        return engine

    def _outputs(self, messages: list, decoded: Decoded, result: StepResult | None) -> list[Output]:
        """The batch's dead letters, score records and alert events; notes where the scored sensors were read."""
        outputs = self.outputs.build(messages, decoded, result)
        if result is not None:
            self.ownership.note_scored(messages, decoded, result)
        self.ownership.prune(self.engine)
        return outputs

    async def _commit(self, offsets: dict[TopicPartition, int]) -> Unfinished | None:
        """at_least_once: commit the batch's offsets of the partitions still assigned; what failed, if it did."""
        assert self.consumer is not None
        assigned = self.consumer.assignment()
        mine = {tp: off for tp, off in offsets.items() if tp in assigned}
        if len(mine) < len(offsets):
            log.info("not committing revoked partitions %s (their new owner will consume them again)",
                     partitions_text(set(offsets) - set(mine)))
        if not mine:
            return None
        try:
            await self.consumer.commit(mine)
        except KafkaError as exc:
            # The batch will be consumed again (here or by the partition's next owner). Its sensors'
            # state already includes it: `_drain` drops that state, or the redelivered readings would be
            # rejected as duplicates instead of scored again.
            self.stats.commit_failures += 1
            return Unfinished(set(mine), error_text(exc), rewind=False,
                              reason=" (group rebalanced)" if isinstance(exc, CommitFailedError) else "")
        self.stats.commits += 1
        self.monitor.broker_contact()
        return None

    async def _transact(self, batch: Scored) -> Unfinished | None:
        """exactly_once: outputs, changelog records and the consumed offsets in one transaction.

        On a failure the transaction is aborted (read_committed readers never see its outputs) and
        `_drain` rewinds the batch's partitions to their committed state (`_rewind`): the batch is
        consumed and scored again.
        """
        assert self.consumer is not None
        cfg = self.config
        assigned = self.consumer.assignment()
        mine = {tp: off for tp, off in batch.offsets.items() if tp in assigned}
        started = time.perf_counter()
        try:
            failed = await self.delivery.transact([*batch.outputs, *batch.checkpoint], mine)
        except ProducerFenced as exc:
            log.error("this instance was fenced by another with transactional id %s: %s; stopping",
                      cfg.transactional_id_or_default, error_text(exc))
            raise
        if failed is None:
            self.monitor.broker_contact()
            if batch.checkpoint:
                self.checkpoints.count(batch.checkpoint_records, batch.checkpoint_bytes, started)
            return None
        return Unfinished(set(batch.offsets), error_text(failed), rewind=True)

    async def _rewind(self, tps: set[TopicPartition], error: str) -> None:
        """After a failed transaction: these partitions' state back to the changelog's, positions to the committed
        offsets, so their uncommitted batches are consumed and scored again."""
        assert self.consumer is not None
        cfg = self.config
        dropped = self.ownership.drop(tps, self.engine)
        log.warning("transaction failed: %s; aborted, the batch will be consumed again (dropped the state of %d "
                    "sensor(s), restoring them from the changelog)", error, dropped)
        mine = tps & self.consumer.assignment()
        if cfg.checkpoints_enabled and mine:
            await self.checkpoints.restore(self.consumer, self.engine, mine)
        for tp in mine:
            committed = await self.consumer.committed(tp)
            if committed is None:
                if cfg.auto_offset_reset == "earliest":
                    await self.consumer.seek_to_beginning(tp)
                else:
                    await self.consumer.seek_to_end(tp)
            else:
                self.consumer.seek(tp, committed)
        await asyncio.sleep(cfg.retry_initial_seconds)

    # --- rebalances -----------------------------------------------------------------
    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Before a rebalance: wait until the batches in flight are produced and committed."""
        async with self._lock:  # a batch being scored is handed over first
            await self._drain()
            self.monitor.assign(None)
            log.info("rebalance: partitions %s revoked (in-flight batches committed)", partitions_text(revoked))

    async def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        """After a rebalance: keep the state of sensors on partitions still ours, drop the rest.

        With the eager protocol every rebalance revokes all partitions and hands most of them
        back; dropping only what moved elsewhere keeps the warm state of the partitions we keep.
        """
        async with self._lock:
            dropped = self.ownership.reassign(assigned, self.engine)
            if self.config.checkpoints_enabled:
                new = set(assigned) - self.ownership.held
                if new:
                    await self.checkpoints.restore(self.consumer, self.engine, new)
            self.ownership.held = set(assigned)
            if self.weights is not None:
                self.weights.assigned(set(assigned))
            self.stats.rebalances += 1
            self.monitor.assign(assigned)  # and measure the lag of the new partitions now
            log.info("assigned partitions: %s; dropped the state of %d sensor(s) on partitions now elsewhere",
                     partitions_text(assigned), dropped, extra={"partitions": len(assigned), "dropped_sensors": dropped})

    # --- helpers --------------------------------------------------------------------
    async def _sleep_unless_stopped(self, seconds: float, raise_on_stop: bool = True) -> None:
        try:
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)
        except TimeoutError:
            return
        if raise_on_stop:
            raise StopRequested

    def _sensors(self) -> int:
        return len(self.engine.pool) if self.engine is not None else 0

    def _maybe_report(self, every: float = 60.0) -> None:
        now = time.monotonic()
        if now - self._last_report >= every:
            self._last_report = now
            sensors = self._sensors()
            log.info("progress: %s", self.stats.report_line(sensors), extra=self.stats.report_fields(sensors))
