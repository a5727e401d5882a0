"""Settings of `hiddenstate serve`, in one typed place.

`ServiceConfig` holds the Kafka side (broker, topics, group, batching, security)
plus the engine's `DetectorConfig`. Loaded like every settings class (`detector.settings.load_settings`); sources, in increasing precedence:

1. a TOML file: the `[service]` table for the Kafka settings, the `[detector]`
   table (or top-level keys) for the engine, exactly as `load_config` reads it;
2. environment variables: `HIDDENSTATE_<FIELD>` for the service fields
   (`HIDDENSTATE_BOOTSTRAP_SERVERS`, `HIDDENSTATE_INPUT_TOPICS=a,b`, ...) and the
   usual flat `HIDDENSTATE_THRESHOLD`-style names for the engine;
3. command-line flags (`load_service_config(..., **overrides)`; None = unset).

Secrets (`sasl_password`, `ssl_key_password`) are `SecretStr`s: their repr, `str()`, `summary()`
and `model_dump_json()` never show them. Each can also be read from a file (`sasl_password_file`,
`ssl_key_password_file`: a mounted Kubernetes or Docker secret), so it need not sit in the TOML file
or the environment; `secrets()` lists their values for the log masker.
"""

from __future__ import annotations

import re
import ssl
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from consumers.decode import MAX_READINGS_PER_MESSAGE
from detector.config import DetectorConfig, load_config
from detector.errors import ConfigError
from detector.settings import Settings, env_values, load_settings

DEFAULT_MAX_BATCH_DELAY_MS = 5
"""`max_batch_delay_ms`' default, chosen by measurement (docs/performance.md, benchmarks/latency.py)."""

# secret field -> the field naming a file that holds it (read once, at load; a trailing newline is dropped)
SECRET_FILES = {"sasl_password": "sasl_password_file", "ssl_key_password": "ssl_key_password_file"}

