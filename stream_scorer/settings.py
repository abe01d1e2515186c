"""Typed, frozen settings: one TOML file, every key overridable by an environment variable.

This is the only module that reads the environment. Precedence, highest first: environment
variables (``STREAM_SCORER_<SECTION>__<KEY>``, e.g. ``STREAM_SCORER_BATCH__MAX_SIZE=500``), the
TOML file given with ``--config``, then the defaults below. librdkafka properties pass through
verbatim from ``[kafka.common]``, ``[kafka.consumer]`` and ``[kafka.producer]``; from the
environment they are given as JSON (``STREAM_SCORER_KAFKA__CONSUMER='{"fetch.wait.max.ms": 5}'``).

Paths (every key typed as a path: ``schema.reader``, ``schema.alert``, ``schema.writers``,
``model.path``, ``kafka.sasl_password_file``...) follow one rule:

- a relative path in the TOML file resolves against **the folder of that file**, so a config
  works from any working directory;
- a path from an environment variable or a command-line override is used as given (a relative
  one resolves against the working directory, as any shell user expects);
- a key set nowhere takes its default, which names a file **shipped with the package** (the
  schemas and the fraud model): installed from a wheel it is the copy inside the package, in a
  source checkout the repository's ``schemas/`` and ``models/``;
- absolute paths are used as given, wherever they come from. librdkafka passthrough values
  (``ssl.ca.location``...) are strings, passed to librdkafka untouched.

Every problem (unknown key, wrong type, value out of range, unreadable file, an environment
value that is not JSON where JSON is expected) becomes a
:class:`~stream_scorer.errors.ConfigurationError` naming the key, and never quoting the value of a
secret, of an unknown key (a misspelt ``sasl_pasword`` is still a password) or of a whole section.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
import types
import typing
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
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from stream_scorer.errors import ConfigurationError

__all__ = [
    "ENV_PREFIX",
    "AlertSettings",
    "BatchSettings",
    "DeliverySettings",
    "KafkaSettings",
    "LabelSettings",
    "LifecycleSettings",
    "LogSettings",
    "MetricsSettings",
    "ModelSettings",
    "MonitoringSettings",
    "PrivacySettings",
    "SchemaSettings",
    "Settings",
    "TopicSettings",
    "TracingSettings",
    "load_settings",
    "masked",
    "resource_root",
]

#: Prefix of every environment variable the service reads.
ENV_PREFIX = "STREAM_SCORER_"
#: Separates a section from its key in environment variable names.
ENV_NESTED_DELIMITER = "__"
#: Substrings that mark a librdkafka property or settings key as secret: its value is masked
#: when logged and never quoted in an error. librdkafka's own secret properties are matched
#: explicitly (sasl.oauthbearer.config holds client secrets; ssl.key.pem and ssl_key the private
#: key; *.user.info is the registry client's "user:password"); the generic words catch the rest.
SECRET_MARKERS = (
    "password",
    "passwd",
    "secret",
    "token",
    "private",
    "credential",
    "key.pem",
    "ssl_key",
    "ssl.key",
    "keystore",
    "oauthbearer.config",
    "jaas",
    "user.info",
    "userinfo",
)
#: Longest quoted value in an error message; longer values are cut (a wrong value is recognised
#: by its start, and a pasted blob must not flood the terminal).
MAX_QUOTED_VALUE = 60

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
    scores: str | None = None
    """Topic for one score record per scored event (``schemas/score.avsc``: id, key, score or
    top classes, band, model, lineage), keyed like the alerts; unset: no score records."""

    @model_validator(mode="after")
    def _distinct(self) -> Self:
        names = {"input": self.input, "alerts": self.alerts, "dead_letter": self.dead_letter}
        if self.scores is not None:
            names["scores"] = self.scores
        if len(set(names.values())) != len(names):
            msg = f"topics.{', topics.'.join(names)} must differ, got {names}"
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
    scores: Path = Path("schemas/score.avsc")
    """The schema of score records (``topics.scores``); registered as
    ``<topics.scores>-value`` with the ``confluent`` wire format."""
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
    """Schema Registry base URL, or several separated by commas (failover, tried in turn);
    required for the ``confluent`` wire format. User info in it is basic auth, never logged."""
    registry_username: str | None = None
    """Basic-auth user for the registry."""
    registry_password: SecretStr | None = None
    """Basic-auth password for the registry. Never logged."""
    registry_bearer_token: SecretStr | None = None
    """Bearer token for the registry (``Authorization: Bearer``); exclusive with basic auth.
    Never logged."""
    registry_ca_file: Path | None = None
    """PEM bundle of the CAs trusted for an https registry; default: the system's."""
    registry_cert_file: Path | None = None
    """PEM client certificate for mutual TLS with the registry (may hold the key too)."""
    registry_key_file: Path | None = None
    """PEM private key of ``registry_cert_file``."""
    registry_key_password: SecretStr | None = None
    """Password of an encrypted ``registry_key_file``. Never logged."""
    registry_timeout_s: float = Field(default=5.0, gt=0)
    """Deadline of one registry HTTP attempt as a whole (connect to last byte, not per read)."""
    registry_deadline_s: float = Field(default=30.0, gt=0)
    """Deadline of one registry call, every retry and backoff included."""
    registry_retries: int = Field(default=3, ge=0, le=20)
    """Further attempts when the registry is unavailable (connection, timeout, 408/429/5xx);
    a refusal (401, 403, 409, 422...) is never retried."""
    registry_retry_backoff_s: float = Field(default=0.2, ge=0, le=10)
    """First backoff between attempts; doubles per retry up to 10 s, with full jitter."""
    registry_max_response_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, le=1 << 30)
    """Largest registry answer read; a larger one is refused (its schema id is rejected)."""
    registry_unknown_id_ttl_s: float = Field(default=30.0, ge=0)
    """How long an id without a usable schema (unknown, not Avro, too deep) is not asked for
    again: its messages are dead-lettered without a registry call meanwhile."""
    registry_subjects: tuple[str, ...] = ()
    """When set, writer schema ids are accepted only if the registry lists them under one of
    these subjects; others are rejected like unknown ids. Empty accepts any id."""
    auto_register: bool = True
    """Register ``alert`` under ``alert_subject`` at start-up. ``false`` (a registry that
    forbids registration by clients): use the subject's latest version, which must be
    ``alert``."""
    alert_subject: str | None = None
    """Registry subject for alert schemas; defaults to ``<topics.alerts>-value``."""

    @model_validator(mode="after")
    def _registry_for_confluent(self) -> Self:
        # ConfigurationError, not ValueError: pydantic passes it through as it is, so the
        # message is exactly this one, never followed by the section's values (passwords,
        # tokens, a URL with user info) as a ValidationError would be.
        problem = None
        if self.wire_format == "confluent" and not self.registry_url:
            problem = "schema.registry_url is required when schema.wire_format is 'confluent'"
        elif self.registry_key_file is not None and self.registry_cert_file is None:
            problem = "schema.registry_key_file needs schema.registry_cert_file"
        elif self.registry_bearer_token is not None and self.registry_username is not None:
            problem = "schema.registry_bearer_token and schema.registry_username are exclusive"
        elif any(
            url.strip() and url.strip().split("://", 1)[0].lower() not in {"http", "https"}
            for url in (self.registry_url or "").split(",")
        ):
            problem = "schema.registry_url: every URL must start with http:// or https://"
        if problem is not None:
            msg = f"invalid configuration: {problem}"
            raise ConfigurationError(msg)
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


