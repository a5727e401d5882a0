"""The service against a real SASL_SSL broker: TLS with a private CA, mutual TLS, SCRAM and PLAIN.

A module-scoped fixture makes a CA, broker and client certificates (tests/tls_certs.py) and starts
its own broker with `KAFKA_SECURITY=sasl_ssl scripts/kafka.sh start` on a dedicated port
(HIDDENSTATE_TEST_SASL_KAFKA_PORT, default 19192, controller one above), requiring client
certificates; it stops it (--clean) at the end. Without Java/Maven the module is skipped with the
reason, unless HIDDENSTATE_REQUIRE_KAFKA=1 (the convention of tests/kafka_broker.py).

What is checked: the service scores end to end over SASL_SSL with SCRAM-SHA-512 (password from a
file, client certificate); SCRAM-SHA-256 and PLAIN connect; a wrong password, an untrusted broker
certificate and a missing client certificate stop the start at the first attempt with a
`BrokerAccessError` that says what to fix (no retry loop), and no log line holds the password.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from consumers.broker_access import BrokerAccessError
from consumers.config import ServiceConfig
from consumers.process import serve
from consumers.service import ScoringService
from detector.config import DetectorConfig
from detector.model.store import untrained
from tests.kafka_broker import SCRIPT, header, topic_partitions, unique_name
from tests.tls_certs import Pki, make_pki

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_700_000_000.0


@dataclass(frozen=True)
class SecureBroker:
    bootstrap: str
    pki: Pki
    user: str
    password: str


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory) -> Iterator[SecureBroker]:
    port = int(os.environ.get("HIDDENSTATE_TEST_SASL_KAFKA_PORT", "19192"))
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    admin_password, password = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_DATA_DIR", "KAFKA_EXTRA_PROPERTIES")}  # not ours
    env.update(KAFKA_PORT=str(port), KAFKA_CONTROLLER_PORT=str(port + 1), KAFKA_SECURITY="sasl_ssl",
               KAFKA_SSL_DIR=str(pki.directory), KAFKA_SSL_CLIENT_AUTH="required",
               KAFKA_SASL_USERS=f"admin:{admin_password},hiddenstate:{password}")
    # a broker left on this port has other certificates and users: start afresh
    subprocess.run([str(SCRIPT), "stop", "--clean"], env=env, capture_output=True, text=True, timeout=120, check=False)
    proc = subprocess.run([str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=900, check=False)
    if proc.returncode != 0:
        message = f"KAFKA_SECURITY=sasl_ssl scripts/kafka.sh start failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
        if os.environ.get("HIDDENSTATE_REQUIRE_KAFKA") == "1":
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield SecureBroker(proc.stdout.strip().splitlines()[-1], pki, "hiddenstate", password)
    finally:
        subprocess.run([str(SCRIPT), "stop", "--clean"], env=env, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def model():
    return untrained(8, 1, seed=3)


def secure_config(broker: SecureBroker, tmp_path: Path, **kw) -> ServiceConfig:
    """The service's settings for the secure broker: SASL_SSL, SCRAM-SHA-512, password from a file, client cert."""
    password_file = tmp_path / "kafka-password"
    password_file.write_text(broker.password + "\n")
    base = dict(
        bootstrap_servers=broker.bootstrap, security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
        sasl_username=broker.user, sasl_password_file=password_file, ssl_cafile=broker.pki.ca,
        ssl_certfile=broker.pki.client_cert, ssl_keyfile=broker.pki.client_key,
        metrics_address="127.0.0.1", metrics_port=0, poll_timeout_ms=100, grace_seconds=20,
        retry_initial_seconds=0.2, detector=DetectorConfig(channels=1),
    )
    base.update(kw)
    return ServiceConfig(**base)


async def _create_topics(cfg: ServiceConfig, topics: dict[str, int]) -> None:
    admin = AIOKafkaAdminClient(**cfg.kafka_client_kwargs())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, n, 1) for name, n in topics.items()])
    finally:
        await admin.close()


