"""Lifecycle: start-up checks, then consume → pipeline → commit until told to stop.

Start-up loads and checks everything that does not need Kafka first (schemas, model, binding),
so a bad config or a bad model stops the process before it joins the group.

At-least-once (the default) runs a pipelined loop: consume a batch, score it, queue its alerts
and dead letters, and consume the next batch while their acknowledgements arrive. Each batch has
a ticket (:mod:`stream_scorer.acks`) counting its deliveries; a batch's offsets are committed,
asynchronously, once it and every batch before it are acknowledged. At most
``delivery.max_in_flight_batches`` batches wait for acknowledgements; the loop waits for the
oldest before it consumes more, which is the backpressure (``1`` makes it a plain barrier:
every batch acknowledged before the next is consumed). On revocation and at shutdown the loop
waits for everything in flight and commits synchronously while it still owns the partitions.

Exactly-once runs a barrier per batch: one transaction holds the batch's results and offsets and
is committed before the next batch is consumed.

SIGTERM/SIGINT set a stop flag; the current batch completes, everything is flushed and
committed, and the consumer leaves the group. A fatal error stops the loop without committing
the failed batch or anything after it.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import FrameType
from typing import Any

import structlog
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from prometheus_client import REGISTRY, CollectorRegistry

from stream_scorer import __version__
from stream_scorer.acks import AckTracker, BatchTicket
from stream_scorer.app import (
    build_alert_encoder,
    build_decoder,
    build_registry,
    load_model,
    load_schema,
)
from stream_scorer.commit import OffsetCommitter, partition_spans, spans_to_offsets
from stream_scorer.consume import BatchConsumer, consumer_config, max_poll_interval_s
from stream_scorer.errors import ConfigurationError, FatalError, PublishError
from stream_scorer.logging import librdkafka_logger
from stream_scorer.metrics import Health, MetricsServer, ScorerMetrics
from stream_scorer.pipeline import BatchResult, Pipeline, event_timestamps_ms
from stream_scorer.publish import (
    TXN_CALL_TIMEOUT_S,
    ResultPublisher,
    TransactionAbortedError,
    producer_config,
    transaction_timeout_s,
)
from stream_scorer.records import SourceRecord
from stream_scorer.settings import Settings, masked

__all__ = ["Runner", "Totals", "check_batch_time_bounds"]

log = structlog.get_logger(__name__)

#: Longest a batch's commit may take after its flush: sending the offsets and committing the
#: transaction, each bounded by the publisher's transactional call timeout.
COMMIT_ALLOWANCE_S = 2 * TXN_CALL_TIMEOUT_S
#: A loop iteration (consume, or one batch through its commit) taking longer than this marks
#: the runner not ready: a flush or commit blocked on an unreachable cluster serves no error
#: callbacks, so only a watchdog outside the loop can tell. Normal batches take well under 1 s.
LOOP_STALL_S = 10.0
#: Longest the commit of acknowledged offsets is retried when stopping after a fatal error.
FATAL_COMMIT_TIMEOUT_S = 5.0
#: Longest single wait for a delivery report while the pipelined loop waits for room in flight.
ACK_WAIT_POLL_S = 0.05
#: How often a not-ready runner asks the cluster for metadata to notice it is back.
READINESS_PROBE_INTERVAL_S = 2.0


def check_batch_time_bounds(
    flush_timeout_s: float,
    max_wait_s: float,
    consumer: Mapping[str, Any],
    producer: Mapping[str, Any],
) -> None:
    """Refuse timeouts that would let one batch outlive the group session or its transaction.

    The barrier loop calls ``consume()`` once per batch, so a batch's time (the wait to fill it,
    scoring, the publish bounded by ``delivery.flush_timeout_s``, the commit bounded by
    :data:`COMMIT_ALLOWANCE_S`) must stay under ``max.poll.interval.ms`` or the member is
    thrown out of the group mid-batch. In exactly-once mode the transaction spans the publish
    and the commit, so ``transaction.timeout.ms`` must leave room for both: the flush may take
    at most half of it.

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


