"""Lifecycle: start-up checks, then consume → pipeline → commit until told to stop.

Start-up loads and checks everything that does not need Kafka first (schemas, model, binding),
so a bad config or a bad model stops the process before it joins the group. The loop is a fixed
barrier per batch: consume a batch, score it, publish alerts and dead letters, wait for every
acknowledgement, then commit the batch's offsets (at-least-once) or commit the transaction that
holds results and offsets (exactly-once). Only then is the next batch consumed, which is also
the backpressure: a slow broker slows consumption instead of growing memory.

SIGTERM/SIGINT set a stop flag; the current batch completes, is flushed and committed, and the
consumer leaves the group. A fatal error stops the loop without committing the failed batch.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

import structlog
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from prometheus_client import REGISTRY, CollectorRegistry

from stream_scorer import __version__
from stream_scorer.app import (
    build_alert_encoder,
    build_decoder,
    build_registry,
    load_model,
    load_schema,
)
from stream_scorer.commit import commit_offsets, offsets_to_commit
from stream_scorer.consume import BatchConsumer, consumer_config
from stream_scorer.errors import FatalError
from stream_scorer.metrics import Health, MetricsServer, ScorerMetrics
from stream_scorer.pipeline import BatchResult, Pipeline
from stream_scorer.publish import ResultPublisher, TransactionAbortedError, producer_config
from stream_scorer.records import SourceRecord
from stream_scorer.settings import Settings, masked

__all__ = ["Runner", "Totals"]

log = structlog.get_logger(__name__)

#: How often a not-ready runner asks the cluster for metadata to notice it is back.
READINESS_PROBE_INTERVAL_S = 2.0


class Totals:
    """Running counts since start, for the summary log line and the demo."""

    def __init__(self) -> None:
        """All zero."""
        self.consumed = 0
        self.flagged = 0
        self.dead_lettered = 0
        self.batches = 0


class Runner:
    """One stream-scorer process: owns the consumer, the producer and the pipeline."""

    def __init__(
        self,
        settings: Settings,
        registry: CollectorRegistry = REGISTRY,
        on_batch: Callable[[BatchResult], None] | None = None,
    ) -> None:
        """Load schemas and the model and check them; touches no Kafka yet.

        Raises:
            ConfigurationError: Settings, schemas and model do not fit together.
        """
        self.settings = settings
        self.health = Health()
        self.metrics = ScorerMetrics(registry)
        self._metrics_registry = registry
        self._on_batch = on_batch
        self._stop = threading.Event()
        #: Set once the consumer has been assigned its first partitions.
        self.assigned = threading.Event()
        self.totals = Totals()
        self.reader = load_schema(settings.schema_.reader, "schema.reader")
        self.model = load_model(settings, self.reader)
        card = self.model.scorer.card
        self.metrics.init_labels(settings.topics.input, card.name, card.version)
        self.metrics.set_model(card.name, card.version, card.sha256 or "", card.input_layout)
        self.metrics_server: MetricsServer | None = None
        self.exactly_once = settings.delivery.mode == "exactly-once"

    def stop(self) -> None:
        """Ask the loop to finish the current batch and exit."""
        self._stop.set()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        del frame
        log.info("stop_requested", signal=signal.Signals(signum).name)
        self.stop()

    def _on_assign(self, partitions: list[TopicPartition]) -> None:
        if partitions:
            self.assigned.set()

    def _on_kafka_error(self, error: KafkaError) -> None:
        if error.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            self.health.set_ready(False, f"kafka unreachable: {error.str()}")
            self.metrics.ready.set(0)

    def run(self) -> int:
        """Run until stopped; returns the exit code (0 clean stop, 1 fatal error)."""
        settings = self.settings
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        if settings.metrics.enabled:
            self.metrics_server = MetricsServer(
                settings.metrics.host, settings.metrics.port, self._metrics_registry, self.health
            )
            log.info("metrics_serving", url=f"{self.metrics_server.url}/metrics")
        registry = build_registry(settings)
        decoder = build_decoder(settings, self.reader, registry)
        encoder = build_alert_encoder(settings, registry)
        client = settings.kafka.client_config()
        transactional_id = None
        if self.exactly_once:
            transactional_id = (
                settings.delivery.transactional_id
                or f"{settings.kafka.group_id}-{settings.kafka.client_id}"
            )
        pconf = producer_config(client, settings.kafka.producer, transactional_id)
        pconf["error_cb"] = self._on_kafka_error
        cconf = consumer_config(
            client,
            settings.kafka.group_id,
            settings.kafka.consumer,
            settings.kafka.group_instance_id,
            isolation_level="read_committed" if self.exactly_once else None,
        )
        log.info(
            "starting",
            version=__version__,
            delivery=settings.delivery.mode,
            input=settings.topics.input,
            alerts=settings.topics.alerts,
            dead_letter=settings.topics.dead_letter,
            consumer_config=masked(cconf),
            producer_config=masked({k: v for k, v in pconf.items() if k != "error_cb"}),
        )
        cconf["error_cb"] = self._on_kafka_error
        publisher = ResultPublisher(pconf, settings.delivery.flush_timeout_s)
        consumer = BatchConsumer(
            cconf,
            settings.topics.input,
            settings.batch.max_size,
            settings.batch.max_wait_ms / 1000.0,
            on_lag=self.metrics.set_lag,
            on_assign=self._on_assign,
        )
        pipeline = Pipeline(
            decoder,
            self.model,
            encoder,
            publisher,
            settings.topics.alerts,
            settings.topics.dead_letter,
            __version__,
            self.metrics,
        )
        self.health.set_ready(True, "consuming")
        self.metrics.ready.set(1)
        code = 0
        try:
            self._loop(consumer, pipeline, publisher)
        except FatalError as exc:
            log.error("fatal_error", error=str(exc), error_type=type(exc).__name__)
            code = 1
        finally:
            self.health.set_ready(False, "stopping")
            self.metrics.ready.set(0)
            self._shutdown(consumer, publisher, clean=code == 0)
        log.info(
            "stopped",
            exit_code=code,
            consumed=self.totals.consumed,
            flagged=self.totals.flagged,
            dead_lettered=self.totals.dead_lettered,
        )
        return code

    def _loop(
        self, consumer: BatchConsumer, pipeline: Pipeline, publisher: ResultPublisher
    ) -> None:
        interval_s = self.settings.metrics.summary_interval_s
        next_summary = time.monotonic() + interval_s
        last = (0, time.monotonic())
        next_probe = 0.0
        while not self._stop.is_set():
            tick = time.perf_counter()
            records = consumer.poll_batch()
            consume_s = time.perf_counter() - tick
            publisher.poll()
            now = time.monotonic()
            if records:
                self._process(records, consumer, pipeline, publisher, consume_s)
            elif not self.health.ready and now >= next_probe:
                next_probe = now + READINESS_PROBE_INTERVAL_S
                self._probe(consumer)
            if now >= next_summary:
                rate = (self.totals.consumed - last[0]) / max(now - last[1], 1e-9)
                log.info(
                    "progress",
                    consumed=self.totals.consumed,
                    flagged=self.totals.flagged,
                    dead_lettered=self.totals.dead_lettered,
                    batches=self.totals.batches,
                    events_per_s=round(rate, 1),
                    assigned=len(consumer.assignment),
                )
                last = (self.totals.consumed, now)
                next_summary = now + interval_s

    def _probe(self, consumer: BatchConsumer) -> None:
        try:
            consumer.consumer.list_topics(consumer.topic, timeout=1.0)
        except KafkaException:
            return
        self.health.set_ready(True, "consuming")
        self.metrics.ready.set(1)

    def _process(
        self,
        records: list[SourceRecord],
        consumer: BatchConsumer,
        pipeline: Pipeline,
        publisher: ResultPublisher,
        consume_s: float,
    ) -> None:
        publisher.begin()
        try:
            result = pipeline.process(records)
        except TransactionAbortedError as exc:
            self._rewind(consumer, records, exc)
            return
        offsets = offsets_to_commit(records)
        tick = time.perf_counter()
        if self.exactly_once:
            try:
                publisher.commit_transaction(offsets, consumer.consumer)
            except TransactionAbortedError as exc:
                self._rewind(consumer, records, exc)
                return
        else:
            commit_offsets(consumer.consumer, offsets)
        result.stage_s["commit"] = time.perf_counter() - tick
        result.stage_s["consume"] = consume_s
        self.metrics.stage_duration.labels(stage="commit").observe(result.stage_s["commit"])
        self.metrics.stage_duration.labels(stage="consume").observe(consume_s)
        self.metrics.records_consumed.labels(topic=consumer.topic).inc(result.consumed)
        self.metrics.batches.inc()
        self.totals.consumed += result.consumed
        self.totals.flagged += result.flagged
        self.totals.dead_lettered += result.dead_lettered
        self.totals.batches += 1
        if not self.health.ready:
            self.health.set_ready(True, "consuming")
            self.metrics.ready.set(1)
        if self._on_batch is not None:
            self._on_batch(result)

    def _rewind(self, consumer: BatchConsumer, records: list[SourceRecord], exc: Exception) -> None:
        """Seek back to the batch's first offsets so an aborted batch is scored again."""
        self.metrics.transactions_aborted.inc()
        first: dict[tuple[str, int], int] = {}
        for record in records:
            key = (record.topic, record.partition)
            first[key] = min(first.get(key, record.offset), record.offset)
        log.warning("transaction_aborted", error=str(exc), partitions=len(first))
        for (topic, partition), offset in first.items():
            if (topic, partition) in consumer.assignment:
                consumer.consumer.seek(TopicPartition(topic, partition, offset))

    def _shutdown(self, consumer: BatchConsumer, publisher: ResultPublisher, clean: bool) -> None:
        try:
            if clean:
                publisher.close()
            else:
                publisher.abort()
        except FatalError as exc:
            log.warning("producer_close_failed", error=str(exc))
        consumer.close()  # leaves the group; uncommitted batches are replayed by the next owner
        if self.metrics_server is not None:
            self.metrics_server.close()
