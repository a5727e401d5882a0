"""Prometheus metrics and the HTTP endpoints of `hiddenstate serve`: `/metrics`, `/healthz`, `/readyz`.

Every metric is listed, with its type, labels and meaning, in docs/metrics.md. Rules:

- Prometheus naming, base units (seconds, bytes), `_total` for counters, prefix `hiddenstate_`;
- **never a label per sensor**: labels are bounded sets (reason, kind, topic/partition);
- counts the engine already keeps (`engine.stats`, `engine.pool`) and the service's `ServiceStats`
  are read at scrape time by a custom collector, not counted twice; only the histograms, which
  need each observation, are recorded as the service goes.

Each `ServiceMetrics` has its own `CollectorRegistry` (not the process-global one), so several
services can live in one process (tests do that).

The endpoints are served by the standard library's threaded WSGI server in a daemon thread
(prometheus-client serves `/metrics` the same way), not on the event loop: `/healthz` then still
answers, with the reason, when the event loop or the processing loop is stuck. Any other path is 404.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import math
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import numpy as np
import orjson
from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    Info,
    PlatformCollector,
    ProcessCollector,
    make_wsgi_app,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from consumers.decode import DeadLetterReason
from detector.readings.reasons import READING_REASONS

if TYPE_CHECKING:
    from detector.engine import EngineStats
    from detector.state.pool import StatePool

log = logging.getLogger("hiddenstate.serve")

PREFIX = "hiddenstate_"

# poll -> all outputs acknowledged, per batch
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# wall clock at acknowledgement - the reading's own timestamp, per scored reading
EVENT_LAG_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
                     7200.0, 21_600.0, 86_400.0)
BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 25_000, 50_000, 100_000)
STEP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

# Checks behind /healthz and /readyz: name -> (ok, detail).
Checks = dict[str, tuple[bool, str]]


@dataclass
class ServiceStats:
    """Counts since start, for logs, tests and metrics (read at scrape time, see `ServiceSnapshot`)."""

    consumed: int = 0  # readings: one per message, or each reading of a batched message
    messages: int = 0
    scored: int = 0
    score_messages: int = 0  # score records produced: one per reading, or per message and sensor
    dead_lettered: dict[str, int] = field(default_factory=dict)
    alerts: int = 0
    batches: int = 0
    commits: int = 0
    commit_failures: int = 0
    produce_retries: int = 0
    dropped_sensors: int = 0
    connect_attempts: int = 0
    rebalances: int = 0

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    def report_line(self, sensors: int) -> str:
        """The progress line of the logs (`sensors`: how many the engine holds)."""
        dead = sum(self.dead_lettered.values())
        return (f"consumed={self.consumed} scored={self.scored} dead_lettered={dead} alerts={self.alerts} "
                f"batches={self.batches} commits={self.commits} sensors={sensors}")

    def report_fields(self, sensors: int) -> dict[str, object]:
        """The counts of the progress line as extra fields of a structured log record."""
        fields = self.as_dict()
        fields["dead_lettered"] = sum(self.dead_lettered.values())
        fields["sensors"] = sensors
        return fields


@dataclass(frozen=True, slots=True)
class ServiceSnapshot:
    """What the scrape-time collector reads of a service, handed over by the service at each scrape."""

    stats: ServiceStats
    engine: EngineStats | None  # None until the engine exists (channel count learnt from the first reading)
    pool: StatePool | None
    capacity: int  # detector.capacity: the pool's, before there is one
    assigned: frozenset | None  # input partitions assigned to this member (None: no assignment)
    lag: dict[tuple[str, int], int]  # (topic, partition) -> high watermark - position, as of the last probe
    last_broker_contact: float | None  # unix time of the last successful broker round trip
    ready: bool
    last_poll: float | None  # unix time of the processing loop's last poll (None: not running)
    weights_version: int = 0  # `Engine.weights_version`: 0 for the loaded model's weights


class ArrayHistogram(Collector):
    """A histogram that also takes a whole array of observations at once (numpy), for per-reading values.

    `prometheus_client.Histogram.observe` costs a lock and a Python call per value; the event-time
    lag is observed for every scored reading, so it is binned with numpy here instead. The per-batch
    histograms use the same class (`observe`), so every histogram is exposed alike (no `_created`).
    """

    def __init__(self, name: str, documentation: str, buckets: Iterable[float], registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self._bounds = np.array(sorted(float(b) for b in buckets), dtype=np.float64)
        self._bound_list = self._bounds.tolist()
        self._counts = np.zeros(len(self._bounds) + 1, dtype=np.int64)  # last: above every bound (+Inf)
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe(self, value: float) -> None:
        if math.isnan(value):
            return
        i = bisect.bisect_left(self._bound_list, value)
        with self._lock:
            self._counts[i] += 1
            self._sum += value

    def observe_many(self, values: np.ndarray | Iterable[float]) -> None:
        v = np.asarray(values, dtype=np.float64).ravel()
        v = v[~np.isnan(v)]
        if v.size == 0:
            return
        # bucket i holds values <= bound i (Prometheus' `le`)
        counts = np.bincount(np.searchsorted(self._bounds, v, side="left"), minlength=len(self._counts))
        total = float(v.sum())
        with self._lock:
            self._counts += counts
            self._sum += total

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.name, self.documentation)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            cumulative = np.cumsum(self._counts)
            total = self._sum
        buckets = [(floatToGoString(b), int(c)) for b, c in zip(self._bounds, cumulative[:-1])]
        buckets.append(("+Inf", int(cumulative[-1])))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=total)


class ServiceMetrics:
    """The registry of one ScoringService: scrape-time collectors plus the histograms it records."""

    def __init__(self, snapshot: Callable[[], ServiceSnapshot], version: str, model_id: str) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        ProcessCollector(registry=reg)
        PlatformCollector(registry=reg)
        GCCollector(registry=reg)
        Info(PREFIX + "build", "Version of hiddenstate and id of the model being served (value 1).",
             registry=reg).info({"version": version, "model": model_id})
        self.processing_latency = ArrayHistogram(
            PREFIX + "processing_latency_seconds",
            "Time from the poll that returned a batch until all of its outputs were acknowledged.",
            LATENCY_BUCKETS, reg,
        )
        self.batch_messages = ArrayHistogram(
            PREFIX + "batch_messages", "Messages per micro-batch.", BATCH_BUCKETS, reg,
        )
        self.engine_step = ArrayHistogram(
            PREFIX + "engine_step_seconds", "Duration of one Engine.step (one micro-batch, all sensors).",
            STEP_BUCKETS, reg,
        )
        self.event_lag = ArrayHistogram(
            PREFIX + "event_lag_seconds",
            "Wall-clock time at acknowledgement minus the reading's own timestamp, per scored reading.",
            EVENT_LAG_BUCKETS, reg,
        )
        reg.register(_ServiceCollector(snapshot))

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, doc, value=value)


class _ServiceCollector(Collector):
    """Reads the service's, the engine's and the pool's counts at scrape time (from the HTTP thread).

    Only plain reads of ints/floats and C-level dict copies: safe while the loop and the engine's
    worker thread update them.
    """

    def __init__(self, snapshot: Callable[[], ServiceSnapshot]) -> None:
        self.snapshot = snapshot

    def describe(self) -> Iterator[Metric]:
        return iter(())  # names are checked by the tests against docs/metrics.md, not at registration

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot()
        st = s.stats
        es = s.engine

        yield _counter("readings_consumed", "Readings read from the input topics (valid or not; each of a batch).",
                       st.consumed)
        yield _counter("readings_scored", "Readings scored by the engine.", es.scored if es else 0)
        yield _counter("readings_anomalous", "Scored readings above the threshold (after warm-up).",
                       es.anomalous if es else 0)
        rejected = CounterMetricFamily(PREFIX + "readings_rejected",
                                       "Readings the engine rejected (not scored), by reason.", labels=["reason"])
        by_reason = dict(es.rejected) if es else {}
        for reason in READING_REASONS:
            rejected.add_metric([reason.label], by_reason.get(reason, 0))
        yield rejected
        dead = CounterMetricFamily(PREFIX + "dead_letters",
                                   "Messages (or readings of a batch) sent to the dead-letter topic, by reason.",
                                   labels=["reason"])
        dead_counts = dict(st.dead_lettered)
        for reason in DeadLetterReason:
            dead.add_metric([reason.value], dead_counts.get(reason.value, 0))
        yield dead
        yield _counter("alerts_raised", "Alert episodes raised.", es.alerts_raised if es else 0)
        yield _counter("alerts_cleared", "Alert episodes cleared.", es.alerts_cleared if es else 0)
        yield _counter("gap_resets", "Hidden states reset because a sensor was silent longer than max_gap.",
                       es.gap_resets if es else 0)
        yield _counter("network_seconds", "Time spent in the network's forward step (the whole fused step on the"
                       " fast path for small batches).",
                       es.network_seconds if es else 0.0)

        # state pool
        pool = s.pool
        capacity = pool.capacity if pool is not None else s.capacity
        yield _gauge("state_pool_sensors", "Sensors whose state is held now.", len(pool) if pool is not None else 0)
        yield _gauge("state_pool_capacity_sensors", "Most sensors the pool holds (detector.capacity).", capacity)
        allocated = pool.allocated if pool is not None else 0
        yield _gauge("state_pool_allocated_sensors", "Slots allocated (held + free); grows by doubling.", allocated)
        yield _gauge("state_pool_bytes", "Bytes of per-sensor state allocated (slots x bytes per slot).",
                     allocated * pool.bytes_per_sensor if pool is not None else 0)
        evictions = CounterMetricFamily(PREFIX + "state_pool_evictions",
                                        "Sensors whose state was evicted, by kind (idle TTL or capacity).",
                                        labels=["kind"])
        evictions.add_metric(["idle"], pool.stats.evicted_idle if pool is not None else 0)
        evictions.add_metric(["capacity"], pool.stats.evicted_capacity if pool is not None else 0)
        yield evictions
        yield _counter("state_pool_grows", "Times the pool's arrays were grown.",
                       pool.stats.grown if pool is not None else 0)
        yield _counter("sensors_dropped", "Sensor states dropped because their partition moved to another member.",
                       st.dropped_sensors)

        # Kafka
        yield _counter("batches", "Micro-batches processed (scored, produced, committed or not).", st.batches)
        yield _counter("commits", "Successful offset commits.", st.commits)
        yield _counter("commit_failures", "Offset commits that failed (the batch is consumed again).",
                       st.commit_failures)
        yield _counter("produce_failures", "Outputs the broker did not acknowledge (each is sent again).",
                       st.produce_retries)
        yield _counter("connect_attempts", "Attempts to connect to the broker at start.", st.connect_attempts)
        yield _counter("rebalances", "Partition assignments received from the group coordinator.", st.rebalances)
        assigned = s.assigned
        yield _gauge("assigned_partitions", "Input partitions assigned to this member.",
                     len(assigned) if assigned is not None else 0)
        lag = GaugeMetricFamily(PREFIX + "consumer_lag_messages",
                                "High watermark minus the consumer's position, per assigned input partition.",
                                labels=["topic", "partition"])
        for (topic, partition), value in sorted(s.lag.items()):
            lag.add_metric([topic, str(partition)], value)
        yield lag
        probe = s.last_broker_contact
        if probe is not None:
            yield _gauge("broker_last_contact_timestamp_seconds",
                         "Unix time of the last successful round trip to the broker.", probe)

        # liveness and readiness, as numbers
        yield _gauge("ready", "1 if /readyz answers 200 (partitions assigned, broker reachable), else 0.",
                     1 if s.ready else 0)
        yield _gauge("weights_version", "Version of the weights scoring (0: the loaded model's; learning = online "
                     "adopts the group's learnt versions).", s.weights_version)
        beat = s.last_poll
        if beat is not None:
            yield _gauge("last_poll_timestamp_seconds",
                         "Unix time of the processing loop's last iteration (poll).", beat)


# --- HTTP ----------------------------------------------------------------------------------


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _ThreadingServer6(_ThreadingServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr (Prometheus and probes call every few seconds)."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


class HttpEndpoints:
    """`/metrics`, `/healthz` and `/readyz` on `address:port`, served from a daemon thread."""

    def __init__(self, registry: CollectorRegistry, health: Callable[[], tuple[bool, Checks]],
                 readiness: Callable[[], tuple[bool, Checks]]) -> None:
        self._metrics_app = make_wsgi_app(registry)
        self._probes = {"/healthz": health, "/readyz": readiness}
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int | None:
        return self._server.server_port if self._server is not None else None

    def start(self, address: str, port: int) -> int:
        """Bind and serve; returns the port (useful with port 0). Raises OSError if it cannot bind."""
        infos = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        server_class = _ThreadingServer6 if infos[0][0] == socket.AF_INET6 else _ThreadingServer
        self._server = make_server(address, port, self._app, server_class=server_class, handler_class=_QuietHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="hiddenstate-http", daemon=True)
        self._thread.start()
        return self._server.server_port

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _app(self, environ: dict[str, Any], start_response: Callable) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        if path == "/metrics":
            return self._metrics_app(environ, start_response)
        probe = self._probes.get(path)
        if probe is None:
            return _plain(start_response, "404 Not Found", b"not found: try /metrics, /healthz or /readyz\n")
        if method not in ("GET", "HEAD"):
            return _plain(start_response, "405 Method Not Allowed", b"GET only\n", [("Allow", "GET, HEAD")])
        try:
            ok, checks = probe()
        except Exception as exc:  # noqa: BLE001 - a probe must answer, not drop the connection
            ok, checks = False, {"probe": (False, f"{type(exc).__name__}: {exc}")}
        body = orjson.dumps({
            "status": "ok" if ok else "fail",
            "checks": {name: {"ok": good, "detail": detail} for name, (good, detail) in checks.items()},
        }, option=orjson.OPT_APPEND_NEWLINE)
        start_response("200 OK" if ok else "503 Service Unavailable",
                       [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                        ("Cache-Control", "no-store")])
        return [b"" if method == "HEAD" else body]


def open_endpoints(registry: CollectorRegistry, health: Callable[[], tuple[bool, Checks]],
                   readiness: Callable[[], tuple[bool, Checks]], address: str, port: int) -> HttpEndpoints:
    """Serve `/metrics`, `/healthz` and `/readyz` on `address:port`; raises OSError, saying where, if it cannot."""
    http = HttpEndpoints(registry, health, readiness)
    try:
        bound = http.start(address, port)
    except OSError as exc:
        raise OSError(f"cannot serve metrics on {address}:{port}: {exc}") from exc
    log.info("metrics, health and readiness on http://%s:%d (/metrics, /healthz, /readyz)",
             address, bound, extra={"metrics_address": address, "metrics_port": bound})
    return http


def _plain(start_response: Callable, status: str, body: bytes,
           headers: list[tuple[str, str]] | None = None) -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))),
                            *(headers or [])])
    return [body]
