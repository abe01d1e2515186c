"""The composition root: settings → registry → decoder → model set → pipeline → delivery → runner.

Every collaborator of the service is built here, from settings, and handed to the runner,
which constructs nothing. ``config check`` and ``score-file`` use the same builders, so the
offline scorer and the stream get the same decoder, model binding, threshold and event fields.

:func:`build_runner` loads and checks everything that does not need Kafka first (schemas,
models, binding, batch-time bounds), so a bad config or a bad model stops the process before it
joins the group; Kafka clients are created last and connect only when the runner starts.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import fastavro
import structlog
from confluent_kafka import KafkaError
from prometheus_client import REGISTRY, CollectorRegistry

from stream_scorer import __version__
from stream_scorer.consume import BatchConsumer, consumer_config, max_poll_interval_s
from stream_scorer.dead_letter import DeadLetterWriter
from stream_scorer.decode import AvroDecoder, ColumnarAvroDecoder, Framing, fingerprint, frame_body
from stream_scorer.delivery import Delivery
from stream_scorer.delivery.at_least_once import AtLeastOnceDelivery
from stream_scorer.delivery.commit import OffsetCommitter
from stream_scorer.delivery.exactly_once import ExactlyOnceDelivery
from stream_scorer.delivery.publish import (
    TXN_CALL_TIMEOUT_S,
    Publisher,
    TransactionalPublisher,
    producer_config,
    transaction_timeout_s,
)
from stream_scorer.encode import AlertEncoder, EventFields, ScoreEncoder
from stream_scorer.errors import ConfigurationError, FatalError
from stream_scorer.integrity import IntegrityPolicy
from stream_scorer.lifecycle.service import start_watcher
from stream_scorer.logging import librdkafka_logger
from stream_scorer.metrics import EndpointSecurity, Health, MetricsServer, ScorerMetrics
from stream_scorer.model_card import ModelCard
from stream_scorer.model_set import LiveModels, LoadedModel, ModelSet
from stream_scorer.model_set import load_model as load_model_folder
from stream_scorer.monitoring.setup import build_labels_consumer, build_monitor, check_shadows
from stream_scorer.pipeline import Pipeline
from stream_scorer.privacy import PayloadCipher, PrivacyPolicy, Pseudonymiser, decode_key
from stream_scorer.records import BatchResult
from stream_scorer.registry import RegistryError, RegistryUnavailableError, SchemaRegistryClient
from stream_scorer.runner import Runner
from stream_scorer.settings import Settings, masked
from stream_scorer.tracing import build_tracer

__all__ = [
    "COMMIT_ALLOWANCE_S",
    "build_alert_encoder",
    "build_decoder",
    "build_models",
    "build_privacy",
    "build_registry",
    "build_runner",
    "build_score_encoder",
    "check_batch_time_bounds",
    "event_fields",
    "load_model",
    "load_schema",
]

log = structlog.get_logger(__name__)

#: Longest a batch's commit may take after its flush: sending the offsets and committing the
#: transaction, each bounded by the publisher's transactional call timeout.
COMMIT_ALLOWANCE_S = 2 * TXN_CALL_TIMEOUT_S


def load_schema(path: Path, key: str) -> dict[str, Any]:
    """Read and parse an ``.avsc`` file.

    Raises:
        ConfigurationError: Unreadable file or invalid schema, naming ``key``.
    """
    try:
        schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        fastavro.parse_schema(schema)
    except OSError as exc:
        msg = f"{key}: cannot read schema {path}: {exc}"
        raise ConfigurationError(msg) from exc
    except (json.JSONDecodeError, fastavro.schema.SchemaParseException, ValueError) as exc:
        msg = f"{key}: {path} is not a valid Avro schema: {exc}"
        raise ConfigurationError(msg) from exc
    return schema


def build_registry(settings: Settings) -> SchemaRegistryClient | None:
    """The registry client when the wire format needs one (no network call is made)."""
    if settings.schema_.wire_format != "confluent":
        return None
    return SchemaRegistryClient.from_settings(settings.schema_)


def build_decoder(
    settings: Settings, reader: Mapping[str, Any], registry: SchemaRegistryClient | None
) -> ColumnarAvroDecoder | AvroDecoder:
    """The decoder for the configured wire format and decoder kind."""
    writers = [load_schema(path, "schema.writers") for path in settings.schema_.writers]
    framing = Framing(reader, settings.schema_.wire_format, writers, registry)
    kind = ColumnarAvroDecoder if settings.schema_.decoder == "columnar" else AvroDecoder
    return kind(framing)


def load_model(settings: Settings, reader: Mapping[str, Any]) -> LoadedModel:
    """Load the configured model (``model.path``), bind it to the reader schema, warm it up.

    Raises:
        ConfigurationError: Bad card, unbindable input, wrong file hash, a model that fails.
    """
    model = settings.model
    integrity = IntegrityPolicy(model.verify_sha256, model.signature, model.public_key)
    loaded = load_model_folder(
        model.path, reader, model.intra_op_threads, model.verify_sha256, model.threshold, integrity
    )
    try:
        loaded.card.policy.at_threshold(loaded.threshold)
    except ValueError as exc:
        msg = f"model.threshold: {exc}"
        raise ConfigurationError(msg) from exc
    return loaded


def build_models(settings: Settings, reader: Mapping[str, Any]) -> ModelSet:
    """The model set the service starts with: the configured model as champion, and the
    ``monitoring.shadows`` and ``monitoring.canary`` (issue 11).

    Raises:
        ConfigurationError: The model cannot be loaded, bound or warmed up.
    """
    champion = load_model(settings, reader)
    model = settings.model
    shadows = tuple(
        load_model_folder(path, reader, model.intra_op_threads, model.verify_sha256)
        for path in settings.monitoring.shadows
    )
    monitoring = settings.monitoring
    canary = (
        None
        if monitoring.canary is None
        else load_model_folder(
            monitoring.canary, reader, model.intra_op_threads, model.verify_sha256
        )
    )
    check_shadows(champion, shadows if canary is None else (canary, *shadows))
    return ModelSet(champion, shadows, canary, monitoring.canary_fraction)


def event_fields(settings: Settings, card: ModelCard, reader: Mapping[str, Any]) -> EventFields:
    """Which input fields give an alert its id, time, key and projection.

    The ``[alerts]`` settings win; the model card's ``event`` section fills what they leave
    unset. Every named field must exist in the reader schema.

    Raises:
        ConfigurationError: A named field is not in the reader schema (names the key).
    """
    alerts = settings.alerts
    chosen = {
        "alerts.event_id_field": alerts.event_id_field or card.event_id_field,
        "alerts.event_time_field": alerts.event_time_field or card.event_time_field,
        "alerts.key_field": alerts.key_field or card.key_field,
    }
    names = {f["name"] for f in reader.get("fields", [])}
    for key, name in [*chosen.items(), *(("alerts.projection", p) for p in alerts.projection)]:
        if name is not None and name not in names:
            msg = f"{key}: field {name!r} is not in the reader schema {reader.get('name')}"
            raise ConfigurationError(msg)
    return EventFields(
        id_field=chosen["alerts.event_id_field"],
        time_field=chosen["alerts.event_time_field"],
        key_field=chosen["alerts.key_field"],
        projection=tuple(alerts.projection),
    )


def build_alert_encoder(
    settings: Settings,
    registry: SchemaRegistryClient | None,
    fields: EventFields | None = None,
    privacy: PrivacyPolicy | None = None,
) -> AlertEncoder:
    """The alert encoder, framing alerts in the same wire format as the input.

    Raises:
        ConfigurationError: The alert schema cannot be read, or the registry refused it.
        FatalError: The registry is unavailable after its retries.
    """
    schema = load_schema(settings.schema_.alert, "schema.alert")
    subject = settings.schema_.alert_subject or f"{settings.topics.alerts}-value"
    header = _frame_header(settings, registry, schema, subject, "schema.alert_subject")
    return AlertEncoder(schema, header, __version__, fields, privacy)


def build_score_encoder(
    settings: Settings,
    registry: SchemaRegistryClient | None,
    fields: EventFields | None = None,
    privacy: PrivacyPolicy | None = None,
) -> ScoreEncoder | None:
    """The score-record encoder when ``topics.scores`` is set (same wire format as alerts).

    Raises:
        ConfigurationError: The score schema cannot be read, or the registry refused it.
        FatalError: The registry is unavailable after its retries.
    """
    if settings.topics.scores is None:
        return None
    schema = load_schema(settings.schema_.scores, "schema.scores")
    subject = f"{settings.topics.scores}-value"
    header = _frame_header(settings, registry, schema, subject, "topics.scores")
    return ScoreEncoder(schema, header, fields, privacy)


def _frame_header(
    settings: Settings,
    registry: SchemaRegistryClient | None,
    schema: dict[str, Any],
    subject: str,
    key: str,
) -> bytes:
    """The frame prefix of one output schema in the configured wire format."""
    if settings.schema_.wire_format == "confluent":
        if registry is None:
            msg = f"schema.registry_url is needed to register the schema of {subject}"
            raise ConfigurationError(msg)
        try:
            schema_id = registry.alert_schema_id(subject, schema, settings.schema_.auto_register)
        except RegistryUnavailableError as exc:
            raise FatalError(str(exc)) from exc  # an outage, not a configuration problem
        except RegistryError as exc:
            msg = f"{key} {subject!r} (schema.auto_register): {exc}"
            raise ConfigurationError(msg) from exc
        return frame_body("confluent", b"", schema_id=schema_id)
    if settings.schema_.wire_format == "single-object":
        log.debug(
            "output_schema_fingerprint", subject=subject, fingerprint=f"{fingerprint(schema):016x}"
        )
        return frame_body("single-object", b"", schema=schema)
    return b""


def build_privacy(settings: Settings) -> tuple[PrivacyPolicy, PayloadCipher | None]:
    """The privacy policy and, when dead-letter payloads are encrypted, the cipher.

    Raises:
        ConfigurationError: A key is missing, unreadable or malformed (never shown).
    """
    privacy = settings.privacy
    text = privacy.secret("pseudonymise_key")
    pseudonymiser = (
        None
        if text is None
        else Pseudonymiser(decode_key(text, "privacy.pseudonymise_key", length=None))
    )
    policy = PrivacyPolicy(privacy.key, dict(privacy.fields), pseudonymiser)
    cipher = None
    if privacy.dead_letter_payload == "encrypt":
        key = privacy.secret("dead_letter_key")
        assert key is not None  # noqa: S101 - the settings validator requires one
        cipher = PayloadCipher(
            decode_key(key, "privacy.dead_letter_key"), privacy.dead_letter_key_id
        )
    return policy, cipher


def check_batch_time_bounds(
    flush_timeout_s: float,
    max_wait_s: float,
    consumer: Mapping[str, Any],
    producer: Mapping[str, Any],
) -> None:
    """Refuse timeouts that would let one batch outlive the group session or its transaction.

    A batch's time (the wait to fill it, scoring, the publish bounded by
    ``delivery.flush_timeout_s``, the commit bounded by :data:`COMMIT_ALLOWANCE_S`) must stay
    under ``max.poll.interval.ms`` or the member is thrown out of the group mid-batch. In
    exactly-once mode the transaction spans the publish and the commit, so
    ``transaction.timeout.ms`` must leave room for both: the flush may take at most half of it.

    Raises:
        ConfigurationError: The timeouts do not fit together, naming the keys to change.
    """
    batch_s = max_wait_s + flush_timeout_s + COMMIT_ALLOWANCE_S
    poll_s = max_poll_interval_s(consumer)
    if batch_s >= poll_s:
        msg = (
            f"delivery.flush_timeout_s={flush_timeout_s}: a batch may take up to {batch_s:.0f} s "
            f"(wait + flush + {COMMIT_ALLOWANCE_S:.0f} s commit), not under the consumer's "
            f"max.poll.interval.ms ({poll_s * 1000:.0f}); lower the flush timeout or raise "
            "kafka.consumer max.poll.interval.ms"
        )
        raise ConfigurationError(msg)
    txn_s = transaction_timeout_s(producer)
    if txn_s is not None and 2 * flush_timeout_s > txn_s:
        msg = (
            f"delivery.flush_timeout_s={flush_timeout_s} must be at most half the producer's "
            f"transaction.timeout.ms ({txn_s * 1000:.0f}) so a batch's transaction is committed "
            "before the coordinator aborts it"
        )
        raise ConfigurationError(msg)


def _live_models(models: ModelSet, metrics: ScorerMetrics, topic: str) -> LiveModels:
    """The live set, whose every replacement updates the live-model metrics."""

    def on_replace(new: ModelSet) -> None:
        metrics.model_swaps.inc()
        card = new.champion.card
        metrics.init_labels(topic, card.name, card.version, card.policy.names)
        metrics.set_model(card.name, card.version, card.sha256 or "", card.input_layout)

    return LiveModels(models, on_replace)


def endpoint_security(settings: Settings) -> EndpointSecurity:
    """TLS and basic auth of the metrics endpoint, from ``[metrics]``.

    Raises:
        ConfigurationError: The basic-auth password file cannot be read.
    """
    endpoint = settings.metrics
    return EndpointSecurity(
        cert_file=None if endpoint.tls_cert_file is None else str(endpoint.tls_cert_file),
        key_file=None if endpoint.tls_key_file is None else str(endpoint.tls_key_file),
        username=endpoint.basic_auth_username,
        password=endpoint.auth_password(),
    )


def _transactional_id(settings: Settings) -> str:
    # Stable across restarts (a restart fences its zombie and aborts its open transaction at
    # once) and distinct per static member, so that members of one group do not fence each other.
    kafka = settings.kafka
    return (
        settings.delivery.transactional_id
        or f"{kafka.group_id}-{kafka.group_instance_id or kafka.client_id}"
    )


def build_runner(
    settings: Settings,
    registry: CollectorRegistry = REGISTRY,
    on_batch: Callable[[BatchResult], None] | None = None,
    stop: threading.Event | None = None,
) -> Runner:
    """Build the whole service from settings; the returned runner's :meth:`~Runner.run` starts it.

    Args:
        settings: Validated settings.
        registry: Prometheus registry the metrics go to (tests pass a fresh one).
        on_batch: Told of every batch once its results are safe (the demo's view).
        stop: Event a signal handler installed before start-up sets.

    Raises:
        ConfigurationError: Settings, schemas and models do not fit together.
    """
    metrics = ScorerMetrics(registry)
    health = Health()
    # 1. What needs no network: schemas, models, binding, the batch-time bounds.
    reader = load_schema(settings.schema_.reader, "schema.reader")
    models = build_models(settings, reader)
    champion = models.champion
    fields = event_fields(settings, champion.card, reader)
    privacy, cipher = build_privacy(settings)
    metrics.init_labels(
        settings.topics.input, champion.name, champion.version, champion.card.policy.names
    )
    metrics.set_model(
        champion.name, champion.version, champion.card.sha256 or "", champion.card.input_layout
    )
    exactly_once = settings.delivery.mode == "exactly-once"
    client = settings.kafka.client_config()
    pconf = producer_config(
        client, settings.kafka.producer, _transactional_id(settings) if exactly_once else None
    )
    cconf = consumer_config(
        client,
        settings.kafka.group_id,
        settings.kafka.consumer,
        settings.kafka.group_instance_id,
        isolation_level="read_committed" if exactly_once else None,
    )
    check_batch_time_bounds(
        settings.delivery.flush_timeout_s,
        (settings.batch.max_wait_ms + settings.batch.linger_ms) / 1000.0,
        cconf,
        pconf,
    )
    # 2. The registry (the alert schema is registered now), decoder, encoder, pipeline.
    schema_registry = build_registry(settings)
    if schema_registry is not None:
        schema_registry.on_call = metrics.observe_registry
    decoder = build_decoder(settings, reader, schema_registry)
    encoder = build_alert_encoder(settings, schema_registry, fields, privacy)
    encoder.check_policy(champion.card.policy, champion.label)
    score_encoder = build_score_encoder(settings, schema_registry, fields, privacy)

    live = _live_models(models, metrics, settings.topics.input)
    # lifecycle.watch: follow the model's alias, swapping between batches (one stop event ends
    # the watcher with the runner).
    stop = stop if stop is not None else threading.Event()
    start_watcher(settings, live, reader, registry, stop)
    pipeline = Pipeline(
        decoder,
        live,
        encoder,
        settings.topics.alerts,
        settings.topics.dead_letter,
        __version__,
        metrics,
        dead_letters=DeadLetterWriter(__version__, privacy, cipher),
        scores_topic=settings.topics.scores,
        score_encoder=score_encoder,
        # labels.topic: the monitor also records decisions into the label join.
        monitor=(monitor := build_monitor(settings, registry, live, encoder, fields.id_field)),
        shadow_topic=settings.monitoring.shadow_topic,
    )
    log.info(
        "connecting",
        version=__version__,
        delivery=settings.delivery.mode,
        input=settings.topics.input,
        alerts=settings.topics.alerts,
        dead_letter=settings.topics.dead_letter,
        scores=settings.topics.scores,
        models=models.describe(),
        consumer_config=masked(cconf),
        producer_config=masked(pconf),
    )

    # 3. Kafka clients (they connect when the runner starts) and the delivery strategy.
    # The callbacks reach the runner built below; librdkafka calls them only once it runs.
    def on_kafka_error(error: KafkaError) -> None:
        runner.on_kafka_error(error)

    def on_lag(topic: str, partition: int, lag: int) -> None:
        runner.on_lag(topic, partition, lag)

    def on_complete(result: BatchResult) -> None:
        metrics.end_to_end_latency.observe_many(result.latencies_s)
        if on_batch is not None:
            on_batch(result)

    flush_timeout_s = settings.delivery.flush_timeout_s
    # At-least-once commits asynchronously: the committer hears the outcomes in on_commit.
    committer = None if exactly_once else OffsetCommitter(metrics.observe_commit)
    # librdkafka's own log lines go through structlog (rate-limited), not raw to stderr.
    kafka_log = librdkafka_logger()
    consumer = BatchConsumer(
        {
            **cconf,
            "logger": kafka_log,
            "error_cb": on_kafka_error,
            **({} if committer is None else {"on_commit": committer.on_commit}),
        },
        settings.topics.input,
        settings.batch.max_size,
        settings.batch.max_wait_ms / 1000.0,
        settings.batch.linger_ms / 1000.0,
        on_lag=on_lag,
    )
    pconf = {**pconf, "logger": kafka_log, "error_cb": on_kafka_error}
    delivery: Delivery
    if committer is None:
        delivery = ExactlyOnceDelivery(
            consumer,
            TransactionalPublisher(pconf, flush_timeout_s),
            on_complete,
            on_abort=metrics.transactions_aborted.inc,
            on_commit=metrics.observe_commit,
            interrupted=lambda: runner.stop_requested,
        )
    else:
        delivery = AtLeastOnceDelivery(
            consumer,
            Publisher(pconf, flush_timeout_s),
            flush_timeout_s,
            settings.delivery.commit_interval_ms / 1000.0,
            settings.delivery.max_in_flight_batches,
            on_complete,
            committer=committer,
        )

    security = endpoint_security(settings)
    endpoint = settings.metrics

    def start_metrics_server() -> MetricsServer | None:
        if not endpoint.enabled:
            return None
        return MetricsServer(endpoint.host, endpoint.port, registry, health, security)

    runner = Runner(
        consumer,
        pipeline,
        delivery,
        metrics,
        health,
        settings.metrics.summary_interval_s,
        start_metrics_server,
        stop,
        settings.metrics.liveness_timeout_s,
        tracer=build_tracer(
            settings.tracing.enabled, settings.tracing.exporter, settings.tracing.service_name
        ),
        # The labels topic's own consumer thread and group (labels.topic unset: none).
        labels=build_labels_consumer(
            settings, monitor, schema_registry,
            {**client, "logger": kafka_log, "error_cb": on_kafka_error},
        ),
    )  # fmt: skip
    return runner
