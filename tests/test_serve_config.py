"""ServiceConfig: TOML [service] table < HIDDENSTATE_* variables < flags; secrets never shown."""

from __future__ import annotations

import argparse
import logging

import pytest

from consumers.config import ServiceConfig, load_service_config
from detector.config import DetectorConfig
from detector.errors import ConfigError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    import os

    for name in list(os.environ):
        if name.startswith("HIDDENSTATE_"):
            monkeypatch.delenv(name)


def test_defaults():
    cfg = load_service_config()
    assert cfg.bootstrap_servers == "127.0.0.1:9092"
    assert cfg.input_topics == ["sensor-readings"]
    assert cfg.security_protocol == "PLAINTEXT" and cfg.sasl_password is None
    assert cfg.detector.model == "gru-default"


def test_file_then_env_then_flags(tmp_path, monkeypatch):
    path = tmp_path / "hs.toml"
    path.write_text(
        '[service]\nbootstrap_servers = "file:1"\ninput_topics = ["a", "b"]\ngroup_id = "g-file"\nmax_batch = 7\n'
        '[detector]\nthreshold = 0.99\nwarmup = 11\n'
    )
    cfg = load_service_config(path)
    assert (cfg.bootstrap_servers, cfg.input_topics, cfg.group_id, cfg.max_batch) == ("file:1", ["a", "b"], "g-file", 7)
    assert cfg.detector.threshold == 0.99 and cfg.detector.warmup == 11

    monkeypatch.setenv("HIDDENSTATE_BOOTSTRAP_SERVERS", "env:1,env:2")
    monkeypatch.setenv("HIDDENSTATE_INPUT_TOPICS", "x, y ,z")
    monkeypatch.setenv("HIDDENSTATE_THRESHOLD", "0.995")
    cfg = load_service_config(path)
    assert cfg.bootstrap_servers == "env:1,env:2" and cfg.input_topics == ["x", "y", "z"]
    assert cfg.group_id == "g-file" and cfg.detector.threshold == 0.995

    cfg = load_service_config(path, bootstrap_servers="flag:1", group_id=None, input_topics=["q"])
    assert cfg.bootstrap_servers == "flag:1" and cfg.group_id == "g-file" and cfg.input_topics == ["q"]


def test_nested_detector_env(monkeypatch):
    monkeypatch.setenv("HIDDENSTATE_DETECTOR__WARMUP", "17")
    assert load_service_config().detector.warmup == 17


def test_invalid_values_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="max_batch"):
        load_service_config(max_batch=0)
    with pytest.raises(ConfigError, match="input topic"):
        load_service_config(input_topics=["t"], scores_topic="t")
    with pytest.raises(ConfigError, match="sasl_mechanism"):
        load_service_config(security_protocol="SASL_SSL")
    with pytest.raises(ConfigError, match="input topic"):  # the weights topic is an output too
        load_service_config(input_topics=["t"], weights_topic="t", detector=DetectorConfig(learning="online"))
    learning = load_service_config(group_id="plant", detector=DetectorConfig(learning="online"))
    assert learning.weights_name == "plant.weights" and "learning=online weights=plant.weights" in learning.summary()
    path = tmp_path / "bad.toml"
    path.write_text("[service]\nbootstrapservers = 'x'\n")
    with pytest.raises(ConfigError, match="unknown"):
        load_service_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_service_config(tmp_path / "missing.toml")


