"""Metrics, endpoints and logs of `hiddenstate serve` without a broker: collectors, histograms, HTTP, JSON logs."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from consumers.config import ServiceConfig, load_service_config
from consumers.logs import configure_logging
from consumers.metrics import ArrayHistogram, HttpEndpoints
from consumers.errors import StopRequested
from consumers.service import ScoringService
from detector.version import __version__
from detector.config import DetectorConfig
from detector.model.store import untrained

ROOT = Path(__file__).resolve().parent.parent
DETECTOR = DetectorConfig(channels=1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(**kw) -> ServiceConfig:
    base = dict(bootstrap_servers=f"127.0.0.1:{_free_port()}", metrics_address="127.0.0.1", metrics_port=0,
                retry_initial_seconds=5, detector=DETECTOR)
    return ServiceConfig(**{**base, **kw})


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of a text exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def get(url: str, method: str = "GET") -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


@pytest.fixture(scope="module")
def model():
    return untrained(8, 1, seed=1)


# --- histograms ------------------------------------------------------------------------------


def test_array_histogram_matches_prometheus_histogram():
    """The numpy histogram exposes the same buckets, count and sum as prometheus_client's, observed one by one."""
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.exponential(20.0, 5000), [0.0, 0.1, 1.0, 86_400.0, 1e9, float("nan")]])
    buckets = (0.1, 0.5, 1.0, 10.0, 60.0, 3600.0, 86_400.0)
    ours, ref = CollectorRegistry(), CollectorRegistry()
    hist = ArrayHistogram("x_seconds", "doc", buckets, ours)
    for chunk in np.array_split(values, 7)[:-1]:
        hist.observe_many(chunk)
    hist.observe_many([])
    for v in np.array_split(values, 7)[-1].tolist():  # one by one: the same buckets
        hist.observe(v)
    expected = Histogram("x_seconds", "doc", buckets=buckets, registry=ref)
    for v in values[~np.isnan(values)]:
        expected.observe(v)
    got = {k: v for k, v in samples(generate_latest(ours).decode()).items() if not k[0].endswith("_created")}
    want = {k: v for k, v in samples(generate_latest(ref).decode()).items() if not k[0].endswith("_created")}
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-9), key


# --- collectors ------------------------------------------------------------------------------


def test_counts_come_from_the_engine_pool_and_service_at_scrape_time(model):
    service = ScoringService(_config(), model)
    engine = service.engine
    ts = 1_700_000_000.0 + np.arange(40, dtype=np.float64)
    ids = [f"s{i % 4}" for i in range(40)]
    values = np.sin(np.arange(40, dtype=np.float64))[:, None]
    values[5, 0] = np.nan  # not_finite
    ids[7] = ""  # bad_sensor_id
    engine.step(ids, np.repeat(ts[:10], 4)[:40], values)
    service.stats.consumed = 123
    service.stats.dead_lettered = {"malformed_json": 2, "not_finite": 1}
    service.stats.commit_failures = 3
    got = samples(service.metrics.exposition().decode())

    def value(name, **labels):
        return got[(name, tuple(sorted(labels.items())))]

    st = engine.stats
    assert value("hiddenstate_readings_consumed_total") == 123
    assert value("hiddenstate_readings_scored_total") == st.scored > 0
    for reason, n in st.rejected.items():
        assert value("hiddenstate_readings_rejected_total", reason=reason.label) == n
    assert value("hiddenstate_readings_rejected_total", reason="not_finite") >= 1
    assert value("hiddenstate_readings_rejected_total", reason="bad_sensor_id") == 1
    assert value("hiddenstate_dead_letters_total", reason="malformed_json") == 2
    assert value("hiddenstate_dead_letters_total", reason="too_large") == 0  # every reason exists from the start
    assert value("hiddenstate_commit_failures_total") == 3
    assert value("hiddenstate_state_pool_sensors") == len(engine.pool) == 4  # s0..s3; "" was rejected
    assert value("hiddenstate_state_pool_allocated_sensors") == engine.pool.allocated
    assert value("hiddenstate_state_pool_bytes") == engine.pool.allocated * engine.pool.bytes_per_sensor
    assert value("hiddenstate_state_pool_capacity_sensors") == engine.pool.capacity
    assert value("hiddenstate_state_pool_evictions_total", kind="idle") == engine.pool.stats.evicted_idle
    assert value("hiddenstate_network_seconds_total") == pytest.approx(st.network_seconds)
    assert value("hiddenstate_build_info", version=__version__, model=model.model_id) == 1
    assert value("hiddenstate_ready") == 0 and value("hiddenstate_assigned_partitions") == 0
    # labels are bounded sets: never a sensor id
    assert all(set(dict(labels)) <= {"reason", "kind", "topic", "partition", "version", "model", "le",
                                     "implementation", "major", "minor", "patchlevel", "generation"}
               for _, labels in got)


