"""Exactly-once delivery: one Kafka transaction per batch holds its messages and its offsets.

:meth:`ExactlyOnceDelivery.submit` begins a transaction, produces the batch's alerts and dead
letters, waits for their acknowledgements, sends the consumed offsets to the transaction
(``send_offsets_to_transaction``) and commits it, before the loop consumes the next batch (a
barrier): a ``read_committed`` reader sees each result exactly once, and the group's offsets move
in the same atomic step. A model-set swap therefore always lands at a transaction boundary.

An abortable error aborts the transaction (nothing of it is visible, the offsets did not move)
and rewinds the consumer to the batch's first offsets, so the batch is scored again; a fenced or
fatal producer stops the loop. This is confluent-kafka's ``examples/eos_transactions.py`` with a
batch per transaction.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from stream_scorer.delivery import CompletedCallback, GroupMember
from stream_scorer.delivery.at_least_once import ranges
from stream_scorer.delivery.commit import partition_spans, spans_to_offsets
from stream_scorer.delivery.publish import TransactionAbortedError, TransactionalPublisher
from stream_scorer.errors import FatalError, PublishError
from stream_scorer.records import Batch, BatchOutput

__all__ = ["ExactlyOnceDelivery"]

log = structlog.get_logger(__name__)


class ExactlyOnceDelivery:
    """A transaction per batch; aborted batches are rewound and scored again."""

    def __init__(
        self,
        member: GroupMember,
        publisher: TransactionalPublisher,
        on_complete: CompletedCallback | None = None,
        on_abort: Callable[[], None] | None = None,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        on_commit: Callable[[str, float | None], None] | None = None,
        interrupted: Callable[[], bool] = lambda: False,
    ) -> None:
        """Wire the strategy to a consumer and a transactional producer.

        Args:
            member: The consumer (group metadata, seeks) and its assignment.
            publisher: The transactional producer.
            on_complete: Told of each batch once its transaction is committed.
            on_abort: Told of each aborted transaction (a metric).
            clock_ms: Wall clock in epoch ms, for end-to-end latency.
            on_commit: Told of each transaction commit: ``("ok", seconds)``.
            interrupted: True once the runner was told to stop (a refused connection):
                start() gives up initialising transactions then.
        """
        self._member = member
        self._publisher = publisher
        self._on_complete = on_complete
        self._on_abort = on_abort
        self._clock_ms = clock_ms
        self._on_commit = on_commit
        self._interrupted = interrupted
        self._failures: list[str] = []

    @property
    def queue_depth(self) -> int:
        """Messages in the producer's local queue, not yet acknowledged."""
        return self._publisher.queue_depth

    @property
    def in_flight(self) -> int:
        """Always 0 between batches: each batch is committed before the next is consumed."""
        return 0

    def start(self) -> None:
        """Initialise transactions; fences a previous instance with the same id."""
        self._publisher.init(self._interrupted)

    def _on_delivery(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self._failures.append(f"{message.topic()}: {error}")

    def submit(self, output: BatchOutput) -> None:
        """Publish and commit the batch in one transaction (rewound when it is aborted)."""
        publisher, result = self._publisher, output.result
        tick = time.perf_counter()
        try:
            publisher.begin()
            self._failures.clear()
            publisher.produce_all(output.messages, self._on_delivery)
            self._flush()
        except TransactionAbortedError as exc:
            self._rewind(output.batch, exc)
            return
        tock = time.perf_counter()
        result.stage_s["publish"] = tock - tick
        spans = partition_spans(output.batch)
        # One debug line per batch, before and after its commit: a crash between the two
        # shows exactly which acknowledged results a restart will publish again.
        log.debug("batch_flushed", records=len(output.batch), ranges=ranges(spans))
        try:
            publisher.commit_transaction(spans_to_offsets(spans), self._member.consumer)
        except TransactionAbortedError as exc:
            self._rewind(output.batch, exc)
            return
        result.stage_s["commit"] = time.perf_counter() - tock
        if self._on_commit is not None:
            self._on_commit("ok", result.stage_s["commit"])
        log.debug("batch_committed", records=len(output.batch), ranges=ranges(spans))
        stamps = output.batch.timestamps_ms
        result.latencies_s = (self._clock_ms() - stamps[stamps > 0]) / 1000.0
        if self._on_complete is not None:
            self._on_complete(result)

    def _flush(self) -> None:
        """Wait until every message of the transaction is acknowledged.

        Raises:
            PublishError: A delivery failed, or some were still outstanding at the deadline.
        """
        remaining = self._publisher.producer.flush(self._publisher.remaining_s())
        if remaining or self._failures:
            failures, self._failures = self._failures, []
            msg = (
                f"{len(failures)} deliveries failed, {remaining} not acknowledged within "
                f"{self._publisher.flush_timeout_s}s: {failures[:5]}"
            )
            raise PublishError(msg)

    def between_batches(self) -> None:
        """Serve producer callbacks; nothing is in flight between transactions."""
        self._publisher.poll()

    def on_revoke(self, partitions: list[TopicPartition], lost: bool) -> None:
        """Nothing to settle: the barrier leaves nothing in flight between batches."""
        del partitions, lost

    def _rewind(self, batch: Batch, exc: Exception) -> None:
        """Seek back to the batch's first offsets so an aborted batch is scored again.

        Raises:
            FatalError: A partition still assigned could not be rewound.
        """
        if self._on_abort is not None:
            self._on_abort()
        spans = partition_spans(batch)
        log.warning("transaction_aborted", error=str(exc), partitions=len(spans))
        for (topic, partition), (first, _) in spans.items():
            if (topic, partition) not in self._member.assignment:
                continue  # revoked meanwhile: its new owner starts from the committed offset
            try:
                self._member.consumer.seek(TopicPartition(topic, partition, first))
            except KafkaException as seek_error:
                # Without the rewind the next transaction would commit offsets past the aborted
                # batch: stop instead; the restart resumes from the committed offsets.
                msg = f"cannot rewind {topic}[{partition}] to {first}: {seek_error}"
                raise FatalError(msg) from seek_error

    def close(self, clean: bool) -> None:
        """Release the producer: a clean stop flushes; after a fatal error the open
        transaction, if any, is aborted so read_committed readers never see it."""
        try:
            if clean:
                self._publisher.close()
            else:
                self._publisher.abort()
        except FatalError as exc:
            log.warning("producer_close_failed", error=str(exc))