async def _produce(cfg: ServiceConfig, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(**cfg.kafka_client_kwargs(), acks="all")
    await producer.start()
    try:
        await asyncio.gather(*[await producer.send(topic, value, key=key) for key, value in messages])
    finally:
        await producer.stop()


async def _read(cfg: ServiceConfig, topic: str, count: int, timeout: float = 60.0) -> list:
    """The first `count` records of `topic` (raises TimeoutError if fewer arrive)."""
    consumer = AIOKafkaConsumer(**cfg.kafka_client_kwargs(), auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    out: list = []
    try:
        consumer.assign(await topic_partitions(consumer, topic))
        await consumer.seek_to_beginning()
        async with asyncio.timeout(timeout):
            while len(out) < count:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    out.extend(records)
    finally:
        await consumer.stop()
    return out


def _readings(sensors: int = 6, steps: int = 40) -> list[tuple[bytes, bytes]]:
    return [(f"s{s}".encode(), orjson.dumps({"sensor_id": f"s{s}", "ts": T0 + 10 * t, "value": 10.0 + (t % 7)}))
            for t in range(steps) for s in range(sensors)]


BAD = [(b"s0", b"{not json"), (b"s1", b'{"sensor_id": "s1", "ts": 1700000001, "value": "x"}')]


def test_scores_end_to_end_over_sasl_ssl_with_scram_and_client_certificate(secure_broker, model, tmp_path, caplog):
    cfg0 = secure_config(secure_broker, tmp_path)
    topics = {k: unique_name(f"sec-{k}") for k in ("in", "scores", "alerts", "dlq")}
    cfg = secure_config(secure_broker, tmp_path, input_topics=[topics["in"]], scores_topic=topics["scores"],
                        alerts_topic=topics["alerts"], dead_letter_topic=topics["dlq"], group_id=unique_name("g"))
    assert cfg0.sasl_password.get_secret_value() == secure_broker.password  # read from the file, newline dropped
    good = _readings()

    async def scenario():
        await _create_topics(cfg, {topics["in"]: 2, topics["scores"]: 1, topics["alerts"]: 1, topics["dlq"]: 1})
        await _produce(cfg, topics["in"], good + BAD)
        async with ScoringService(cfg, model) as service:
            task = asyncio.create_task(service.run())
            scores = await _read(cfg, topics["scores"], len(good))
            dead = await _read(cfg, topics["dlq"], len(BAD))
            service.request_stop()
            await asyncio.wait_for(task, 20)
        return service, scores, dead

    with caplog.at_level(logging.DEBUG):
        service, scores, dead = asyncio.run(scenario())
    assert service.stats.connect_attempts == 1
    assert len(scores) == len(good) and service.stats.scored == len(good)
    docs = [orjson.loads(r.value) for r in scores]
    assert {d["sensor_id"] for d in docs} == {f"s{s}" for s in range(6)}
    assert all(0.0 <= d["score"] <= 1.0 for d in docs)
    assert sorted(header(r, "reason") for r in dead) == ["malformed_json", "not_numeric"]
    assert secure_broker.password not in caplog.text


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "PLAIN"])
def test_other_mechanisms_connect(secure_broker, model, tmp_path, mechanism):
    cfg = secure_config(secure_broker, tmp_path, sasl_mechanism=mechanism, checkpoints_enabled=False)

    async def scenario():
        async with ScoringService(cfg, model) as service:
            topics = await service.consumer.topics()
        return service, topics

    service, topics = asyncio.run(scenario())
    assert service.stats.connect_attempts == 1 and isinstance(topics, set)


def _refused(cfg: ServiceConfig, model) -> tuple[BrokerAccessError, ScoringService]:
    """Start a service that the broker refuses; returns the error and the service (for its counts)."""

    async def scenario():
        service = ScoringService(cfg, model)
        with pytest.raises(BrokerAccessError) as info:
            await service.start()  # start_timeout_seconds is None: without the diagnosis it would retry forever
        return info.value, service

    return asyncio.run(scenario())


def test_wrong_password_fails_at_the_first_attempt_without_showing_it(secure_broker, model, tmp_path, caplog):
    wrong = "not-the-password-" + secrets.token_hex(4)
    cfg = secure_config(secure_broker, tmp_path, sasl_password_file=None, sasl_password=wrong)
    with caplog.at_level(logging.DEBUG):
        error, service = _refused(cfg, model)
    assert service.stats.connect_attempts == 1
    text = str(error)
    assert "SASL" in text and "'hiddenstate'" in text and "SCRAM-SHA-512" in text and "sasl_password" in text
    assert wrong not in text and wrong not in caplog.text and secure_broker.password not in caplog.text
    assert "cannot connect to Kafka" in caplog.text
    assert service.http_port is None  # the endpoints went away with the failed start


def test_untrusted_broker_certificate_fails_at_the_first_attempt(secure_broker, model, tmp_path):
    error, service = _refused(secure_config(secure_broker, tmp_path, ssl_cafile=secure_broker.pki.other_ca), model)
    assert service.stats.connect_attempts == 1
    assert "not trusted" in str(error) and "ssl_cafile" in str(error) and str(secure_broker.pki.other_ca) in str(error)


def test_missing_client_certificate_fails_at_the_first_attempt(secure_broker, model, tmp_path):
    cfg = secure_config(secure_broker, tmp_path, ssl_certfile=None, ssl_keyfile=None)
    error, service = _refused(cfg, model)
    assert service.stats.connect_attempts == 1
    assert "client certificate" in str(error) and "ssl_certfile" in str(error)


def test_serve_exits_2_on_refusal(secure_broker, model, tmp_path):
    cfg = secure_config(secure_broker, tmp_path, sasl_password_file=None, sasl_password="wrong-" + secrets.token_hex(4))
    assert asyncio.run(serve(cfg, model, install_signals=False)) == 2


def test_serve_command_wrong_password_from_a_file_exits_2_and_never_logs_it(secure_broker, tmp_path):
    """The real command, JSON logs at DEBUG (aiokafka's included): exit 2, the reason, no password anywhere."""
    wrong = "wrong-" + secrets.token_hex(8)
    (tmp_path / "pw").write_text(wrong)
    pki = secure_broker.pki
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIDDENSTATE_")}
    env.update(HIDDENSTATE_SECURITY_PROTOCOL="SASL_SSL", HIDDENSTATE_SASL_MECHANISM="SCRAM-SHA-512",
               HIDDENSTATE_SASL_USERNAME=secure_broker.user, HIDDENSTATE_SASL_PASSWORD_FILE=str(tmp_path / "pw"),
               HIDDENSTATE_SSL_CAFILE=str(pki.ca), HIDDENSTATE_SSL_CERTFILE=str(pki.client_cert),
               HIDDENSTATE_SSL_KEYFILE=str(pki.client_key), HIDDENSTATE_CHANNELS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "consumers.commands.serve", "--bootstrap", secure_broker.bootstrap, "--metrics-port", "0",
         "--metrics-address", "127.0.0.1", "--log-format", "json", "--log-level", "DEBUG"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [orjson.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    errors = [line["message"] for line in lines if line["level"] == "ERROR" and line["logger"] == "hiddenstate.serve"]
    assert any("SASL" in m and "refused user 'hiddenstate'" in m for m in errors), errors
    assert wrong not in proc.stderr and wrong not in proc.stdout