class LifecycleSettings(_Section):
    """Model repository, aliases, validation gates and live promotion (``models ...``)."""

    repository: Path = Path("models")
    """Folder of ``<name>/<version>/`` model folders."""
    state_dir: Path | None = None
    """Where aliases, validation results and the history are kept; default
    ``<repository>/.lifecycle``, or ``$XDG_STATE_HOME/stream-scorer`` for the models shipped in
    an installed package (state is never written into site-packages)."""
    watch: Literal["off", "file", "kafka"] = "off"
    """``file``: the service follows ``alias`` of its model in ``state_dir`` and swaps the live
    model between batches when it moves (single instance or a shared volume); ``kafka``: the
    same, with alias changes carried to every member by ``control_topic``; ``off``: serve
    ``model.path`` only."""
    control_topic: str = Field(default="stream-scorer-models", min_length=1)
    """Compacted topic keyed by model name holding the aliases (``watch = "kafka"``); created
    on first use."""
    alias: str = Field(default="champion", min_length=1)
    """The alias the service serves and ``models promote`` moves by default."""
    poll_interval_s: float = Field(default=1.0, gt=0, le=60)
    """How often the watcher reads the aliases."""
    instance_id: str | None = None
    """Name of this instance in the history; defaults to ``<hostname>-<pid>``."""
    validation_events: int = Field(default=20_000, ge=100, le=10_000_000)
    """Labelled synthetic events ``models validate`` scores when ``--data`` is not given."""
    validation_seed: int = 20260404
    """Seed of those events (apart from the training and holdout seeds)."""
    label_field: str = "is_fraud"
    """Field holding the label in a ``--data`` file."""
    metric_margin_abs: float = Field(default=0.01, ge=0, le=1)
    """A metric may be this much (absolute) below its floor or the champion's."""
    metric_margin_rel: float = Field(default=0.05, ge=0, le=1)
    """...or this share of the champion's value below it; the larger allowance wins."""
    batch_p99_budget_ms: float = Field(default=50.0, gt=0)
    """p99 time of scoring one batch of ``batch.max_size`` rows."""
    alert_rate_ratio: float = Field(default=2.0, ge=1)
    """The alert rate must be within this factor (either way) of the champion's."""
    band_rate_ratio: float = Field(default=1.5, ge=1)
    """Each decision band's share of the events (a card with ``decision.bands``), and each
    class's share of top-1 predictions (multiclass), within this factor (either way) of the
    champion's."""
    auto_rollback: bool = True
    """Roll a promotion back unattended when, within ``watch_period_s``, the new version
    breaks one of the bounds below relative to the version it replaced."""
    watch_period_s: float = Field(default=300.0, gt=0)
    """How long after a swap its rules are watched."""
    rollback_min_events: int = Field(default=2000, ge=1)
    """Events the new version must have scored before its alert rate is judged."""
    rollback_alert_rate_ratio: float = Field(default=3.0, gt=1)
    """Roll back when the alert rate exceeds the previous version's by this factor."""
    rollback_latency_ratio: float = Field(default=3.0, gt=1)
    """Roll back when the mean time of the score stage exceeds the previous one's by this."""
    rollback_max_bisections: int = Field(default=0, ge=0)
    """Roll back when more batches than this had to be bisected (a failing model run)."""


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
    """Prometheus endpoint, probes and the periodic summary log line."""

    enabled: bool = True
    """Serve ``/metrics``, ``/healthz`` and ``/readyz``."""
    host: str = "127.0.0.1"
    """Address the HTTP endpoint listens on. Loopback by default: set ``0.0.0.0`` (as the
    container image and the Kubernetes manifests do) for a scrape from outside the host."""
    port: int = Field(default=9400, ge=0, le=65535)
    """Port of the HTTP endpoint; 0 picks a free one (logged at start-up)."""
    summary_interval_s: float = Field(default=10.0, gt=0)
    """Seconds between ``progress`` summary log lines."""
    liveness_timeout_s: float = Field(default=180.0, gt=0)
    """``/healthz`` fails (503) once one loop iteration has run this long, or no batch has
    completed this long while the consumer reports lag: a stuck loop is restarted by the
    orchestrator. Keep it above ``delivery.flush_timeout_s`` plus the commit allowance (60 s)."""
    tls_cert_file: Path | None = None
    """PEM certificate chain: serve the endpoint over HTTPS."""
    tls_key_file: Path | None = None
    """PEM private key of ``tls_cert_file``."""
    basic_auth_username: str | None = None
    """Require HTTP basic auth for ``/metrics`` (the probes stay open for the kubelet)."""
    basic_auth_password: SecretStr | None = None
    """Basic-auth password; prefer ``basic_auth_password_file``. Never logged."""
    basic_auth_password_file: Path | None = None
    """File whose content (stripped) is the basic-auth password."""

    @model_validator(mode="after")
    def _endpoint_options(self) -> Self:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            msg = "metrics.tls_cert_file and metrics.tls_key_file go together; set both or none"
            raise ValueError(msg)
        if self.basic_auth_password is not None and self.basic_auth_password_file is not None:
            msg = "metrics.basic_auth_password and metrics.basic_auth_password_file are exclusive"
            raise ValueError(msg)
        has_password = (self.basic_auth_password or self.basic_auth_password_file) is not None
        if has_password and self.basic_auth_username is None:
            msg = "metrics.basic_auth_username is required with a basic-auth password"
            raise ValueError(msg)
        return self

    def auth_password(self) -> str | None:
        """The basic-auth password from the setting or its file, or None.

        Raises:
            ConfigurationError: The password file cannot be read.
        """
        if self.basic_auth_password_file is not None:
            try:
                return self.basic_auth_password_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                msg = (
                    f"metrics.basic_auth_password_file: cannot read "
                    f"{self.basic_auth_password_file}: {exc.strerror}"
                )
                raise ConfigurationError(msg) from exc
        if self.basic_auth_password is not None:
            return self.basic_auth_password.get_secret_value()
        return None