def test_services_do_not_share_a_registry(model):
    a, b = ScoringService(_config(), model), ScoringService(_config(), model)
    a.stats.consumed = 5
    assert a.metrics.registry is not b.metrics.registry
    assert samples(b.metrics.exposition().decode())[("hiddenstate_readings_consumed_total", ())] == 0


# --- endpoints -------------------------------------------------------------------------------


def test_endpoints_answer_and_nothing_else(model):
    """While start() waits for an unreachable broker: /metrics 200, /healthz 200, /readyz 503, the rest 404."""

    async def scenario():
        service = ScoringService(_config(), model)
        starting = asyncio.create_task(service.start())
        for _ in range(50):
            if service.http_port:
                break
            await asyncio.sleep(0.05)
        base = f"http://127.0.0.1:{service.http_port}"
        results = {path: await asyncio.to_thread(get, base + path)
                   for path in ("/metrics", "/healthz", "/readyz", "/", "/metrics/x", "/debug", "/healthz/")}
        results["POST /readyz"] = await asyncio.to_thread(get, base + "/readyz", "POST")
        results["HEAD /healthz"] = await asyncio.to_thread(get, base + "/healthz", "HEAD")
        service.request_stop()
        with pytest.raises(StopRequested):
            await asyncio.wait_for(starting, 10)
        closed = service.http_port is None
        return base, results, closed

    base, results, closed = asyncio.run(scenario())
    status, body, headers = results["/metrics"]
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert b"hiddenstate_readings_consumed_total" in body
    status, body, _ = results["/healthz"]
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, body, _ = results["/readyz"]
    doc = json.loads(body)
    assert status == 503 and doc["status"] == "fail"
    assert doc["checks"]["partitions"]["ok"] is False and doc["checks"]["broker"]["ok"] is False
    for path in ("/", "/metrics/x", "/debug", "/healthz/"):
        assert results[path][0] == 404, path
    assert results["POST /readyz"][0] == 405
    assert results["HEAD /healthz"][0] == 200 and results["HEAD /healthz"][1] == b""
    # the endpoints went away with the failed start
    assert closed
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(base + "/healthz", timeout=2)


def test_endpoints_listen_only_on_the_configured_address(model):
    """metrics_address is honoured: bound to 127.0.0.2, the port answers there and refuses on 127.0.0.1."""

    async def scenario():
        service = ScoringService(_config(metrics_address="127.0.0.2"), model)
        starting = asyncio.create_task(service.start())
        for _ in range(50):
            if service.http_port:
                break
            await asyncio.sleep(0.05)
        port = service.http_port
        there = await asyncio.to_thread(get, f"http://127.0.0.2:{port}/healthz")
        with socket.socket() as probe:
            elsewhere = probe.connect_ex(("127.0.0.1", port))
        service.request_stop()
        with pytest.raises(StopRequested):
            await asyncio.wait_for(starting, 10)
        return there, elsewhere

    there, elsewhere = asyncio.run(scenario())
    assert there[0] == 200
    assert elsewhere != 0  # connection refused: nothing listens on the other address


def test_health_fails_when_a_loop_is_stale(model):
    service = ScoringService(_config(health_stall_seconds=2.0), model)
    assert service.health()[0]  # nothing started: nothing stale
    now = time.monotonic()
    service.monitor.tick = now
    service.monitor.running, service.monitor.beat = True, now - 5
    ok, checks = service.health()
    assert not ok and not checks["processing_loop"][0] and checks["event_loop"][0]
    assert "limit 2s" in checks["processing_loop"][1]
    service.monitor.beat = now
    assert service.health()[0]
    service.monitor.tick = now - 10
    ok, checks = service.health()
    assert not ok and not checks["event_loop"][0]


def test_endpoint_that_raises_answers_503():
    def broken():
        raise RuntimeError("boom")

    http = HttpEndpoints(CollectorRegistry(), broken, lambda: (True, {}))
    port = http.start("127.0.0.1", 0)
    try:
        status, body, _ = get(f"http://127.0.0.1:{port}/healthz")
        assert status == 503 and b"boom" in body
        assert get(f"http://127.0.0.1:{port}/readyz")[0] == 200
    finally:
        http.stop()


