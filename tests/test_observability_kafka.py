"""Metrics, health and readiness of `hiddenstate serve` against the real local broker, scraped over HTTP,
and a real Prometheus server (Debian's package) scraping the service during an end-to-end run.

The broker comes from tests/kafka_broker.py. The Prometheus test is skipped when the `prometheus`
binary is absent, unless HIDDENSTATE_REQUIRE_PROMETHEUS=1 (set by .ci/run after installing it).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from consumers.decode import Decoder
from consumers.service import ScoringService
from detector.engine import Engine
from tests.kafka_broker import (  # noqa: F401 - kafka_bootstrap is a fixture
    create_topics,
    end_offsets,
    kafka_bootstrap,
    produce,
    unique_name,
    wait_committed,
)
from tests.test_observability_rules import (
    RULES,
    exported_sample_names,
    prometheus_binary,
    referenced_metrics,
)
from tests.test_serve_kafka import (  # noqa: F401 - model and model_dir are fixtures
    BAD,
    DETECTOR,
    fleet,
    model,
    model_dir,
    new_topics,
    service_config,
    stream_with_bad_messages,
)

ROOT = Path(__file__).resolve().parent.parent


# --- helpers ---------------------------------------------------------------------------------


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def aget(url: str) -> tuple[int, bytes]:
    return await asyncio.to_thread(http_get, url)


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def by_label(scraped: dict, name: str, label: str) -> dict[str, float]:
    return {dict(labels)[label]: v for (n, labels), v in scraped.items() if n == name}


def value(scraped: dict, name: str, **labels) -> float:
    return scraped[(name, tuple(sorted(labels.items())))]


async def until(predicate, timeout: float, what: str, interval: float = 0.2):
    """Await `predicate()` (sync or async) until it returns something truthy; returns it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last = None
    while loop.time() < deadline:
        last = predicate()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    raise TimeoutError(f"{what}: still {last!r} after {timeout}s")


def expected_counts(model, messages):
    """What the metrics must say about the stream, from the engine run offline (same engine, no Kafka)."""
    decoder = Decoder(DETECTOR.channels)
    decoded = decoder.decode(messages)
    engine = Engine(model.network, DETECTOR, 1)
    rows = decoded.engine_rows
    result = engine.step([decoded.sensor_ids[i] for i in rows], decoded.ts[rows], decoded.values[rows],
                         decoded.status[rows])
    kinds = collections.Counter(e.kind.value for e in result.events)
    return {
        "consumed": len(messages),
        "scored": engine.stats.scored,
        "rejected": {r.label: n for r, n in engine.stats.rejected.items()},
        "dead": collections.Counter(reason for _, _, reason in BAD),
        "raised": kinds["raise"],
        "cleared": kinds["clear"],
        "sensors": len(engine.pool),
    }


def gate_engine(service: ScoringService) -> threading.Event:
    """Make the service's engine step wait until the returned event is set (a stuck batch, on demand)."""
    gate = threading.Event()
    step = service.engine.step

    def gated(*args, **kwargs):
        gate.wait(120)
        return step(*args, **kwargs)

    service.engine.step = gated
    return gate


# --- the service, scraped directly -------------------------------------------------------------


@pytest.fixture(scope="module")
def observed(kafka_bootstrap, model):
    """One end-to-end run (valid readings, every kind of bad message, one alert episode), observed
    through /metrics, /healthz and /readyz before, during and after."""
    messages = stream_with_bad_messages()

    async def scenario():
        topics = await new_topics(kafka_bootstrap)
        await produce(kafka_bootstrap, topics["in"], messages)
        ends = await end_offsets(kafka_bootstrap, topics["in"])
        group = unique_name("g")
        cfg = service_config(kafka_bootstrap, topics, group, max_batch=200, broker_probe_seconds=0.3,
                             broker_stale_seconds=10)
        service = ScoringService(cfg, model)
        seen: dict[str, object] = {}
        await service.start()
        base = f"http://127.0.0.1:{service.http_port}"
        seen["readyz_before"] = await aget(base + "/readyz")
        seen["healthz_before"] = await aget(base + "/healthz")
        task = asyncio.create_task(service.run())
        seen["readyz_after"] = await until(lambda: _ok(aget(base + "/readyz")), 60, "/readyz 200 after assignment")
        await wait_committed(kafka_bootstrap, group, topics["in"], ends, timeout=120)

        async def caught_up():
            text = (await aget(base + "/metrics"))[1].decode()
            lag = by_label(parse(text), "hiddenstate_consumer_lag_messages", "partition")
            return text if len(lag) == 4 and not any(lag.values()) else None

        seen["metrics"] = await until(caught_up, 30, "lag back to 0 on all 4 partitions")
        seen["healthz_after"] = await aget(base + "/healthz")
        seen["scraped_at"] = time.time()
        service.request_stop()
        await asyncio.wait_for(task, 20)
        seen["readyz_stopping"] = await aget(base + "/readyz")
        await service.close()
        try:
            seen["after_close"] = await aget(base + "/healthz")
        except urllib.error.URLError as exc:
            seen["after_close"] = exc
        seen["stats"] = service.stats
        return seen

    seen = asyncio.run(scenario())
    seen["expected"] = expected_counts(model, messages)
    return seen