FieldAction = Literal["keep", "pseudonymise", "redact", "drop"]


class PrivacySettings(_Section):
    """What leaves the scorer of personal data: per field, and dead-letter payloads."""

    key: FieldAction = "keep"
    """Action on the Kafka key of alerts and dead letters (the card id for the shipped fraud
    model): ``keep``, ``pseudonymise`` (keyed HMAC-SHA256: equal keys stay equal, so
    partitioning and per-entity order hold), ``redact`` or ``drop`` (a null key)."""
    fields: dict[str, FieldAction] = Field(default_factory=dict)
    """Actions by input field (projected onto alerts) and by header name (headers a dead
    letter copies from its input record); unnamed ones are kept."""
    pseudonymise_key: SecretStr | None = None
    """HMAC key, hex, at least 32 bytes; prefer ``pseudonymise_key_file`` or the environment.
    Never logged."""
    pseudonymise_key_file: Path | None = None
    """File holding the HMAC key (hex)."""
    dead_letter_payload: Literal["keep", "encrypt"] = "keep"
    """``keep``: dead letters hold the original value bytes (personal data: protect the topic).
    ``encrypt``: AES-256-GCM under ``dead_letter_key``, key id in a header;
    ``stream-scorer dead-letters replay`` decrypts and re-injects them."""
    dead_letter_key: SecretStr | None = None
    """AES-256 key, 64 hex digits; prefer ``dead_letter_key_file`` or the environment."""
    dead_letter_key_file: Path | None = None
    """File holding the AES-256 key (64 hex digits)."""
    dead_letter_key_id: str = "1"
    """Names the key in each encrypted dead letter, so keys can be rotated."""

    @model_validator(mode="after")
    def _key_sources(self) -> Self:
        for name in ("pseudonymise_key", "dead_letter_key"):
            if getattr(self, name) is not None and getattr(self, f"{name}_file") is not None:
                msg = f"privacy.{name} and privacy.{name}_file are exclusive; set one"
                raise ValueError(msg)
        if self.dead_letter_payload == "encrypt" and (
            self.dead_letter_key is None and self.dead_letter_key_file is None
        ):
            msg = "privacy.dead_letter_payload = 'encrypt' needs dead_letter_key_file or the key"
            raise ValueError(msg)
        return self

    def secret(self, name: Literal["pseudonymise_key", "dead_letter_key"]) -> str | None:
        """A key's text from its setting or its file, or None.

        Raises:
            ConfigurationError: The key file cannot be read (the message never shows a key).
        """
        path: Path | None = getattr(self, f"{name}_file")
        if path is not None:
            try:
                return path.read_text(encoding="utf-8").strip()
            except OSError as exc:
                msg = f"privacy.{name}_file: cannot read {path}: {exc.strerror}"
                raise ConfigurationError(msg) from exc
        value: SecretStr | None = getattr(self, name)
        return None if value is None else value.get_secret_value()