class ServiceConfig(Settings):
    """Everything `hiddenstate serve` needs besides the model."""

    table: ClassVar[str] = "service"

    # --- broker and topics ---------------------------------------------------------
    bootstrap_servers: str = Field("127.0.0.1:9092", description="Comma-separated host:port list of brokers.")
    input_topics: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["sensor-readings"], min_length=1,
        description="Topics with readings (comma-separated in the environment).",
    )
    scores_topic: str = Field("sensor-scores", min_length=1, description="Every scored reading goes here.")
    alerts_topic: str = Field("sensor-alerts", min_length=1, description="Alert raise/clear events go here.")
    dead_letter_topic: str = Field(
        "sensor-readings-dlq", min_length=1, description="Messages that cannot be scored, original bytes + reason."
    )
    group_id: str = Field("hiddenstate", min_length=1, description="Consumer group id.")
    client_id: str = Field("hiddenstate", min_length=1, description="Client id shown in broker logs and metrics.")
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest", description="Where a group without committed offsets starts."
    )

    # --- batching, limits, timing ----------------------------------------------------
    max_batch: int = Field(
        5000, ge=1, le=100_000,
        description="Most messages per micro-batch (getmany max_records). A poll returns what is there, so at low "
                    "rates batches stay small; under a backlog bigger batches cost fewer broker round trips.",
    )
    poll_timeout_ms: int = Field(200, ge=0, le=60_000, description="How long one poll waits for messages.")
    max_batch_delay_ms: int = Field(
        DEFAULT_MAX_BATCH_DELAY_MS, ge=0, le=10_000,
        description="Most time a micro-batch stays open for more messages while the previous batch is still being "
                    "acknowledged and committed: a batch is closed at max_batch messages or at this age, whichever "
                    "comes first. With nothing in flight a batch is scored as soon as it is polled, so light "
                    "traffic is never held back; 0 = each batch is what one poll returns.",
    )
    pipelining: bool = Field(
        True,
        description="Decode and score the next batch while the previous one's outputs are acknowledged and its "
                    "offsets committed (commits stay in input order). False: one batch at a time, each committed "
                    "before the next is polled.",
    )
    max_message_bytes: int = Field(
        65_536, ge=64, description="Messages larger than this are dead-lettered as too_large, not parsed."
    )
    max_key_bytes: int = Field(
        1024, ge=1, description="Messages whose key is longer than this are dead-lettered as too_large."
    )
    max_channels: int = Field(
        64, ge=1, le=1024,
        description="Most values per reading: more are wrong_channels, and the channel count is never learnt "
                    "above it (each channel costs state in every sensor's slot).",
    )
    sensor_id_pattern: str | None = Field(
        None, min_length=1,
        description="Regular expression every sensor id must match in full (e.g. `[A-Za-z0-9._:-]+`), else "
                    "bad_sensor_id; None = any printable string of 1-256 characters.",
    )
    max_readings_per_message: int = Field(
        MAX_READINGS_PER_MESSAGE, ge=1, le=1_000_000,
        description="A batched message with more readings than this is dead-lettered whole as too_many_readings "
                    "(the default is below what the most compact readings fit into max_message_bytes' default).",
    )
    score_records: Literal["per_reading", "per_message"] = Field(
        "per_reading",
        description="per_reading: one score record per scored reading. per_message: one record per input message "
                    "and sensor, its fields arrays over the message's readings (far cheaper for batched input).",
    )
    linger_ms: int = Field(
        0, ge=0, le=10_000,
        description="Producer linger. The service batches its outputs itself (a record batch per partition), so "
                    "waiting only adds latency; a few ms may help when batches are tiny.",
    )
    grace_seconds: float = Field(
        30.0, gt=0, description="On SIGTERM/SIGINT: time to finish the batch, flush, commit and leave the group."
    )
    retry_initial_seconds: float = Field(0.5, gt=0, description="First wait after a failed connect or produce.")
    retry_max_seconds: float = Field(30.0, gt=0, description="Cap of the exponential backoff between retries.")
    start_timeout_seconds: float | None = Field(
        None, gt=0, description="Give up if the broker cannot be reached for this long at start; None = retry forever."
    )
    channel_names: list[str] | None = Field(
        None, min_length=1,
        description="The channel names and order of every sensor (readings whose `values` is an object); None = "
                    "each sensor's own, the sorted keys of its first object.",
    )

    # --- metrics, health and readiness (see docs/metrics.md, docs/operations.md) -------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level; logs go to stderr.")
    log_format: Literal["text", "json"] = Field("text", description="Text lines, or one JSON object per line.")
    metrics_enabled: bool = Field(True, description="Serve /metrics, /healthz and /readyz over HTTP.")
    metrics_address: str = Field(
        "0.0.0.0", min_length=1, description="Address the HTTP endpoints listen on (`::` for IPv6)."
    )
    metrics_port: int = Field(9108, ge=0, le=65_535, description="Port of the HTTP endpoints; 0 = any free port.")
    health_stall_seconds: float = Field(
        60.0, gt=0, description="/healthz fails when the processing loop has not gone round for this long."
    )
    broker_probe_seconds: float = Field(
        5.0, gt=0, description="How often consumer lag is measured (a broker round trip, also used by /readyz)."
    )
    broker_stale_seconds: float = Field(
        30.0, gt=0, description="/readyz fails when the broker has not answered for this long."
    )

    # --- state checkpoints (see docs/state.md) ----------------------------------------
    checkpoints_enabled: bool = Field(
        True, description="Write changed sensor states to the changelog at each commit; restore them on assignment."
    )
    changelog_topic: str | None = Field(
        None, min_length=1,
        description="Compacted changelog topic of sensor states; None = `<group_id>.changelog` "
                    "(`hiddenstate.changelog` with the default group). Created compacted if missing.",
    )
    changelog_replication_factor: int = Field(
        1, ge=1, description="Replication factor used when the service creates the changelog or weights topic.",
    )
    weights_topic: str | None = Field(
        None, min_length=1,
        description="With learning = online: the compacted topic of the group's learnt weights versions "
                    "(docs/models.md); None = `<group_id>.weights`. Created compacted if missing.",
    )
    processing_guarantee: Literal["at_least_once", "exactly_once"] = Field(
        "at_least_once",
        description="at_least_once: outputs acked, then changelog, then offsets committed; exactly_once: outputs, "
                    "changelog and offsets in one Kafka transaction (consumers read with read_committed).",
    )
    transactional_id: str | None = Field(
        None, min_length=1,
        description="exactly_once: the producer's transactional id, stable across restarts and unique per "
                    "instance; None = `<group_id>-<client_id>`.",
    )
    restore_timeout_seconds: float = Field(
        300.0, gt=0, description="Most time a restore from the changelog may take before it is abandoned.",
    )
    broker_wait_seconds: float = Field(
        30.0, gt=0,
        description="Most time one wait on the broker without a timeout of its own may take: each step of an "
                    "exactly_once transaction (begin, acknowledgements, offsets, commit, abort) and the leaders of "
                    "a changelog topic just created. Then the step is given up (the transaction aborted, the batch "
                    "consumed again; the creation retried). A wait is logged as a warning after 5 s.",
    )

    # --- security (passed to aiokafka; see docs/security.md) ---------------------------
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="PLAINTEXT, SSL (TLS), SASL_PLAINTEXT or SASL_SSL (TLS + SASL)."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism; needed with SASL_*."
    )
    sasl_username: str | None = Field(None, min_length=1, description="SASL user.")
    sasl_password: SecretStr | None = Field(None, description="SASL password (a secret: never logged).")
    sasl_password_file: Path | None = Field(
        None, description="File holding the SASL password (instead of sasl_password)."
    )
    ssl_cafile: Path | None = Field(None, description="CA bundle that signed the brokers' certificates; None = system CAs.")
    ssl_certfile: Path | None = Field(None, description="Client certificate (chain), PEM, for mutual TLS.")
    ssl_keyfile: Path | None = Field(None, description="Private key of ssl_certfile, PEM.")
    ssl_key_password: SecretStr | None = Field(None, description="Password of an encrypted ssl_keyfile (a secret).")
    ssl_key_password_file: Path | None = Field(
        None, description="File holding the password of ssl_keyfile (instead of ssl_key_password)."
    )

    detector: DetectorConfig = Field(default_factory=DetectorConfig)

    @model_validator(mode="before")
    @classmethod
    def _read_secret_files(cls, data: Any) -> Any:
        """`<secret>_file` -> `<secret>`: the file's content without its trailing newline."""
        if not isinstance(data, dict):
            return data
        for secret, file_field in SECRET_FILES.items():
            path = data.get(file_field)
            if path is None:
                continue
            if data.get(secret) is not None:
                raise ValueError(f"set {secret} or {file_field}, not both")
            try:
                text = Path(path).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ValueError(f"{file_field}: cannot read {path}: {exc.__class__.__name__}: {exc}") from None
            text = text.rstrip("\r\n")
            if not text:
                raise ValueError(f"{file_field}: {path} is empty")
            data = {**data, secret: text}
        return data

    @field_validator("sensor_id_pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"sensor_id_pattern is not a regular expression: {exc}") from None
        return value

    @field_validator("input_topics", "channel_names", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _check(self) -> ServiceConfig:
        if self.sasl_mechanism is None and self.security_protocol.startswith("SASL"):
            raise ValueError(f"security_protocol {self.security_protocol} needs sasl_mechanism")
        if self.sasl_mechanism is not None and (self.sasl_username is None or self.sasl_password is None):
            raise ValueError("sasl_mechanism needs sasl_username and sasl_password")
        if self.sasl_mechanism is not None and not self.security_protocol.startswith("SASL"):
            raise ValueError(f"sasl_mechanism needs security_protocol SASL_SSL or SASL_PLAINTEXT, "
                             f"not {self.security_protocol}")
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ValueError("ssl_keyfile needs ssl_certfile (the client certificate it belongs to)")
        if self.detector.channels is not None and self.detector.channels > self.max_channels:
            raise ValueError(f"detector.channels {self.detector.channels} exceeds max_channels {self.max_channels}: "
                             f"raise max_channels")
        if self.broker_probe_seconds >= self.broker_stale_seconds:
            raise ValueError("broker_probe_seconds must be shorter than broker_stale_seconds")
        if self.retry_initial_seconds > self.retry_max_seconds:
            raise ValueError("retry_initial_seconds cannot exceed retry_max_seconds")
        outputs = {self.scores_topic, self.alerts_topic, self.dead_letter_topic}
        if self.checkpoints_enabled:
            outputs.add(self.changelog_name)
        if self.learning:
            outputs.add(self.weights_name)
        if outputs & set(self.input_topics):
            raise ValueError("an output topic cannot also be an input topic")
        if self.channel_names is not None:
            if len(set(self.channel_names)) != len(self.channel_names):
                raise ValueError("channel_names has duplicates")
            if self.detector.channels is not None and self.detector.channels != len(self.channel_names):
                raise ValueError(
                    f"channel_names has {len(self.channel_names)} names "
                    f"but detector.channels is {self.detector.channels}"
                )
        return self

    @property
    def exactly_once(self) -> bool:
        return self.processing_guarantee == "exactly_once"

    @property
    def transactional_id_or_default(self) -> str:
        return self.transactional_id or f"{self.group_id}-{self.client_id}"

    @property
    def changelog_name(self) -> str:
        """The changelog topic: `changelog_topic`, or `<group_id>.changelog`."""
        return self.changelog_topic or f"{self.group_id}.changelog"

    @property
    def learning(self) -> bool:
        """Whether the group learns its weights from the stream (`detector.learning` online, or `detector.fit_first`):
        versions go through `weights_name`."""
        return self.detector.learning == "online" or self.detector.fit_first > 0

    @property
    def weights_name(self) -> str:
        """The weights topic: `weights_topic`, or `<group_id>.weights`."""
        return self.weights_topic or f"{self.group_id}.weights"

    def kafka_client_kwargs(self) -> dict[str, Any]:
        """Connection and security keyword arguments shared by aiokafka's consumer and producer."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
        }
        if self.tls:
            kwargs["ssl_context"] = self.ssl_context()
        if self.sasl_mechanism is not None:
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = self.sasl_password.get_secret_value() if self.sasl_password else None
        return kwargs

    @property
    def tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    def secrets(self) -> list[str]:
        """The values of every secret set, for the log masker (consumers/logs.py)."""
        return [s.get_secret_value() for s in (self.sasl_password, self.ssl_key_password) if s is not None]

    def ssl_context(self) -> ssl.SSLContext:
        """TLS client context: verifies the broker's certificate and host name against ssl_cafile (or the system
        CAs); presents ssl_certfile/ssl_keyfile when set."""
        from aiokafka.helpers import create_ssl_context

        try:
            return create_ssl_context(
                cafile=self.ssl_cafile,
                certfile=self.ssl_certfile,
                keyfile=self.ssl_keyfile,
                password=self.ssl_key_password.get_secret_value() if self.ssl_key_password else None,
            )
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot build the TLS context from ssl_cafile/ssl_certfile/ssl_keyfile: {exc} "
                f"(check the paths, that the files are PEM, and ssl_key_password for an encrypted key)"
            ) from None

    def summary(self) -> str:
        """One line for the start-up log: the settings that matter, never the password."""
        sec = self.security_protocol
        if self.sasl_mechanism:
            sec += f"/{self.sasl_mechanism} user={self.sasl_username}"
        return (
            f"bootstrap={self.bootstrap_servers} inputs={','.join(self.input_topics)} scores={self.scores_topic} "
            f"alerts={self.alerts_topic} dlq={self.dead_letter_topic} group={self.group_id} "
            f"max_batch={self.max_batch} max_batch_delay_ms={self.max_batch_delay_ms} "
            f"pipelining={'on' if self.pipelining else 'off'} security={sec} model={self.detector.model} "
            f"threshold={self.detector.threshold} "
            f"changelog={self.changelog_name if self.checkpoints_enabled else 'off'} "
            f"guarantee={self.processing_guarantee} "
            f"learning={f'online weights={self.weights_name}' if self.learning else 'off'} "
            f"metrics={f'{self.metrics_address}:{self.metrics_port}' if self.metrics_enabled else 'off'}"
        )


def load_service_config(
    path: str | Path | None = None, detector: DetectorConfig | None = None, **overrides: Any
) -> ServiceConfig:
    """A ServiceConfig from the TOML file's `[service]` table, then HIDDENSTATE_* variables, then `overrides`.

    detector: the engine settings, e.g. from `detector.cli.options.config_from_args`; default: `load_config(path)`
    (with any `HIDDENSTATE_DETECTOR__<FIELD>` variables on top). Overrides whose value is None are ignored,
    so unset CLI flags do not mask the file or the environment.
    """
    if detector is None:
        detector = load_config(path, **env_values(ServiceConfig).get("detector", {}))
    return load_settings(ServiceConfig, path, **overrides, detector=detector)