async def _ok(request) -> tuple[int, bytes] | None:
    status, body = await request
    return (status, body) if status == 200 else None


def test_counters_match_what_was_produced(observed):
    m = parse(observed["metrics"])
    want = observed["expected"]
    assert value(m, "hiddenstate_readings_consumed_total") == want["consumed"]
    assert value(m, "hiddenstate_readings_scored_total") == want["scored"] == want["consumed"] - len(BAD)
    assert by_label(m, "hiddenstate_readings_rejected_total", "reason") == want["rejected"]
    dead = by_label(m, "hiddenstate_dead_letters_total", "reason")
    assert {k: v for k, v in dead.items() if v} == dict(want["dead"])
    assert value(m, "hiddenstate_alerts_raised_total") == want["raised"] == 1
    assert value(m, "hiddenstate_alerts_cleared_total") == want["cleared"]
    assert value(m, "hiddenstate_state_pool_sensors") == want["sensors"]
    assert value(m, "hiddenstate_readings_consumed_total") == (
        value(m, "hiddenstate_readings_scored_total") + sum(dead.values()))
    # batches: every one produced, acknowledged, committed
    stats = observed["stats"]
    batches = value(m, "hiddenstate_batches_total")
    assert batches == stats.batches >= want["consumed"] / 200
    assert value(m, "hiddenstate_commits_total") == batches
    assert value(m, "hiddenstate_commit_failures_total") == 0 and value(m, "hiddenstate_produce_failures_total") == 0
    assert value(m, "hiddenstate_processing_latency_seconds_count") == batches
    assert value(m, "hiddenstate_batch_messages_count") == batches
    assert value(m, "hiddenstate_batch_messages_sum") == want["consumed"]
    assert value(m, "hiddenstate_engine_step_seconds_count") == batches
    assert value(m, "hiddenstate_event_lag_seconds_count") == want["scored"]
    # the stream's timestamps are from November 2023: every event-time lag is above a day
    assert value(m, "hiddenstate_event_lag_seconds_bucket", le="86400.0") == 0
    # Kafka: four partitions, all caught up, assigned once
    assert value(m, "hiddenstate_assigned_partitions") == 4
    assert by_label(m, "hiddenstate_consumer_lag_messages", "partition") == {str(p): 0 for p in range(4)}
    assert value(m, "hiddenstate_rebalances_total") >= 1 and value(m, "hiddenstate_connect_attempts_total") == 1
    assert value(m, "hiddenstate_ready") == 1
    assert abs(value(m, "hiddenstate_last_poll_timestamp_seconds") - observed["scraped_at"]) < 10
    assert abs(value(m, "hiddenstate_broker_last_contact_timestamp_seconds") - observed["scraped_at"]) < 10


def test_readyz_is_503_before_assignment_and_200_after(observed):
    status, body = observed["readyz_before"]
    checks = json.loads(body)["checks"]
    assert status == 503 and not checks["partitions"]["ok"] and not checks["running"]["ok"]
    assert checks["broker"]["ok"]  # connected: only the assignment is missing
    status, body = observed["readyz_after"]
    doc = json.loads(body)
    assert status == 200 and doc["status"] == "ok" and doc["checks"]["partitions"]["detail"].startswith("4 assigned")
    status, body = observed["readyz_stopping"]
    assert status == 503 and json.loads(body)["checks"]["running"]["detail"] == "stopping"
    assert observed["healthz_before"][0] == 200 and observed["healthz_after"][0] == 200
    assert isinstance(observed["after_close"], urllib.error.URLError)  # endpoints closed with the service