def test_port_in_use_is_an_error(model):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        async def scenario():
            service = ScoringService(_config(metrics_port=port), model)
            with pytest.raises(OSError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
                await service.start()

        asyncio.run(scenario())


def test_metrics_can_be_switched_off(model):
    async def scenario():
        service = ScoringService(_config(metrics_enabled=False), model)
        starting = asyncio.create_task(service.start())
        await asyncio.sleep(0.3)
        port = service.http_port
        service.request_stop()
        with pytest.raises(StopRequested):
            await starting
        return port

    assert asyncio.run(scenario()) is None


def test_config_fields_and_validation():
    cfg = ServiceConfig()
    assert (cfg.metrics_enabled, cfg.metrics_address, cfg.metrics_port) == (True, "0.0.0.0", 9108)
    assert cfg.health_stall_seconds == 60 and cfg.broker_probe_seconds < cfg.broker_stale_seconds
    assert "metrics=0.0.0.0:9108" in cfg.summary()
    with pytest.raises(ValueError, match="broker_probe_seconds"):
        ServiceConfig(broker_probe_seconds=10, broker_stale_seconds=5)
    with pytest.raises(ValueError):
        ServiceConfig(metrics_port=70_000)
    os.environ["HIDDENSTATE_METRICS_PORT"] = "9200"
    try:
        assert load_service_config().metrics_port == 9200
    finally:
        del os.environ["HIDDENSTATE_METRICS_PORT"]


# --- logs ------------------------------------------------------------------------------------


SECRET = "s3cr3t-pa55word-\"quoted\"-7f2c"


def test_json_logs_one_object_per_line_with_extra_fields_and_no_secret():
    stream = io.StringIO()
    handler = configure_logging("INFO", "json", secrets=[SECRET], stream=stream)
    try:
        log = logging.getLogger("hiddenstate.serve")
        log.info("assigned %d partitions", 4, extra={"partitions": 4, "topics": ["a", "b"]})
        log.debug("not shown at INFO")
        log.warning("connect failed with password %s", SECRET, extra={"sasl_password": SECRET})
        try:
            raise RuntimeError(f"auth failed for {SECRET}")
        except RuntimeError:
            log.exception("multi\nline")
        logging.getLogger("aiokafka").info("aiokafka chatter below WARNING is dropped")
    finally:
        logging.getLogger().removeHandler(handler)
    text = stream.getvalue()
    assert SECRET not in text and json.dumps(SECRET)[1:-1] not in text
    lines = text.splitlines()
    assert len(lines) == 3
    docs = [json.loads(line) for line in lines]
    for doc in docs:
        assert {"ts", "level", "logger", "message"} <= set(doc)
        assert doc["ts"].endswith("Z") and doc["logger"] == "hiddenstate.serve"
    assert docs[0]["message"] == "assigned 4 partitions" and docs[0]["partitions"] == 4
    assert docs[0]["topics"] == ["a", "b"] and docs[0]["level"] == "INFO"
    assert docs[1]["level"] == "WARNING" and "***" in docs[1]["message"] and docs[1]["sasl_password"] == "***"
    assert docs[2]["level"] == "ERROR" and "RuntimeError" in docs[2]["exc"] and "***" in docs[2]["exc"]


def test_text_logs_mask_secrets_too():
    stream = io.StringIO()
    handler = configure_logging("DEBUG", "text", secrets=[SECRET], stream=stream)
    try:
        logging.getLogger("hiddenstate.serve").debug("password=%s", SECRET)
    finally:
        logging.getLogger().removeHandler(handler)
    assert SECRET not in stream.getvalue() and "password=***" in stream.getvalue()


def test_serve_command_logs_json_and_never_the_password(tmp_path):
    """`serve --log-format json --log-level DEBUG` with SASL settings and an unreachable broker: exit 2,
    every line JSON, the password nowhere (aiokafka's debug logs included)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIDDENSTATE_")}
    env.update(HIDDENSTATE_SECURITY_PROTOCOL="SASL_PLAINTEXT", HIDDENSTATE_SASL_MECHANISM="PLAIN",
               HIDDENSTATE_SASL_USERNAME="hs-user", HIDDENSTATE_SASL_PASSWORD=SECRET,
               HIDDENSTATE_RETRY_INITIAL_SECONDS="0.2", HIDDENSTATE_RETRY_MAX_SECONDS="0.4")
    cmd = [sys.executable, "-m", "consumers.commands.serve", "--bootstrap", f"127.0.0.1:{_free_port()}",
           "--start-timeout", "2", "--log-format", "json", "--log-level", "DEBUG", "--model", "gru-default",
           "--metrics-address", "127.0.0.1", "--metrics-port", "0"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert SECRET not in proc.stderr and SECRET not in proc.stdout
    docs = [json.loads(line) for line in proc.stderr.splitlines() if line.strip()]
    assert docs and all({"ts", "level", "logger", "message"} <= set(d) for d in docs)
    messages = [d["message"] for d in docs]
    assert any(m.startswith("starting:") and "user=hs-user" in m for m in messages)
    assert any("metrics, health and readiness on http://127.0.0.1:" in m for m in messages)
    assert any(d["level"] == "WARNING" and "cannot reach Kafka" in d["message"] for d in docs)
    assert any(d["level"] == "ERROR" and "giving up" in d["message"] for d in docs)


def test_invalid_log_format_from_the_environment_is_a_config_error():
    from consumers.commands.serve import main

    os.environ["HIDDENSTATE_LOG_FORMAT"] = "xml"
    try:
        assert main(["--bootstrap", "127.0.0.1:1"]) == 2
    finally:
        del os.environ["HIDDENSTATE_LOG_FORMAT"]