class TracingSettings(_Section):
    """Optional OpenTelemetry spans, one per batch (the ``tracing`` extra)."""

    enabled: bool = False
    """Emit a ``stream_scorer.batch`` span per batch, linked to its events' traces. Off, it
    costs nothing."""
    exporter: Literal["otlp", "console"] = "otlp"
    """``otlp``: OTLP over HTTP, configured by the standard ``OTEL_EXPORTER_OTLP_*``
    variables; ``console``: spans printed to stdout (trying it out)."""
    service_name: str = "stream-scorer"
    """The ``service.name`` resource attribute of the spans."""


class MonitoringSettings(_Section):
    """Drift windows and thresholds, shadow models and their time budget (issue 11)."""

    drift: bool = True
    """Watch drift per input and of the score against the model card's ``reference`` (a card
    without one is not watched)."""
    window_events: int = Field(default=50_000, ge=0)
    """A drift window closes once it holds this many events (0: no count limit)."""
    window_seconds: float = Field(default=300.0, ge=0)
    """A drift window closes once this many seconds have passed (0: no time limit) ..."""
    min_window_events: int = Field(default=1000, ge=1)
    """... provided it holds at least this many events."""
    thresholds: Literal["fixed", "learned"] = "fixed"
    """``fixed``: ``psi_warn``/``psi_alert``; ``learned``: mean + ``sigmas`` standard deviations
    of the PSI over the card's reference chunks, scaled to the window's size."""
    psi_warn: float = Field(default=0.1, gt=0)
    """Fixed thresholds: PSI at which an input is listed as worth watching."""
    psi_alert: float = Field(default=0.25, gt=0)
    """Fixed thresholds: PSI at which an input's drift alarms (one warning per window)."""
    sigmas: float = Field(default=3.0, gt=0)
    """Learned thresholds: standard deviations above the mean reference chunk PSI."""
    drift_max_share: float = Field(default=0.05, gt=0, le=1)
    """Most drift time as a share of the pipeline's time: past it whole batches are left out
    of the windows (counted in ``stream_scorer_drift_records_skipped_total``); 1 counts all."""
    shadows: tuple[Path, ...] = ()
    """Model folders scored as shadows on every batch (never published), compared with the
    champion."""
    canary: Path | None = None
    """Model folder of the canary: it decides (and publishes, labelled with its version) the
    events whose key hashes into ``canary_fraction``; the champion the rest."""
    canary_fraction: float = Field(default=0.0, ge=0.0, le=1.0)
    """Share of events (by key hash, sticky per key) the canary decides."""
    shadow_max_ratio: float = Field(default=2.0, gt=0)
    """A shadow batch is over budget above this multiple of the champion's featurize + score
    time ..."""
    shadow_min_budget_ms: float = Field(default=5.0, ge=0)
    """... and above this many milliseconds."""
    shadow_strikes: int = Field(default=3, ge=1)
    """Consecutive batches over budget before a shadow is dropped (with a warning)."""
    disagreements_per_minute: int = Field(default=10, ge=0)
    """Most ``model_disagreement`` log lines (the largest score differences) per minute."""
    shadow_topic: str | None = Field(default=None, min_length=1)
    """Topic the shadows' flagged events go to, in the alert schema, marked shadow (header
    ``stream-scorer-role: shadow``, the shadow's model name and version); off when unset. In
    exactly-once mode they are part of the batch's transaction."""

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.window_events == 0 and self.window_seconds == 0:
            msg = "monitoring.window_events and monitoring.window_seconds cannot both be 0"
            raise ValueError(msg)
        if (self.canary is None) != (self.canary_fraction == 0):
            msg = "monitoring.canary and monitoring.canary_fraction > 0 go together"
            raise ValueError(msg)
        if self.psi_warn > self.psi_alert:
            msg = "monitoring.psi_warn must not exceed monitoring.psi_alert"
            raise ValueError(msg)
        return self


