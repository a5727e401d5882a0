"""Settings of `hiddenstate serve`, in one typed place.

`ServiceConfig` holds the Kafka side (broker, topics, group, batching, security)
plus the engine's `DetectorConfig`. Sources, in increasing precedence:

1. a TOML file: the `[service]` table for the Kafka settings, the `[detector]`
   table (or top-level keys) for the engine, exactly as `load_config` reads it;
2. environment variables: `HIDDENSTATE_<FIELD>` for the service fields
   (`HIDDENSTATE_BOOTSTRAP_SERVERS`, `HIDDENSTATE_INPUT_TOPICS=a,b`, ...) and the
   usual flat `HIDDENSTATE_THRESHOLD`-style names for the engine;
3. command-line flags (`load_service_config(..., **overrides)`; None = unset).

The SASL password is a `SecretStr`: its repr, `str()` and `summary()` never show it.
"""

from __future__ import annotations

import ssl
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from detector.config import DetectorConfig, load_config, read_toml
from detector.errors import ConfigError

# The `[service]` table of the file being loaded (set only while `load_service_config` builds one).
_FILE_VALUES: ContextVar[dict[str, Any]] = ContextVar("_FILE_VALUES", default={})


class _FileTableSource(PydanticBaseSettingsSource):
    """The lowest-precedence source: the TOML file's `[service]` table."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return _FILE_VALUES.get().get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_FILE_VALUES.get())


class ServiceConfig(BaseSettings):
    """Everything `hiddenstate serve` needs besides the model."""

    model_config = SettingsConfigDict(
        env_prefix="HIDDENSTATE_", env_nested_delimiter="__", extra="ignore", frozen=True
    )

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
    max_batch: int = Field(500, ge=1, le=100_000, description="Most messages per micro-batch (getmany max_records).")
    poll_timeout_ms: int = Field(200, ge=0, le=60_000, description="How long one poll waits for messages.")
    max_message_bytes: int = Field(
        65_536, ge=64, description="Messages larger than this are dead-lettered as too_large, not parsed."
    )
    max_readings_per_message: int = Field(
        10_000, ge=1, le=1_000_000,
        description="A batched message with more readings than this is dead-lettered whole as too_many_readings.",
    )
    linger_ms: int = Field(5, ge=0, le=10_000, description="Producer linger: how long outputs wait to be batched.")
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
        description="Channel order for readings whose `values` is an object; None = sorted keys of the first one.",
    )

    # --- metrics, health and readiness (see docs/metrics.md, docs/operations.md) -------
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
        1, ge=1, description="Replication factor used when the service creates the changelog topic.",
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

    # --- security (passed through to aiokafka) ---------------------------------------
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None

    detector: DetectorConfig = Field(default_factory=DetectorConfig)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _FileTableSource(settings_cls)

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
        if self.broker_probe_seconds >= self.broker_stale_seconds:
            raise ValueError("broker_probe_seconds must be shorter than broker_stale_seconds")
        if self.retry_initial_seconds > self.retry_max_seconds:
            raise ValueError("retry_initial_seconds cannot exceed retry_max_seconds")
        outputs = {self.scores_topic, self.alerts_topic, self.dead_letter_topic}
        if self.checkpoints_enabled:
            outputs.add(self.changelog_name)
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

    def kafka_client_kwargs(self) -> dict[str, Any]:
        """Connection and security keyword arguments shared by aiokafka's consumer and producer."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol in ("SSL", "SASL_SSL"):
            kwargs["ssl_context"] = self.ssl_context()
        if self.sasl_mechanism is not None:
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = self.sasl_password.get_secret_value() if self.sasl_password else None
        return kwargs

    def ssl_context(self) -> ssl.SSLContext:
        from aiokafka.helpers import create_ssl_context

        try:
            return create_ssl_context(
                cafile=self.ssl_cafile,
                certfile=self.ssl_certfile,
                keyfile=self.ssl_keyfile,
            )
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot build the TLS context from ssl_cafile/ssl_certfile/ssl_keyfile: {exc}") from None

    def summary(self) -> str:
        """One line for the start-up log: the settings that matter, never the password."""
        sec = self.security_protocol
        if self.sasl_mechanism:
            sec += f"/{self.sasl_mechanism} user={self.sasl_username}"
        return (
            f"bootstrap={self.bootstrap_servers} inputs={','.join(self.input_topics)} scores={self.scores_topic} "
            f"alerts={self.alerts_topic} dlq={self.dead_letter_topic} group={self.group_id} "
            f"max_batch={self.max_batch} security={sec} model={self.detector.model} "
            f"threshold={self.detector.threshold} "
            f"changelog={self.changelog_name if self.checkpoints_enabled else 'off'} "
            f"guarantee={self.processing_guarantee} "
            f"metrics={f'{self.metrics_address}:{self.metrics_port}' if self.metrics_enabled else 'off'}"
        )


def load_service_config(
    path: str | Path | None = None, detector: DetectorConfig | None = None, **overrides: Any
) -> ServiceConfig:
    """A ServiceConfig from the TOML file's `[service]` table, then HIDDENSTATE_* variables, then `overrides`.

    detector: the engine settings, e.g. from `detector.cli.config_from_args`; default: `load_config(path)`.
    Overrides whose value is None are ignored, so unset CLI flags do not mask the file or the environment.
    """
    table: dict[str, Any] = {}
    if path is not None:
        table = read_toml(path).get("service", {})
        if not isinstance(table, dict):
            raise ConfigError(f"config file {path}: [service] must be a table")
        unknown = set(table) - set(ServiceConfig.model_fields) - {"detector"}
        if unknown:
            raise ConfigError(f"config file {path}: unknown [service] keys {sorted(unknown)}")
    detector = detector if detector is not None else load_config(path)
    init = {k: v for k, v in overrides.items() if v is not None}
    token = _FILE_VALUES.set(table)
    try:
        return ServiceConfig(**init, detector=detector)
    except ValidationError as exc:
        raise ConfigError(f"invalid service configuration: {exc}") from None
    finally:
        _FILE_VALUES.reset(token)
