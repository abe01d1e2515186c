"""Lifecycle: signals, health, the consume → pipeline → delivery loop, and shutdown.

The runner is handed every collaborator, built by the composition root
(:func:`stream_scorer.app.build_runner`); it constructs nothing. Each iteration consumes a
batch, lets the delivery strategy serve acknowledgements and commit what is safe, scores the
batch (:class:`~stream_scorer.pipeline.Pipeline`) and submits its output to the strategy
(:mod:`stream_scorer.delivery`): the loop never branches on the delivery mode.

SIGTERM/SIGINT set a stop flag; the current batch completes, the strategy flushes and commits
everything, and the consumer leaves the group. A fatal error stops the loop without committing
the failed batch or anything after it.

Health: ready once the consumer is subscribed; not ready while Kafka is unreachable or one
iteration has stalled past :data:`LOOP_STALL_S` (a watchdog thread), ready again after the next
batch or a successful metadata probe.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

import structlog
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from stream_scorer.consume import BatchConsumer, MessageBatch
from stream_scorer.delivery import Delivery
from stream_scorer.delivery.commit import partition_spans
from stream_scorer.errors import FatalError
from stream_scorer.metrics import Health, MetricsServer, ScorerMetrics
from stream_scorer.model_set import LiveModels
from stream_scorer.monitoring.labels import LabelsConsumer
from stream_scorer.pipeline import Pipeline
from stream_scorer.records import BatchResult
from stream_scorer.tracing import NO_TRACER, BatchTracer

__all__ = ["LOOP_STALL_S", "Runner", "Totals"]

log = structlog.get_logger(__name__)

#: A loop iteration (consume, or one batch through its commit) taking longer than this marks
#: the runner not ready: a flush or commit blocked on an unreachable cluster serves no error
#: callbacks, so only a watchdog outside the loop can tell. Normal batches take well under 1 s.
LOOP_STALL_S = 10.0
#: How often a not-ready runner asks the cluster for metadata to notice it is back.
READINESS_PROBE_INTERVAL_S = 2.0
#: Kafka errors that mean the cluster cannot be reached (readiness).
UNREACHABLE = (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT)
#: Kafka errors that mean the cluster refuses this client (SASL credentials rejected, broker
#: certificate not trusted, TLS handshake failed): librdkafka retries them for ever, logging
#: each retry, but only a configuration change fixes them, so they stop the process.
REFUSED = (KafkaError._AUTHENTICATION, KafkaError._SSL)


def _offset_ranges(batch: MessageBatch) -> str:
    """``"p0:10-99 p1:5-70"``: first and last offset per partition (for log lines)."""
    return " ".join(
        f"p{partition}:{first}-{last}"
        for (_, partition), (first, last) in partition_spans(batch).items()
    )


class Totals:
    """Running counts since start, for the summary log line and the demo."""

    def __init__(self) -> None:
        """All zero."""
        self.consumed = 0
        self.flagged = 0
        self.dead_lettered = 0
        self.batches = 0


class Runner:
    """One stream-scorer process: runs the loop over collaborators it is handed."""

    def __init__(
        self,
        consumer: BatchConsumer,
        pipeline: Pipeline,
        delivery: Delivery,
        metrics: ScorerMetrics,
        health: Health,
        summary_interval_s: float = 10.0,
        start_metrics_server: Callable[[], MetricsServer | None] = lambda: None,
        stop: threading.Event | None = None,
        liveness_timeout_s: float = 180.0,
        clock: Callable[[], float] = time.monotonic,
        tracer: BatchTracer = NO_TRACER,
        labels: LabelsConsumer | None = None,
    ) -> None:
        """Hold the collaborators; touches no Kafka yet.

        Args:
            consumer: The input consumer, not yet subscribed.
            pipeline: Scores a batch and returns what to publish.
            delivery: Publishes and commits (at-least-once or exactly-once).
            metrics: The service's metrics.
            health: What ``/healthz`` and ``/readyz`` report.
            summary_interval_s: Seconds between ``progress`` log lines.
            start_metrics_server: Starts the HTTP endpoint when :meth:`run` starts.
            stop: The event a signal handler installed before start-up sets: a stop requested
                during start-up makes :meth:`run` leave at once, cleanly.
            liveness_timeout_s: ``/healthz`` fails once one iteration has run this long, or no
                batch has completed this long while the consumer reports lag.
            clock: Monotonic clock of the watchdog (tests move it).
            tracer: Opens a span per batch (no-op unless tracing is on).
            labels: The labels topic's consumer thread, started and stopped with the loop.
        """
        self.consumer = consumer
        self.pipeline = pipeline
        self.delivery = delivery
        self.metrics = metrics
        self.health = health
        self._summary_interval_s = summary_interval_s
        self._start_metrics_server = start_metrics_server
        self._stop = stop if stop is not None else threading.Event()
        #: Set once the consumer has been assigned its first partitions.
        self.assigned = threading.Event()
        self.totals = Totals()
        self.metrics_server: MetricsServer | None = None
        self._tracer = tracer
        self.labels = labels
        self._liveness_timeout_s = liveness_timeout_s
        self._clock = clock
        #: Monotonic time the loop last started an iteration (read by the stall watchdog) ...
        self._iteration_at = clock()
        #: ... and last completed a batch (or started).
        self._progress_at = self._iteration_at
        #: Consumer lag per held partition, from librdkafka statistics.
        self._lag: dict[tuple[str, int], int] = {}
        #: Why the cluster refused this client, once it has (the loop then stops, exit 1).
        self._refused: str | None = None

    @property
    def models(self) -> LiveModels:
        """The live model set (replace it to swap models between batches)."""
        return self.pipeline.models

    def stop(self) -> None:
        """Ask the loop to finish the current batch and exit."""
        self._stop.set()

    @property
    def stop_requested(self) -> bool:
        """True once a stop was asked for (signal, refused connection, :meth:`stop`)."""
        return self._stop.is_set()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        del frame
        log.info("stop_requested", signal=signal.Signals(signum).name)
        self.stop()

    def _on_assign(self, partitions: list[TopicPartition]) -> None:
        if partitions:
            self.assigned.set()
        self.metrics.rebalances.labels(kind="assigned").inc()

    def _on_revoke(self, partitions: list[TopicPartition], lost: bool) -> None:
        self.delivery.on_revoke(partitions, lost)
        self.metrics.rebalances.labels(kind="lost" if lost else "revoked").inc()
        for p in partitions:
            self.metrics.forget_lag(p.topic, p.partition)
            self._lag.pop((p.topic, p.partition), None)

    def on_lag(self, topic: str, partition: int, lag: int) -> None:
        """Consumer lag of one held partition (librdkafka statistics)."""
        self._lag[(topic, partition)] = lag
        self.metrics.set_lag(topic, partition, lag)

    def on_kafka_error(self, error: KafkaError) -> None:
        """librdkafka error callback of both clients: readiness follows reachability."""
        if error.code() in REFUSED and self._refused is None:
            self._refused = f"kafka refused the connection: {error.str()}"
            self._stop.set()
        if error.code() in UNREACHABLE:
            self._set_ready(False, "kafka unreachable")

    def _set_ready(self, ready: bool, reason: str) -> None:
        self.health.set_ready(ready, reason)
        self.metrics.ready.set(1 if ready else 0)

    def run(self) -> int:
        """Run until stopped; returns the exit code (0 clean stop, 1 fatal error)."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        self.metrics_server = self._start_metrics_server()
        if self.metrics_server is not None:
            log.info("metrics_serving", url=f"{self.metrics_server.url}/metrics")
        code = 0
        finished = threading.Event()
        watchdog = threading.Thread(
            target=self._watch_stalls, args=(finished,), name="stall-watchdog", daemon=True
        )
        try:
            self.delivery.start()
            if self.labels is not None:  # its own thread and group: never the main consumer's
                self.labels.start()
            self.consumer.subscribe(on_assign=self._on_assign, on_revoke=self._on_revoke)
            self._set_ready(True, "consuming")
            watchdog.start()
            self._loop()
            if self._refused is not None:
                raise FatalError(self._refused)
        except FatalError as exc:
            # A refused connection is the cause of whatever failed after it: name it.
            log.error("fatal_error", error=self._refused or str(exc), error_type=type(exc).__name__)
            code = 1
        finally:
            finished.set()
            self._set_ready(False, "stopping")
            self._shutdown(clean=code == 0)
        log.info(
            "stopped",
            exit_code=code,
            consumed=self.totals.consumed,
            flagged=self.totals.flagged,
            dead_lettered=self.totals.dead_lettered,
        )
        return code

    def _loop(self) -> None:
        consumer, pipeline, delivery = self.consumer, self.pipeline, self.delivery
        tracer = self._tracer
        interval_s = self._summary_interval_s
        next_summary = time.monotonic() + interval_s
        last = (0, time.monotonic())
        next_probe = 0.0
        batch_id = 0
        while not self._stop.is_set():
            self._iteration_at = self._clock()
            tick = time.perf_counter()
            batch = consumer.poll_batch()
            consume_s = time.perf_counter() - tick
            delivery.between_batches()
            if len(batch):
                # Every log line of this batch names it: id, partitions and offset range.
                batch_id += 1
                structlog.contextvars.bind_contextvars(
                    batch_id=batch_id, offsets=_offset_ranges(batch)
                )
                try:
                    with tracer.batch(batch_id, batch) as span:
                        output = pipeline.process(batch)
                        delivery.submit(output)
                        tracer.finish(span, output.result)
                finally:
                    structlog.contextvars.unbind_contextvars("batch_id", "offsets")
                output.result.stage_s["consume"] = consume_s
                self._count(output.result)
            now = time.monotonic()
            if not len(batch) and not self.health.ready and now >= next_probe:
                next_probe = now + READINESS_PROBE_INTERVAL_S
                self._probe()
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
                    in_flight_batches=delivery.in_flight,
                )
                last = (self.totals.consumed, now)
                next_summary = now + interval_s

    def _count(self, result: BatchResult) -> None:
        metrics = self.metrics
        for stage, seconds in result.stage_s.items():
            metrics.stage_duration.labels(stage=stage).observe(seconds)
        metrics.records_consumed.labels(topic=self.consumer.topic).inc(result.consumed)
        metrics.batches.inc()
        metrics.batches_in_flight.set(self.delivery.in_flight)
        metrics.producer_queue.set(self.delivery.queue_depth)
        self.totals.consumed += result.consumed
        self.totals.flagged += result.flagged
        self.totals.dead_lettered += result.dead_lettered
        self.totals.batches += 1
        self._progress_at = self._clock()
        if not self.health.ready:
            self._set_ready(True, "consuming")

    def _watch_stalls(self, finished: threading.Event) -> None:
        """Every second: readiness and liveness from the loop's progress."""
        while not finished.wait(1.0):
            self.check_progress()

    def check_progress(self) -> None:
        """Mark the runner not ready while one iteration has run past :data:`LOOP_STALL_S`,
        and not live (``/healthz`` 503: restart me) once an iteration has run past the
        liveness timeout, or no batch has completed that long while there is lag."""
        now = self._clock()
        stalled_s = now - self._iteration_at
        if stalled_s > LOOP_STALL_S and self.health.ready:
            log.warning("loop_stalled", seconds=round(stalled_s, 1))
            self._set_ready(False, "batch stalled")
        waiting = sum(self._lag.values()) > 0
        if stalled_s > self._liveness_timeout_s:
            reason = "loop stalled"
        elif waiting and now - self._progress_at > self._liveness_timeout_s:
            reason = "no progress while events wait"
        else:
            if not self.health.live:
                self.health.set_live(True, "ok")
            return
        if self.health.live:
            log.error("liveness_lost", reason=reason, seconds=round(stalled_s, 1))
            self.health.set_live(False, reason)

    def _probe(self) -> None:
        try:
            self.consumer.consumer.list_topics(self.consumer.topic, timeout=1.0)
        except KafkaException:
            return
        self._set_ready(True, "consuming")

    def _shutdown(self, clean: bool) -> None:
        if self.labels is not None:
            self.labels.close()
        self.delivery.close(clean)
        # Leaves the group; uncommitted batches are replayed by the next owner.
        self.consumer.close()
        if self.metrics_server is not None:
            self.metrics_server.close()