class LabelSettings(_Section):
    """Performance after labels: the labels topic, its format and the join's bounds (issue 11)."""

    topic: str | None = None
    """Topic of labels (event id -> outcome), read by a consumer of its own; unset: off."""
    group_id: str | None = None
    """Consumer group of the labels consumer (default ``<kafka.group_id>-labels``); it never
    touches the main group or its offsets."""
    offset_reset: Literal["latest", "earliest"] = "latest"
    """Where a new labels group starts: ``latest`` skips labels of events scored before any
    instance ran (they could match nothing)."""
    format: Literal["json", "avro"] = "json"
    """``json``: a JSON object value; ``avro``: Confluent-framed Avro (writer schema from
    ``schema.registry_url``)."""
    id_field: str | None = "event_id"
    """Field of the label holding the event id (the alert's ``event_id``); unset, or absent
    from a label: the message key is the event id."""
    outcome_field: str = "outcome"
    """Field of the label holding the outcome."""
    positive: tuple[str, ...] = ("1", "true")
    """Outcomes that count as positive, compared as lower-case text (``true``/``false`` for
    booleans); any other outcome is negative."""
    max_age_s: float = Field(default=86_400.0, gt=0)
    """How long a scored event waits for its label; past it the event is counted as unlabelled
    (``missing = "negative"``: as a negative) and forgotten."""
    max_pending: int = Field(default=1_000_000, ge=1)
    """Most scored events held waiting for labels (memory cap); past it the oldest are evicted,
    counted."""
    held_max_age_s: float = Field(default=600.0, gt=0)
    """How long a label whose event has not been scored (yet) is held; past it, counted as
    unmatched and dropped."""
    max_held: int = Field(default=100_000, ge=1)
    """Most such labels held; past it the oldest are evicted, counted."""
    missing: Literal["ignore", "negative"] = "ignore"
    """A scored event whose label never came: ``ignore`` (only labelled events count) or
    ``negative`` (label sources that report positives only, such as chargebacks)."""
    log_every: int = Field(default=1000, ge=1)
    """One ``labels_matched`` log line (precision and recall per model version) per this many
    matched labels."""

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if not self.positive:
            msg = "labels.positive must name at least one outcome"
            raise ValueError(msg)
        if not self.outcome_field:
            msg = "labels.outcome_field must not be empty"
            raise ValueError(msg)
        return self


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
    privacy: PrivacySettings = Field(default_factory=PrivacySettings)
    """Pseudonymise, redact or drop personal fields; encrypt dead-letter payloads."""
    batch: BatchSettings = Field(default_factory=BatchSettings)
    """Micro-batch size and wait."""
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    """Delivery guarantees."""
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    """Prometheus endpoint."""
    tracing: TracingSettings = Field(default_factory=TracingSettings)
    """OpenTelemetry spans per batch."""
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)
    """Drift, shadow models and their comparison."""
    labels: LabelSettings = Field(default_factory=LabelSettings)
    """Realized precision and recall from a labels topic."""
    log: LogSettings = Field(default_factory=LogSettings)
    """Logging."""
    lifecycle: LifecycleSettings = Field(default_factory=LifecycleSettings)
    """Model repository, validation gates, live promotion."""

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


