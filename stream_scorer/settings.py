"""Typed, frozen settings: one TOML file, every key overridable by an environment variable.

This is the only module that reads the environment. Precedence, highest first: environment
variables (``STREAM_SCORER_<SECTION>__<KEY>``, e.g. ``STREAM_SCORER_BATCH__MAX_SIZE=500``), the
TOML file given with ``--config``, then the defaults below. librdkafka properties pass through
verbatim from ``[kafka.common]``, ``[kafka.consumer]`` and ``[kafka.producer]``; from the
environment they are given as JSON (``STREAM_SCORER_KAFKA__CONSUMER='{"fetch.wait.max.ms": 5}'``).

Every problem (unknown key, wrong type, value out of range, unreadable file) becomes a
:class:`~stream_scorer.errors.ConfigurationError` naming the key.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from stream_scorer.errors import ConfigurationError

__all__ = [
    "ENV_PREFIX",
    "AlertSettings",
    "BatchSettings",
    "DeliverySettings",
    "KafkaSettings",
    "LogSettings",
    "MetricsSettings",
    "ModelSettings",
    "SchemaSettings",
    "Settings",
    "TopicSettings",
    "load_settings",
    "masked",
]

#: Prefix of every environment variable the service reads.
ENV_PREFIX = "STREAM_SCORER_"
#: Separates a section from its key in environment variable names.
ENV_NESTED_DELIMITER = "__"
#: Substrings that mark a librdkafka property or settings key as secret when logged.
SECRET_MARKERS = ("password", "secret", "token", "key.pem", "private")

LibrdkafkaValue = str | int | float | bool


class _Section(BaseModel):
    """Base for settings sections: frozen, and unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Section):
    """How to reach the cluster; credentials; librdkafka passthrough."""

    bootstrap_servers: str = "localhost:9092"
    """Comma-separated host:port list of brokers."""
    group_id: str = "stream-scorer"
    """Consumer group; scale out by starting more members with the same id."""
    client_id: str = "stream-scorer"
    """Client id shown in broker logs and quotas."""
    group_instance_id: str | None = None
    """Static membership id (``group.instance.id``); a restart within the session timeout keeps
    the assignment without a rebalance."""
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    """librdkafka ``security.protocol``."""
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    """librdkafka ``sasl.mechanism``."""
    sasl_username: str | None = None
    """SASL user name."""
    sasl_password: SecretStr | None = None
    """SASL password; prefer ``sasl_password_file`` or the environment. Never logged."""
    sasl_password_file: Path | None = None
    """File whose content (stripped) is the SASL password, e.g. a mounted Kubernetes secret."""
    common: dict[str, LibrdkafkaValue] = Field(default_factory=dict)
    """librdkafka properties for both consumer and producer (TLS files, timeouts...)."""
    consumer: dict[str, LibrdkafkaValue] = Field(default_factory=dict)
    """librdkafka consumer properties, passed verbatim (``enable.auto.commit`` is forced off)."""
    producer: dict[str, LibrdkafkaValue] = Field(default_factory=dict)
    """librdkafka producer properties, passed verbatim (``enable.idempotence`` is forced on)."""

    @model_validator(mode="after")
    def _one_password_source(self) -> Self:
        if self.sasl_password is not None and self.sasl_password_file is not None:
            msg = "kafka.sasl_password and kafka.sasl_password_file are exclusive; set one"
            raise ValueError(msg)
        return self

    def password(self) -> str | None:
        """The SASL password from the setting or its file, or None."""
        if self.sasl_password_file is not None:
            try:
                return self.sasl_password_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                msg = f"kafka.sasl_password_file: cannot read {self.sasl_password_file}: {exc}"
                raise ConfigurationError(msg) from exc
        if self.sasl_password is not None:
            return self.sasl_password.get_secret_value()
        return None

    def client_config(self) -> dict[str, LibrdkafkaValue]:
        """Connection and security properties shared by every client, before passthrough."""
        config: dict[str, LibrdkafkaValue] = {
            "bootstrap.servers": self.bootstrap_servers,
            "client.id": self.client_id,
            "security.protocol": self.security_protocol,
        }
        if self.sasl_mechanism is not None:
            config["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username is not None:
            config["sasl.username"] = self.sasl_username
        password = self.password()
        if password is not None:
            config["sasl.password"] = password
        config.update(self.common)
        return config


class TopicSettings(_Section):
    """Where events come from and where results go."""

    input: str = "transactions"
    """Topic of Avro events to score."""
    alerts: str = "fraud-alerts"
    """Topic for flagged events (``schemas/alert.avsc``), keyed by the source event's key."""
    dead_letter: str = "transactions-dlq"
    """Topic for events that cannot be scored: original bytes, reason in headers."""

    @model_validator(mode="after")
    def _distinct(self) -> Self:
        names = {"input": self.input, "alerts": self.alerts, "dead_letter": self.dead_letter}
        if len(set(names.values())) != len(names):
            msg = f"topics.input, topics.alerts and topics.dead_letter must differ, got {names}"
            raise ValueError(msg)
        return self


class AlertSettings(_Section):
    """What an alert says about its event, beyond the score: id, time, key, projected fields."""

    event_id_field: str | None = None
    """Input field copied to the alert's ``event_id`` (consumers deduplicate on it); default:
    the model card's ``event.id_field``; without either, ``topic[partition]@offset``."""
    event_time_field: str | None = None
    """Input field (timestamp-millis or long) copied to ``event_time``; default: the card's
    ``event.time_field``; without either, the broker timestamp."""
    key_field: str | None = None
    """Input field whose value keys the alert; default: the card's ``event.key_field``; without
    either, the source event's Kafka key, untouched (same partition, same order per entity)."""
    projection: tuple[str, ...] = ()
    """Input fields copied onto each alert's ``projection`` map, so the alerting service needs
    no second lookup (e.g. ``["customer_id", "plan"]``)."""


class SchemaSettings(_Section):
    """Avro schemas and how events are framed on the wire."""

    reader: Path = Path("schemas/transaction.avsc")
    """The schema the service reads events as; writer schemas are resolved against it."""
    alert: Path = Path("schemas/alert.avsc")
    """The schema of published alerts."""
    wire_format: Literal["confluent", "plain", "single-object"] = "confluent"
    """``confluent``: magic byte 0 + 4-byte schema id, writer schema from the registry.
    ``plain``: bare Avro written with ``writer``. ``single-object``: C3 01 + 8-byte
    CRC-64-AVRO fingerprint of one of ``writers``."""
    decoder: Literal["columnar", "record"] = "columnar"
    """``columnar``: decode only the fields the model binds, a whole batch at a time, with
    numpy (fast). ``record``: decode every event whole with fastavro (the reference)."""
    writers: tuple[Path, ...] = ()
    """Known writer schemas for ``plain`` (exactly one; defaults to ``reader``) and
    ``single-object`` (looked up by fingerprint; ``reader`` is always included)."""
    registry_url: str | None = "http://localhost:8081"
    """Schema Registry base URL; required for the ``confluent`` wire format."""
    registry_username: str | None = None
    """Basic-auth user for the registry."""
    registry_password: SecretStr | None = None
    """Basic-auth password for the registry. Never logged."""
    registry_timeout_s: float = Field(default=5.0, gt=0)
    """Timeout of one registry HTTP request."""
    alert_subject: str | None = None
    """Registry subject for alert schemas; defaults to ``<topics.alerts>-value``."""

    @model_validator(mode="after")
    def _registry_for_confluent(self) -> Self:
        if self.wire_format == "confluent" and not self.registry_url:
            msg = "schema.registry_url is required when schema.wire_format is 'confluent'"
            raise ValueError(msg)
        if self.wire_format == "plain" and len(self.writers) > 1:
            msg = "schema.writers takes at most one schema when schema.wire_format is 'plain'"
            raise ValueError(msg)
        return self


class ModelSettings(_Section):
    """Which model scores, and how onnxruntime runs it."""

    path: Path = Path("models/fraud/1")
    """Folder ``models/<name>/<version>/`` holding ``model.onnx`` and ``model.json``."""
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    """Overrides the model card's threshold: scores at or above it are flagged."""
    intra_op_threads: int = Field(default=0, ge=0, le=256)
    """onnxruntime intra-op threads; 0 picks one per core, at most 2 (bench/ shows why)."""
    verify_sha256: bool = True
    """Refuse a model card that lists no sha256 for its files, or any file the model loads
    (ONNX external data included) whose sha256 differs; false loads unchecked, with a warning."""
    signature: Literal["off", "verify", "require"] = "off"
    """Signature of the model folder (``model.sig``, model-signing's key format): ``verify``
    checks one when present, ``require`` also refuses an unsigned model."""
    public_key: Path | None = None
    """PEM public key the folder's signature must verify with; required unless
    ``signature`` is off."""

    @model_validator(mode="after")
    def _key_for_signature(self) -> Self:
        if self.signature != "off" and self.public_key is None:
            msg = f"model.public_key is required when model.signature is {self.signature!r}"
            raise ValueError(msg)
        return self


class BatchSettings(_Section):
    """Micro-batch shape: what has arrived, up to ``max_size``; under load, full batches."""

    max_size: int = Field(default=1000, ge=1, le=100_000)
    """Most messages consumed and scored together."""
    max_wait_ms: int = Field(default=20, ge=0, le=1000)
    """Longest wait for the first message when none has arrived; at most 1 s so a stop signal
    is noticed promptly."""
    linger_ms: int = Field(default=0, ge=0, le=1000)
    """Further wait for a batch to fill once it has a message: larger batches on a light stream
    at the cost of this much latency. 0 scores what has arrived at once."""


class DeliverySettings(_Section):
    """Delivery guarantees towards the alert and dead-letter topics."""

    mode: Literal["at-least-once", "exactly-once"] = "at-least-once"
    """``at-least-once``: offsets committed after results are acknowledged; a crash may
    re-publish the batches in flight and what was acknowledged within the last commit interval.
    ``exactly-once``: results and offsets in one Kafka transaction."""
    transactional_id: str | None = None
    """Transactional id for ``exactly-once``; defaults to ``<group_id>-<group_instance_id>``, or
    ``<group_id>-<client_id>`` without static membership. Keep it stable across restarts so a
    restarted instance fences its zombie, and distinct per instance."""
    flush_timeout_s: float = Field(default=30.0, gt=0)
    """How long a batch may wait for acknowledgements before the run fails."""
    commit_interval_ms: int = Field(default=100, ge=0, le=60_000)
    """``at-least-once``: how often acknowledged offsets are committed (asynchronously); 0
    commits after every batch. Small batches on a light stream would otherwise send the group
    coordinator a commit per batch. A crash may re-score what was acknowledged within it."""
    max_in_flight_batches: int = Field(default=4, ge=1, le=64)
    """``at-least-once``: batches whose results may still await acknowledgement while the next
    one is scored. ``1`` waits for every batch before consuming the next. A crash may re-publish
    up to this many batches (plus one whose commit was on its way)."""


class MetricsSettings(_Section):
    """Prometheus endpoint and the periodic summary log line."""

    enabled: bool = True
    """Serve ``/metrics``, ``/healthz`` and ``/readyz``."""
    host: str = "0.0.0.0"  # noqa: S104 - a scrape target must be reachable from outside the pod
    """Address the HTTP endpoint listens on."""
    port: int = Field(default=9400, ge=0, le=65535)
    """Port of the HTTP endpoint; 0 picks a free one (logged at start-up)."""
    summary_interval_s: float = Field(default=10.0, gt=0)
    """Seconds between ``progress`` summary log lines."""


class LogSettings(_Section):
    """structlog output."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    """Lowest level logged."""
    format: Literal["auto", "json", "console"] = "auto"
    """``auto``: console renderer on a terminal, JSON lines otherwise."""


class Settings(BaseSettings):
    """All settings of one stream-scorer process."""

    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        case_sensitive=False,
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    """Cluster connection and librdkafka passthrough."""
    topics: TopicSettings = Field(default_factory=TopicSettings)
    """Input, alert and dead-letter topics."""
    # ``schema`` would shadow a BaseModel attribute: the field is ``schema_``, read as
    # ``schema`` from the file and as STREAM_SCORER_SCHEMA__* from the environment.
    schema_: SchemaSettings = Field(
        default_factory=SchemaSettings,
        validation_alias=AliasChoices("schema", f"{ENV_PREFIX.lower()}schema"),
        serialization_alias="schema",
    )
    """Schemas and wire format."""
    model: ModelSettings = Field(default_factory=ModelSettings)
    """Model folder and runtime options."""
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    """Event id, time, key and projected fields of alerts."""
    batch: BatchSettings = Field(default_factory=BatchSettings)
    """Micro-batch size and wait."""
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    """Delivery guarantees."""
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    """Prometheus endpoint."""
    log: LogSettings = Field(default_factory=LogSettings)
    """Logging."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment over the TOML file over defaults."""
        del dotenv_settings, file_secret_settings  # one file and the environment are enough
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))