def test_dashboard_and_rules_use_only_exported_metrics(observed):
    """Every metric named in deploy/grafana/hiddenstate.json and deploy/prometheus/*.yml is in a real scrape."""
    exported = exported_sample_names(observed["metrics"])
    missing = referenced_metrics() - exported
    assert not missing, f"referenced but not exported: {sorted(missing)}"


def test_scrape_passes_promtool_check_metrics(observed):
    promtool = prometheus_binary("promtool")
    proc = subprocess.run([promtool, "check", "metrics"], input=observed["metrics"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), proc.stdout + proc.stderr


def test_healthz_fails_while_the_processing_loop_is_stuck(kafka_bootstrap, model):
    async def scenario():
        topics = await new_topics(kafka_bootstrap, partitions=1)
        group = unique_name("g")
        cfg = service_config(kafka_bootstrap, topics, group, health_stall_seconds=1.0)
        service = ScoringService(cfg, model)
        gate = gate_engine(service)
        seen = {}
        async with service:
            base = f"http://127.0.0.1:{service.http_port}"
            task = asyncio.create_task(service.run())
            await until(lambda: _ok(aget(base + "/readyz")), 60, "ready")
            seen["healthy"] = await aget(base + "/healthz")
            await produce(kafka_bootstrap, topics["in"], fleet(sensors=4, steps=5))

            async def stuck():
                status, body = await aget(base + "/healthz")
                return (status, body) if status == 503 else None

            seen["stuck"] = await until(stuck, 30, "/healthz 503 while the engine step hangs")
            seen["metrics_while_stuck"] = (await aget(base + "/metrics"))[0]
            gate.set()
            seen["recovered"] = await until(lambda: _ok(aget(base + "/healthz")), 30, "/healthz 200 again")
            await wait_committed(kafka_bootstrap, group, topics["in"], {0: 20}, timeout=60)
            service.request_stop()
            await asyncio.wait_for(task, 20)
        return seen

    seen = asyncio.run(scenario())
    assert seen["healthy"][0] == 200
    status, body = seen["stuck"]
    checks = json.loads(body)["checks"]
    assert status == 503 and not checks["processing_loop"]["ok"] and checks["event_loop"]["ok"]
    assert seen["metrics_while_stuck"] == 200  # scrapes still answer: the endpoints have their own thread
    assert seen["recovered"][0] == 200


# --- the command, with JSON logs ----------------------------------------------------------------


def test_serve_command_json_logs_metrics_and_no_secret(kafka_bootstrap, model_dir, tmp_path):
    """`hiddenstate serve --log-format json --metrics-port 0` with a password in the environment: JSON lines,
    the metrics port in the log, no line per reading, the password nowhere."""
    secret = "pw-" + unique_name("never-logged")
    messages = fleet(sensors=24, steps=30)

    async def scenario():
        topics = await new_topics(kafka_bootstrap)
        group = unique_name("g")
        await produce(kafka_bootstrap, topics["in"], messages)
        ends = await end_offsets(kafka_bootstrap, topics["in"])
        env = {k: v for k, v in os.environ.items() if not k.startswith("HIDDENSTATE_")}
        env["HIDDENSTATE_SASL_PASSWORD"] = secret  # unused with PLAINTEXT, but loaded into the config
        cmd = [sys.executable, "-m", "consumers.commands.serve", "--bootstrap", kafka_bootstrap,
               "--input-topic", topics["in"], "--scores-topic", topics["scores"], "--alerts-topic", topics["alerts"],
               "--dead-letter-topic", topics["dlq"], "--group", group, "--model", str(model_dir),
               "--max-batch", "100", "--poll-timeout-ms", "100", "--grace", "15",
               "--metrics-address", "127.0.0.1", "--metrics-port", "0", "--log-format", "json"]
        log_path = tmp_path / "serve.log"
        proc = await asyncio.create_subprocess_exec(*cmd, cwd=ROOT, env=env, stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=log_path.open("wb"))
        try:
            def port():
                for line in log_path.read_text().splitlines():
                    try:
                        doc = json.loads(line)
                    except ValueError:  # a line being written
                        continue
                    if "metrics_port" in doc:
                        return doc["metrics_port"]
                return None

            metrics_port = await until(port, 60, "the metrics port in the log")
            await wait_committed(kafka_bootstrap, group, topics["in"], ends, timeout=120)
            scraped = (await aget(f"http://127.0.0.1:{metrics_port}/metrics"))[1].decode()
            proc.send_signal(signal.SIGTERM)
            rc = await asyncio.wait_for(proc.wait(), 30)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        return rc, scraped, log_path.read_text()

    rc, scraped, text = asyncio.run(scenario())
    assert rc == 0, text[-3000:]
    assert secret not in text
    docs = [json.loads(line) for line in text.splitlines()]
    assert all({"ts", "level", "logger", "message"} <= set(d) for d in docs)
    assert len(docs) < 40, "more log lines than lifecycle events: something logs per reading or per batch"
    assert any(d["message"].startswith("assigned partitions") and d.get("partitions") == 4 for d in docs)
    stopped = [d for d in docs if d["message"].startswith("stopped:")]
    assert stopped and stopped[-1]["consumed"] == len(messages) and stopped[-1]["dead_lettered"] == 0
    assert value(parse(scraped), "hiddenstate_readings_consumed_total") == len(messages)


# --- a real Prometheus ---------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the test process dies, however it dies (Linux prctl PR_SET_PDEATHSIG)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


class Prometheus:
    """A Prometheus server in a subprocess, scraping `targets` every second with the project's rules loaded."""

    def __init__(self, binary: str, workdir: Path, targets: list[str]) -> None:
        from tests.test_serve_kafka import _free_port

        self.port = _free_port()
        self.workdir = workdir
        config = workdir / "prometheus.yml"
        # JSON is YAML: no YAML writer needed
        config.write_text(json.dumps({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "hiddenstate", "static_configs": [{"targets": targets}]}],
        }))
        self.log = (workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h"],
            stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
        )
        self.base = f"http://127.0.0.1:{self.port}"

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited {self.proc.returncode}: {self.logs()}")
        try:
            return http_get(self.base + "/-/ready", timeout=1)[0] == 200
        except OSError:
            return False

    def query(self, expr: str) -> list[dict]:
        status, body = http_get(f"{self.base}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        doc = json.loads(body)
        assert status == 200 and doc["status"] == "success", (expr, doc)
        return doc["data"]["result"]

    def scalar(self, expr: str) -> float | None:
        """The value of a query that returns at most one series (None if none)."""
        result = self.query(expr)
        assert len(result) <= 1, (expr, result)
        return float(result[0]["value"][1]) if result else None

    def api(self, path: str) -> dict:
        status, body = http_get(self.base + path)
        assert status == 200, body
        return json.loads(body)["data"]

    def logs(self) -> str:
        return (self.workdir / "prometheus.log").read_text()[-3000:]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def test_prometheus_scrapes_the_service_during_an_end_to_end_run(kafka_bootstrap, model, tmp_path):
    """Prometheus (1 s scrapes) watches a run: lag builds up while the engine is held, drains to 0; the
    counters it stored equal what was produced; the project's rules load and evaluate without error."""
    binary = prometheus_binary("prometheus")
    messages = stream_with_bad_messages()
    want = expected_counts(model, messages)
    job = '{job="hiddenstate"}'

    async def scenario():
        topics = await new_topics(kafka_bootstrap)
        group = unique_name("g")
        cfg = service_config(kafka_bootstrap, topics, group, max_batch=200, broker_probe_seconds=0.3,
                             broker_stale_seconds=10)
        service = ScoringService(cfg, model)
        gate = gate_engine(service)
        await service.start()
        prom = Prometheus(binary, tmp_path, [f"127.0.0.1:{service.http_port}"])
        seen = {}
        try:
            await until(lambda: asyncio.to_thread(prom.ready), 60, "prometheus ready", interval=0.5)
            task = asyncio.create_task(service.run())
            await until(lambda: asyncio.to_thread(lambda: prom.scalar(f"hiddenstate_ready{job}") == 1), 60,
                        "prometheus sees the service ready", interval=0.5)
            await produce(kafka_bootstrap, topics["in"], messages)
            ends = await end_offsets(kafka_bootstrap, topics["in"])
            # the first batch is held in the engine: the lag Prometheus stores must show the backlog
            seen["peak_lag"] = await until(
                lambda: asyncio.to_thread(prom.scalar, f"sum(hiddenstate_consumer_lag_messages{job}) > 1000"),
                60, "prometheus sees the lag build up", interval=0.5)
            gate.set()
            await wait_committed(kafka_bootstrap, group, topics["in"], ends, timeout=120)

            await asyncio.sleep(0.5)  # the batch that made the last commit finishes its bookkeeping
            batches = service.stats.batches  # final: everything is committed, nothing more comes

            def settled():
                # a scrape taken after the last batch completed (not one in its middle, where
                # `consumed` is already final but `scored` not yet)
                done = prom.scalar(f"hiddenstate_batches_total{job}")
                consumed = prom.scalar(f"hiddenstate_readings_consumed_total{job}")
                lag = prom.scalar(f"sum(hiddenstate_consumer_lag_messages{job})")
                return done == batches and consumed == len(messages) and lag == 0

            await until(lambda: asyncio.to_thread(settled), 60, "prometheus sees the run complete, lag 0",
                        interval=0.5)
            q = prom.query
            seen["scored"] = await asyncio.to_thread(prom.scalar, f"hiddenstate_readings_scored_total{job}")
            seen["rejected"] = {r["metric"]["reason"]: float(r["value"][1])
                                for r in await asyncio.to_thread(q, f"hiddenstate_readings_rejected_total{job}")}
            seen["dead"] = {r["metric"]["reason"]: float(r["value"][1])
                            for r in await asyncio.to_thread(q, f"hiddenstate_dead_letters_total{job} > 0")}
            seen["raised"] = await asyncio.to_thread(prom.scalar, f"hiddenstate_alerts_raised_total{job}")
            seen["cleared"] = await asyncio.to_thread(prom.scalar, f"hiddenstate_alerts_cleared_total{job}")
            seen["lag"] = {r["metric"]["partition"]: float(r["value"][1])
                           for r in await asyncio.to_thread(q, f"hiddenstate_consumer_lag_messages{job}")}
            seen["max_lag_seen"] = await asyncio.to_thread(
                prom.scalar, f"max_over_time(sum(hiddenstate_consumer_lag_messages{job})[5m:1s])")
            seen["up"] = await asyncio.to_thread(prom.scalar, f"max_over_time(up{job}[5m])")
            seen["build"] = await asyncio.to_thread(q, f"hiddenstate_build_info{job}")
            # recording rules have had time to evaluate (1 s) on the stored series
            seen["recorded"] = await until(
                lambda: asyncio.to_thread(prom.query, 'job:hiddenstate_readings_consumed:rate5m{job="hiddenstate"}'),
                30, "a recording rule result", interval=0.5)
            seen["rules"] = await asyncio.to_thread(prom.api, "/api/v1/rules")
            seen["targets"] = await asyncio.to_thread(prom.api, "/api/v1/targets")
            service.request_stop()
            await asyncio.wait_for(task, 20)
        except BaseException:
            print(prom.logs())
            raise
        finally:
            prom.stop()
            await service.close()
        return seen

    seen = asyncio.run(scenario())
    assert seen["scored"] == want["scored"]
    assert seen["rejected"] == {k: float(v) for k, v in want["rejected"].items()}
    assert seen["dead"] == {k: float(v) for k, v in want["dead"].items()}
    assert seen["raised"] == want["raised"] == 1 and seen["cleared"] == want["cleared"]
    assert seen["lag"] == {str(p): 0.0 for p in range(4)}, "lag did not return to 0"
    assert seen["max_lag_seen"] > 1000
    assert seen["up"] == 1  # scraped (a single scrape timing out on a loaded machine is fine)
    assert seen["build"] and seen["build"][0]["metric"]["model"] == model.model_id
    assert float(seen["recorded"][0]["value"][1]) > 0
    rules = [r for g in seen["rules"]["groups"] for r in g["rules"]]
    assert len(rules) >= 20
    bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not bad, bad
    # nothing should fire on a healthy run
    firing = [r["name"] for r in rules if r["type"] == "alerting" and r["state"] == "firing"]
    assert not firing, firing
    targets = seen["targets"]["activeTargets"]
    assert [t["labels"]["job"] for t in targets] == ["hiddenstate"], targets