def _is_secret_name(name: str) -> bool:
    lowered = name.lower()
    return any(marker in lowered for marker in SECRET_MARKERS)


def _field_is_secret(loc: tuple[int | str, ...]) -> bool:
    """Whether ``loc`` names a field typed ``SecretStr`` (whatever its name says)."""
    model: Any = Settings
    for part in loc:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return False
        field = next(
            (
                info
                for name, info in model.model_fields.items()
                if part in (name, info.serialization_alias)
            ),
            None,
        )
        if field is None:
            return False
        if SecretStr in _annotation_types(field.annotation):
            return True
        model = field.annotation
    return False


def _annotation_types(annotation: Any) -> set[Any]:
    """The types an annotation admits: ``Path | None`` → {Path, NoneType}."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return {t for arg in typing.get_args(annotation) for t in _annotation_types(arg)}
    return {annotation}


def _quote(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= MAX_QUOTED_VALUE else text[: MAX_QUOTED_VALUE - 3] + "..."


def _format_validation_error(exc: ValidationError, source: str) -> str:
    """One line naming every bad key, quoting a value only where that cannot leak a secret.

    A value is quoted only when it is a plain scalar of a known, non-secret key. Never quoted: a
    key whose name or type says secret, an unknown key (``sasl_pasword = "..."`` is a password
    with a typo), and a whole section or table (a cross-field rule reports its section, which
    holds the password next to the faulty key).
    """
    problems = []
    for error in exc.errors(include_url=False):
        loc = error["loc"]
        key = ".".join(str(part) for part in loc) or "(top level)"
        value = error.get("input")
        if error["type"] == "extra_forbidden":
            problems.append(f"{key}: unknown key")
            continue
        quotable = (
            isinstance(value, str | int | float | bool)
            and not any(_is_secret_name(str(part)) for part in loc)
            and not _field_is_secret(loc)
        )
        got = f" (got {_quote(value)})" if quotable else ""
        problems.append(f"{key}: {error['msg']}{got}")
    return f"invalid configuration ({source}): " + "; ".join(problems)


#: A nested environment variable: STREAM_SCORER_<SECTION>__<KEY>.
_ENV_KEY = re.compile(
    rf"^{ENV_PREFIX}(?P<section>[A-Za-z0-9_]+?){ENV_NESTED_DELIMITER}(?P<key>[A-Za-z0-9_]+)$",
    re.IGNORECASE,
)


def _check_env_json(environ: Mapping[str, str]) -> None:
    """Refuse a variable for a table (``kafka.common``...) whose value is not a JSON object.

    pydantic-settings would raise a bare ``SettingsError`` naming only the section; this names
    the variable (never its value, which may hold ``sasl.password``).
    """
    for name, value in environ.items():
        match = _ENV_KEY.match(name)
        if match is None:
            continue
        field = _section_field(match["section"].lower(), match["key"].lower())
        if field is None or not any(
            typing.get_origin(t) is dict or t is dict for t in _annotation_types(field.annotation)
        ):
            continue
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            msg = (
                f"environment variable {name}: not a JSON object; give librdkafka properties "
                "as JSON, e.g. '{\"fetch.wait.max.ms\": 5}'"
            )
            raise ConfigurationError(msg)


def _section_field(section: str, key: str) -> Any:
    for name, info in Settings.model_fields.items():
        if section in (name, info.serialization_alias):
            model = info.annotation
            if isinstance(model, type) and issubclass(model, BaseModel):
                return model.model_fields.get(key)
    return None


def resource_root() -> Path:
    """The folder holding the shipped ``schemas/``, ``models/`` and ``scorer.example.toml``.

    In an installed wheel it is ``stream_scorer/resources`` (setup.py copies the files there at
    build time); in a source checkout or an editable install, the repository root.
    """
    package = Path(__file__).resolve().parent
    installed = package / "resources"
    return installed if installed.is_dir() else package.parent


def _path_keys() -> dict[str, set[str]]:
    """Keys typed as paths, per section (by their TOML name): they follow the path rule."""
    keys: dict[str, set[str]] = {}
    for name, info in Settings.model_fields.items():
        model = info.annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            continue
        section = info.serialization_alias or name
        for key, field in model.model_fields.items():
            admitted = _annotation_types(field.annotation)
            if Path in admitted or any(
                typing.get_origin(t) is tuple and Path in typing.get_args(t) for t in admitted
            ):
                keys.setdefault(section, set()).add(key)
    return keys


def _resolve_file_paths(data: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The TOML data with relative path values made absolute against ``folder``."""

    def resolve(value: Any) -> Any:
        if isinstance(value, str) and value and not Path(value).is_absolute():
            return str(folder / value)
        if isinstance(value, list):
            return [resolve(v) for v in value]
        return value

    for section, keys in _path_keys().items():
        table = data.get(section)
        if isinstance(table, dict):
            for key in keys & table.keys():
                table[key] = resolve(table[key])
    return data