def _check_env_keys(environ: Mapping[str, str]) -> None:
    """Refuse ``STREAM_SCORER_*`` variables that name no section: a typo must not pass."""
    sections = {f.serialization_alias or name for name, f in Settings.model_fields.items()}
    for name in environ:
        if not name.upper().startswith(ENV_PREFIX):
            continue
        section = name[len(ENV_PREFIX) :].split(ENV_NESTED_DELIMITER, 1)[0].lower()
        if section not in sections:
            msg = f"environment variable {name}: unknown settings section {section!r}"
            raise ConfigurationError(msg)


def _format_validation_error(exc: ValidationError, source: str) -> str:
    problems = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        problems.append(f"{key}: {error['msg']} (got {error.get('input')!r})")
    return f"invalid configuration ({source}): " + "; ".join(problems)


def load_settings(
    config_path: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Load settings from ``config_path`` (TOML), the environment and ``overrides``.

    Args:
        config_path: TOML file; None uses defaults and the environment only.
        overrides: Values that beat both file and environment (command-line flags).
        environ: Checked for unknown ``STREAM_SCORER_*`` keys; defaults to ``os.environ``.

    Returns:
        The validated, frozen settings.

    Raises:
        ConfigurationError: Unreadable file, unknown key, wrong type or value; names the key.
    """
    _check_env_keys(os.environ if environ is None else environ)
    source = str(config_path) if config_path is not None else "defaults and environment"
    if config_path is not None:
        try:
            with config_path.open("rb") as fh:
                tomllib.load(fh)  # parse once here for a clear error; pydantic reads it again
        except OSError as exc:
            msg = f"cannot read config file {config_path}: {exc}"
            raise ConfigurationError(msg) from exc
        except tomllib.TOMLDecodeError as exc:
            msg = f"config file {config_path} is not valid TOML: {exc}"
            raise ConfigurationError(msg) from exc

    class _FileSettings(Settings):
        model_config = SettingsConfigDict(toml_file=config_path)

    try:
        settings = _FileSettings(**dict(overrides or {}))
    except ValidationError as exc:
        raise ConfigurationError(_format_validation_error(exc, source)) from exc
    return Settings.model_validate(settings.model_dump(by_alias=True))


def masked(config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a flat librdkafka config with secret values replaced, for logging."""
    return {
        key: "*****" if any(marker in key.lower() for marker in SECRET_MARKERS) else value
        for key, value in config.items()
    }