def test_sasl_passthrough_and_secret_never_shown(monkeypatch, caplog):
    monkeypatch.setenv("HIDDENSTATE_SASL_PASSWORD", "hunter2-secret")
    cfg = load_service_config(security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-512", sasl_username="svc")
    kwargs = cfg.kafka_client_kwargs()
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kwargs["sasl_plain_username"] == "svc" and kwargs["sasl_plain_password"] == "hunter2-secret"
    for text in (repr(cfg), str(cfg), cfg.summary(), cfg.model_dump_json()):
        assert "hunter2" not in text
    with caplog.at_level(logging.INFO):
        logging.getLogger("t").info("config %s %r", cfg, cfg)
    assert "hunter2" not in caplog.text


def test_ssl_context_built_from_files(tmp_path):
    cfg = load_service_config(security_protocol="SSL")
    assert "ssl_context" in cfg.kafka_client_kwargs()
    with pytest.raises(ConfigError, match="TLS"):
        load_service_config(security_protocol="SSL", ssl_cafile=tmp_path / "missing.pem").kafka_client_kwargs()


def test_serve_flags_reach_the_config(monkeypatch):
    from consumers.commands import serve as serve_command

    captured = {}

    async def fake_serve(config):
        captured["config"] = config
        return 0

    monkeypatch.setattr("consumers.process.serve", fake_serve)
    parser = argparse.ArgumentParser()
    serve_command.add_arguments(parser)
    args = parser.parse_args(["--bootstrap", "h:1", "--input-topic", "a", "--input-topic", "b", "--group", "g",
                              "--threshold", "0.98", "--max-batch", "64", "--grace", "5"])
    assert serve_command.run(args) == 0
    cfg = captured["config"]
    assert cfg.bootstrap_servers == "h:1" and cfg.input_topics == ["a", "b"] and cfg.group_id == "g"
    assert cfg.max_batch == 64 and cfg.grace_seconds == 5 and cfg.detector.threshold == 0.98


def test_secrets_from_files_never_shown(tmp_path, monkeypatch, caplog):
    (tmp_path / "pw").write_text("s3cret-from-file\n")
    (tmp_path / "keypw").write_text("key-pass-phrase")
    monkeypatch.setenv("HIDDENSTATE_SASL_PASSWORD_FILE", str(tmp_path / "pw"))
    cfg = load_service_config(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-256", sasl_username="svc",
                              ssl_key_password_file=tmp_path / "keypw")
    assert cfg.kafka_client_kwargs()["sasl_plain_password"] == "s3cret-from-file"  # trailing newline dropped
    assert cfg.ssl_key_password.get_secret_value() == "key-pass-phrase"
    assert sorted(cfg.secrets()) == ["key-pass-phrase", "s3cret-from-file"]
    with caplog.at_level(logging.INFO):
        logging.getLogger("t").info("config %s %r %s", cfg, cfg, cfg.summary())
    for text in (repr(cfg), cfg.summary(), cfg.model_dump_json(), caplog.text):
        assert "s3cret" not in text and "key-pass" not in text


def test_secret_file_errors_say_which_setting(tmp_path):
    with pytest.raises(ConfigError, match="sasl_password_file: cannot read"):
        load_service_config(sasl_password_file=tmp_path / "missing")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="sasl_password_file: .* is empty"):
        load_service_config(sasl_password_file=tmp_path / "empty")
    (tmp_path / "pw").write_text("x")
    with pytest.raises(ConfigError, match="not both"):
        load_service_config(sasl_password="y", sasl_password_file=tmp_path / "pw")


def test_security_and_limit_settings_are_checked():
    with pytest.raises(ConfigError, match="SASL_SSL or SASL_PLAINTEXT"):
        load_service_config(sasl_mechanism="PLAIN", sasl_username="u", sasl_password="p")
    with pytest.raises(ConfigError, match="ssl_keyfile needs ssl_certfile"):
        load_service_config(security_protocol="SSL", ssl_keyfile="key.pem")
    with pytest.raises(ConfigError, match="raise max_channels"):
        load_service_config(detector=DetectorConfig(channels=100))
    assert load_service_config(detector=DetectorConfig(channels=100), max_channels=100).max_channels == 100
    with pytest.raises(ConfigError, match="sensor_id_pattern is not a regular expression"):
        load_service_config(sensor_id_pattern="[a-")
    with pytest.raises(ConfigError, match="max_key_bytes"):
        load_service_config(max_key_bytes=0)


def test_tune_gc_raises_the_young_generation_threshold_and_never_lowers_it():
    import gc

    from consumers.process import GC_GEN0_THRESHOLD, tune_gc

    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        tune_gc()
        assert gc.get_threshold() == (GC_GEN0_THRESHOLD, 10, 10)
        gc.set_threshold(GC_GEN0_THRESHOLD * 5, 10, 10)
        tune_gc()
        assert gc.get_threshold() == (GC_GEN0_THRESHOLD * 5, 10, 10)
    finally:
        gc.set_threshold(*before)