def _ranges(spans: Mapping[tuple[str, int], tuple[int, int]]) -> dict[str, list[int]]:
    """First and last offset per partition of a batch, keyed ``"<partition>"`` (for logs)."""
    return {str(partition): [first, last] for (_, partition), (first, last) in spans.items()}


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
        stop: threading.Event | None = None,
    ) -> None:
        """Load schemas and the model and check them; touches no Kafka yet.

        ``stop``, when given, is the event a signal handler installed before loading sets: a
        stop requested during start-up makes :meth:`run` leave at once, cleanly.

        Raises:
            ConfigurationError: Settings, schemas and model do not fit together.
        """
        self.settings = settings
        self.health = Health()
        self.metrics = ScorerMetrics(registry)
        self._metrics_registry = registry
        self._on_batch = on_batch
        self._stop = stop if stop is not None else threading.Event()
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
        #: At-least-once: batches produced but not yet all acknowledged, oldest first ...
        self._tracker = AckTracker()
        #: ... and the acknowledged offsets, committed asynchronously between batches.
        self._committer = OffsetCommitter()
        self._acked_not_logged: list[BatchTicket] = []
        #: An error inside a librdkafka callback, raised by the loop after ``consume()``.
        self._callback_failure: FatalError | None = None
        self._commit_on_revoke = True
        #: Monotonic time the next asynchronous commit is due (delivery.commit_interval_ms).
        self._next_commit_at = 0.0
        self._consumer: BatchConsumer | None = None
        self._publisher: ResultPublisher | None = None
        #: Monotonic time the loop last started an iteration (read by the stall watchdog).
        self._iteration_at = time.monotonic()

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
            # Stable across restarts (a restart fences its zombie and aborts its open
            # transaction at once) and distinct per static member, so that members of one
            # group do not fence each other.
            transactional_id = (
                settings.delivery.transactional_id
                or f"{settings.kafka.group_id}-"
                f"{settings.kafka.group_instance_id or settings.kafka.client_id}"
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
            "connecting",
            version=__version__,
            delivery=settings.delivery.mode,
            input=settings.topics.input,
            alerts=settings.topics.alerts,
            dead_letter=settings.topics.dead_letter,
            consumer_config=masked(cconf),
            producer_config=masked({k: v for k, v in pconf.items() if k != "error_cb"}),
        )
        check_batch_time_bounds(
            settings.delivery.flush_timeout_s,
            (settings.batch.max_wait_ms + settings.batch.linger_ms) / 1000.0,
            cconf,
            pconf,
        )
        cconf["error_cb"] = self._on_kafka_error
        cconf["on_commit"] = self._committer.on_commit
        cconf["logger"] = pconf["logger"] = librdkafka_logger()  # librdkafka lines → structlog
        publisher = ResultPublisher(pconf, settings.delivery.flush_timeout_s)
        consumer = BatchConsumer(
            cconf,
            settings.topics.input,
            settings.batch.max_size,
            settings.batch.max_wait_ms / 1000.0,
            settings.batch.linger_ms / 1000.0,
            on_lag=self.metrics.set_lag,
            on_revoke=self._on_revoke,
            on_assign=self._on_assign,
        )
        self._consumer, self._publisher = consumer, publisher
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
        finished = threading.Event()
        watchdog = threading.Thread(
            target=self._watch_stalls, args=(finished,), name="stall-watchdog", daemon=True
        )
        watchdog.start()
        try:
            self._loop(consumer, pipeline, publisher)
        except FatalError as exc:
            log.error("fatal_error", error=str(exc), error_type=type(exc).__name__)
            code = 1
        finally:
            finished.set()
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
            self._iteration_at = time.monotonic()
            tick = time.perf_counter()
            records = consumer.poll_batch()
            consume_s = time.perf_counter() - tick
            self._raise_callback_failure()
            now = time.monotonic()
            if self.exactly_once:
                publisher.poll()
                if records:
                    self._process(records, consumer, pipeline, publisher, consume_s)
            else:
                self._settle(consumer, publisher)
                if records:
                    self._process_pipelined(records, consumer, pipeline, publisher, consume_s)
            if not records and not self.health.ready and now >= next_probe:
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
                    in_flight_batches=len(self._tracker),
                )
                last = (self.totals.consumed, now)
                next_summary = now + interval_s

    def _watch_stalls(self, finished: threading.Event) -> None:
        """Mark the runner not ready while one loop iteration has run past LOOP_STALL_S."""
        while not finished.wait(1.0):
            stalled_s = time.monotonic() - self._iteration_at
            if stalled_s > LOOP_STALL_S and self.health.ready:
                reason = f"batch stalled for {stalled_s:.0f} s (kafka unreachable?)"
                log.warning("loop_stalled", seconds=round(stalled_s, 1))
                self.health.set_ready(False, reason)
                self.metrics.ready.set(0)

    def _probe(self, consumer: BatchConsumer) -> None:
        try:
            consumer.consumer.list_topics(consumer.topic, timeout=1.0)
        except KafkaException:
            return
        self.health.set_ready(True, "consuming")
        self.metrics.ready.set(1)

    def _process(
        self,
        records: Sequence[SourceRecord],
        consumer: BatchConsumer,
        pipeline: Pipeline,
        publisher: ResultPublisher,
        consume_s: float,
    ) -> None:
        """Exactly-once: one transaction per batch, results and offsets together (a barrier)."""
        publisher.begin()
        try:
            result = pipeline.process(records)
        except TransactionAbortedError as exc:
            self._rewind(consumer, records, exc)
            return
        spans = partition_spans(records)
        offsets = spans_to_offsets(spans)
        # One debug line per batch, before and after its commit: a crash between the two
        # shows exactly which acknowledged results a restart will publish again.
        ranges = _ranges(spans)
        log.debug("batch_flushed", records=len(records), ranges=ranges)
        tick = time.perf_counter()
        try:
            publisher.commit_transaction(offsets, consumer.consumer)
        except TransactionAbortedError as exc:
            self._rewind(consumer, records, exc)
            return
        result.stage_s["commit"] = time.perf_counter() - tick
        log.debug("batch_committed", records=len(records), ranges=ranges)
        self._count(result, consumer, consume_s)
        if self._on_batch is not None:
            self._on_batch(result)

    def _process_pipelined(
        self,
        records: Sequence[SourceRecord],
        consumer: BatchConsumer,
        pipeline: Pipeline,
        publisher: ResultPublisher,
        consume_s: float,
    ) -> None:
        """At-least-once: score and produce the batch, then go on to the next one while its
        acknowledgements arrive; its offsets are committed once it and every batch before it
        are acknowledged. At most ``delivery.max_in_flight_batches`` batches wait for acks."""
        spans = partition_spans(records)
        ticket = self._tracker.open(
            spans_to_offsets(spans), event_timestamps_ms(records), len(records)
        )
        ticket.ranges = _ranges(spans)
        publisher.track(ticket)
        try:
            result = pipeline.process(records, wait_acks=False)
        finally:
            publisher.track(None)
        ticket.seal(result)
        tick = time.perf_counter()
        self._settle(
            consumer, publisher, in_flight=self.settings.delivery.max_in_flight_batches - 1
        )
        result.stage_s["commit"] = time.perf_counter() - tick
        self._count(result, consumer, consume_s)

    def _count(self, result: BatchResult, consumer: BatchConsumer, consume_s: float) -> None:
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

    def _settle(
        self, consumer: BatchConsumer, publisher: ResultPublisher, in_flight: int | None = None
    ) -> None:
        """Serve delivery reports, take in the acknowledged batches and commit their offsets
        asynchronously; with ``in_flight``, first wait until at most that many batches are
        still unacknowledged (the backpressure of the pipelined loop).

        Raises:
            PublishError: A delivery failed, or a batch was not acknowledged within
                ``delivery.flush_timeout_s`` of being produced.
            CommitError: An asynchronous commit failed for good.
        """
        publisher.poll()
        self._collect_acked()
        limit = len(self._tracker) if in_flight is None else in_flight
        flush_timeout_s = self.settings.delivery.flush_timeout_s
        while (oldest := self._tracker.oldest()) is not None:
            overdue_s = time.monotonic() - oldest.sealed_at - flush_timeout_s
            if overdue_s > 0:
                msg = (
                    f"a batch of {oldest.records} records was not acknowledged within "
                    f"delivery.flush_timeout_s={flush_timeout_s}s ({oldest.pending} outstanding)"
                )
                raise PublishError(msg)
            if len(self._tracker) <= limit:
                break
            publisher.poll(min(-overdue_s, ACK_WAIT_POLL_S))
            self._collect_acked()
        now = time.monotonic()
        if now >= self._next_commit_at and self._committer.commit_async(
            consumer.consumer, consumer.assignment
        ):
            self._next_commit_at = now + self.settings.delivery.commit_interval_ms / 1000.0
            self._log_committed()

    def _collect_acked(self) -> None:
        """Move fully acknowledged batches (in order) to the committer; observe latency."""
        offsets, done = self._tracker.committable()
        if not done:
            return
        now_ms = time.time_ns() // 1_000_000
        for ticket in done:
            latencies = (now_ms - ticket.timestamps_ms) / 1000.0
            self.metrics.end_to_end_latency.observe_many(latencies)
            log.debug("batch_flushed", records=ticket.records, ranges=ticket.ranges)
            self._acked_not_logged.append(ticket)
            if isinstance(ticket.result, BatchResult):
                ticket.result.latencies_s = latencies
                if self._on_batch is not None:
                    self._on_batch(ticket.result)
        self._committer.acknowledge(offsets)

    def _log_committed(self) -> None:
        for ticket in self._acked_not_logged:
            log.debug("batch_committed", records=ticket.records, ranges=ticket.ranges)
        self._acked_not_logged.clear()

    def _drain(self, publisher: ResultPublisher) -> None:
        """Wait for every outstanding acknowledgement and take the batches in.

        Raises:
            PublishError: A delivery failed or did not arrive within the flush timeout.
        """
        remaining = publisher.drain(self.settings.delivery.flush_timeout_s)
        self._collect_acked()
        if remaining or len(self._tracker):
            msg = (
                f"{len(self._tracker)} batches not acknowledged within "
                f"delivery.flush_timeout_s={self.settings.delivery.flush_timeout_s}s "
                f"({remaining} messages outstanding)"
            )
            raise PublishError(msg)

    def _on_revoke(self, partitions: list[TopicPartition], lost: bool) -> None:
        """Before partitions go: wait for every batch in flight, then commit what is
        acknowledged while this member still owns the partitions (revoked), or drop it
        (lost: the group has moved on and a commit from here would be refused or wrong).

        Runs inside ``consume()``. An error cannot leave a librdkafka callback, so it is kept
        and raised by the loop once ``consume()`` returns; until then nothing is committed.
        """
        consumer, publisher = self._consumer, self._publisher
        if self.exactly_once or consumer is None or publisher is None:
            return  # the barrier loop has nothing in flight between batches
        if not self._commit_on_revoke:
            return
        gone = [(p.topic, p.partition) for p in partitions]
        try:
            self._drain(publisher)
            if not lost:
                held = set(gone) | consumer.assignment
                if self._committer.commit_sync(consumer.consumer, held):
                    self._log_committed()
        except FatalError as exc:
            self._callback_failure = exc
        finally:
            self._committer.forget(gone)

    def _raise_callback_failure(self) -> None:
        failure, self._callback_failure = self._callback_failure, None
        if failure is not None:
            raise failure

    def _rewind(
        self, consumer: BatchConsumer, records: Sequence[SourceRecord], exc: Exception
    ) -> None:
        """Seek back to the batch's first offsets so an aborted batch is scored again.

        Raises:
            FatalError: A partition still assigned could not be rewound.
        """
        self.metrics.transactions_aborted.inc()
        first: dict[tuple[str, int], int] = {}
        for record in records:
            key = (record.topic, record.partition)
            first[key] = min(first.get(key, record.offset), record.offset)
        log.warning("transaction_aborted", error=str(exc), partitions=len(first))
        for (topic, partition), offset in first.items():
            if (topic, partition) not in consumer.assignment:
                continue  # revoked meanwhile: its new owner starts from the committed offset
            try:
                consumer.consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException as seek_error:
                # Without the rewind the next transaction would commit offsets past the aborted
                # batch: stop instead; the restart resumes from the committed offsets.
                msg = f"cannot rewind {topic}[{partition}] to {offset}: {seek_error}"
                raise FatalError(msg) from seek_error

    def _shutdown(self, consumer: BatchConsumer, publisher: ResultPublisher, clean: bool) -> None:
        # After a fatal error nothing more is committed, not even from the revocation that
        # consumer.close() triggers: the restart replays from the last commit.
        self._commit_on_revoke = clean
        if clean and not self.exactly_once:
            # Everything produced is acknowledged and committed before the member leaves.
            try:
                self._drain(publisher)
                if self._committer.commit_sync(consumer.consumer, consumer.assignment):
                    self._log_committed()
            except FatalError as exc:
                log.error("final_commit_failed", error=str(exc))
        elif not self.exactly_once:
            # A fatal error: commit what was acknowledged before the failure, in order, and
            # nothing after it; wait for nothing (the cluster may be the thing that failed).
            try:
                with contextlib.suppress(PublishError):
                    self._collect_acked()
                if self._committer.commit_sync(
                    consumer.consumer, consumer.assignment, FATAL_COMMIT_TIMEOUT_S
                ):
                    self._log_committed()
            except FatalError as exc:
                log.warning("final_commit_failed", error=str(exc))
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