def _resolve_defaults(settings: Settings, dumped: dict[str, Any]) -> dict[str, Any]:
    """Relative defaults of path keys set nowhere point into :func:`resource_root`."""
    root = resource_root()
    for name, info in Settings.model_fields.items():
        section_name = info.serialization_alias or name
        section = getattr(settings, name)
        for key in _path_keys().get(section_name, set()) - section.model_fields_set:
            value = getattr(section, key)
            if isinstance(value, Path) and not value.is_absolute():
                dumped[section_name][key] = root / value
    return dumped


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
    env = os.environ if environ is None else environ
    _check_env_keys(env)
    _check_env_json(env)
    source = str(config_path) if config_path is not None else "defaults and environment"
    data: dict[str, Any] = {}
    if config_path is not None:
        try:
            with config_path.open("rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            msg = f"cannot read config file {config_path}: {exc}"
            raise ConfigurationError(msg) from exc
        except tomllib.TOMLDecodeError as exc:
            msg = f"config file {config_path} is not valid TOML: {exc}"
            raise ConfigurationError(msg) from exc
        data = _resolve_file_paths(data, config_path.absolute().parent)

    class _FileSettings(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            # The file's data with its paths already resolved, below the environment.
            del dotenv_settings, file_secret_settings
            return (init_settings, env_settings, InitSettingsSource(settings_cls, data))

    try:
        settings = _FileSettings(**dict(overrides or {}))
    except ValidationError as exc:
        raise ConfigurationError(_format_validation_error(exc, source)) from exc
    except SettingsError as exc:
        # Only reached for a source problem _check_env_json did not foresee; its message
        # names the section and the source, never the value.
        msg = f"invalid configuration ({source}): {exc}"
        raise ConfigurationError(msg) from exc
    dumped = _resolve_defaults(settings, settings.model_dump(by_alias=True))
    return Settings.model_validate(dumped)


def masked(config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a flat librdkafka config with secret values replaced, for logging.

    A key is secret when its name contains one of :data:`SECRET_MARKERS` (``sasl.password``,
    ``sasl.oauthbearer.config``, ``ssl.key.password``, ``ssl.keystore.password``, ``ssl.key.pem``
    ...). Callables (callbacks) and loggers are shown by their type name only.
    """
    shown: dict[str, Any] = {}
    for key, value in config.items():
        if _is_secret_name(key):
            shown[key] = "*****"
        elif callable(value) or not isinstance(value, str | int | float | bool | None):
            shown[key] = f"<{type(value).__name__}>"
        else:
            shown[key] = value
    return shown
