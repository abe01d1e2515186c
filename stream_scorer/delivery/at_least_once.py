"""At-least-once delivery: pipelined publishing, offsets committed once results are acknowledged.

:meth:`AtLeastOnceDelivery.submit` produces a batch's alerts and dead letters under a ticket
(:mod:`~stream_scorer.delivery.acks`) that counts their delivery reports, and returns while the
acknowledgements arrive: the loop consumes and scores the next batch meanwhile. A batch's offsets
become committable once it and every batch before it are acknowledged; they are committed
asynchronously, at most every ``commit_interval_s`` (:class:`~stream_scorer.delivery.commit.
OffsetCommitter`). At most ``max_in_flight`` batches wait for acknowledgements; ``submit`` waits
for the oldest before it returns when there are more, which is the backpressure (``1`` makes it
a plain barrier: every batch acknowledged before the next is consumed).

On revocation and at a clean stop it waits for everything in flight and commits synchronously
while this member still owns the partitions; lost partitions are dropped, never committed. After
a fatal error it commits only what was acknowledged before the failure, in order.

A failed delivery poisons its batch: nothing from it or after it is ever committed, and the next
call raises :class:`~stream_scorer.errors.PublishError`. A batch not acknowledged within
``flush_timeout_s`` of being produced raises it too.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import structlog
from confluent_kafka import TopicPartition

from stream_scorer.delivery import CompletedCallback, GroupMember
from stream_scorer.delivery.acks import AckTracker, BatchTicket
from stream_scorer.delivery.commit import OffsetCommitter, partition_spans, spans_to_offsets
from stream_scorer.delivery.publish import Publisher
from stream_scorer.errors import FatalError, PublishError
from stream_scorer.records import BatchOutput, BatchResult

__all__ = ["ACK_WAIT_POLL_S", "FATAL_COMMIT_TIMEOUT_S", "AtLeastOnceDelivery", "ranges"]

log = structlog.get_logger(__name__)

#: Longest single wait for a delivery report while waiting for room in flight.
ACK_WAIT_POLL_S = 0.05
#: Longest the commit of acknowledged offsets is retried when stopping after a fatal error.
FATAL_COMMIT_TIMEOUT_S = 5.0


def ranges(spans: dict[tuple[str, int], tuple[int, int]]) -> dict[str, list[int]]:
    """First and last offset per partition of a batch, keyed ``"<partition>"`` (for logs)."""
    return {str(partition): [first, last] for (_, partition), (first, last) in spans.items()}


class AtLeastOnceDelivery:
    """Tickets per batch, commits in batch order, drained on revocation and at shutdown."""

    def __init__(
        self,
        member: GroupMember,
        publisher: Publisher,
        flush_timeout_s: float,
        commit_interval_s: float,
        max_in_flight: int,
        on_complete: CompletedCallback | None = None,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        committer: OffsetCommitter | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """Wire the strategy to a consumer and a producer.

        Args:
            member: The consumer (commits) and its assignment.
            publisher: The producer.
            flush_timeout_s: Longest a batch may wait for its acknowledgements.
            commit_interval_s: Least time between asynchronous commits; 0 after every batch.
            max_in_flight: Batches that may await acknowledgements while the next is scored.
            on_complete: Told of each batch once it is acknowledged, latencies set.
            clock_ms: Wall clock in epoch ms, for end-to-end latency.
            committer: The committer whose ``on_commit`` the consumer's config calls (the
                consumer is created before this strategy); a new one when not given.
            monotonic: Clock of the acknowledgement and commit deadlines.
        """
        self._member = member
        self._publisher = publisher
        self._flush_timeout_s = flush_timeout_s
        self._commit_interval_s = commit_interval_s
        self._max_in_flight = max_in_flight
        self._on_complete = on_complete
        self._clock_ms = clock_ms
        self._monotonic = monotonic
        #: Batches produced but not yet all acknowledged, oldest first ...
        self._tracker = AckTracker()
        #: ... and the acknowledged offsets, committed asynchronously between batches.
        self.committer = committer if committer is not None else OffsetCommitter()
        self._acked_not_logged: list[BatchTicket] = []
        #: An error inside a librdkafka callback, raised at the next call from the loop.
        self._callback_failure: FatalError | None = None
        self._stopping_after_failure = False
        #: Monotonic time the next asynchronous commit is due.
        self._next_commit_at = 0.0

    @property
    def queue_depth(self) -> int:
        """Messages in the producer's local queue, not yet acknowledged."""
        return self._publisher.queue_depth

    @property
    def in_flight(self) -> int:
        """Batches produced but not yet all acknowledged."""
        return len(self._tracker)

    def start(self) -> None:
        """Nothing to prepare: an idempotent producer needs no set-up call."""

    def submit(self, output: BatchOutput) -> None:
        """Produce the batch under a ticket; wait only while too many batches are in flight."""
        self._raise_callback_failure()
        batch, result = output.batch, output.result
        spans = partition_spans(batch)
        stamps = batch.timestamps_ms
        ticket = self._tracker.open(spans_to_offsets(spans), stamps[stamps > 0], len(batch))
        ticket.ranges = ranges(spans)
        tick = time.perf_counter()
        self._publisher.start_batch()
        # Counted before producing: a full queue serves delivery reports while it waits, and
        # they must find the ticket expecting them.
        ticket.expect(len(output.messages))
        self._publisher.produce_all(output.messages, ticket.on_delivery)
        ticket.seal(result)
        ticket.sealed_at = self._monotonic()
        tock = time.perf_counter()
        result.stage_s["publish"] = tock - tick
        self._settle(in_flight=self._max_in_flight - 1)
        result.stage_s["backpressure"] = time.perf_counter() - tock

    def between_batches(self) -> None:
        """Serve delivery reports, take in acknowledged batches, commit if due."""
        self._raise_callback_failure()
        self._settle()

    def _settle(self, in_flight: int | None = None) -> None:
        """Serve delivery reports, take in the acknowledged batches and commit their offsets
        asynchronously; with ``in_flight``, first wait until at most that many batches are
        still unacknowledged.

        Raises:
            PublishError: A delivery failed, or a batch was not acknowledged within
                ``flush_timeout_s`` of being produced.
            CommitError: An asynchronous commit failed for good.
        """
        publisher = self._publisher
        publisher.poll()
        self._collect_acked()
        limit = len(self._tracker) if in_flight is None else in_flight
        while (oldest := self._tracker.oldest()) is not None:
            overdue_s = self._monotonic() - oldest.sealed_at - self._flush_timeout_s
            if overdue_s > 0:
                msg = (
                    f"a batch of {oldest.records} records was not acknowledged within "
                    f"delivery.flush_timeout_s={self._flush_timeout_s}s "
                    f"({self._publisher.queue_depth} messages outstanding in the producer)"
                )
                raise PublishError(msg)
            if len(self._tracker) <= limit:
                break
            publisher.poll(min(-overdue_s, ACK_WAIT_POLL_S))
            self._collect_acked()
        now = self._monotonic()
        member = self._member
        if now >= self._next_commit_at and self.committer.commit_async(
            member.consumer, member.assignment
        ):
            self._next_commit_at = now + self._commit_interval_s
            self._log_committed()

    def _collect_acked(self) -> None:
        """Move fully acknowledged batches (in order) to the committer; report them.

        Called after a poll or a flush: an empty producer queue then means every sealed
        batch is delivered (:meth:`AckTracker.all_delivered`).
        """
        if self._publisher.queue_depth == 0:
            self._tracker.all_delivered()
        offsets, done = self._tracker.committable()
        if not done:
            return
        now_ms = self._clock_ms()
        for ticket in done:
            log.debug("batch_flushed", records=ticket.records, ranges=ticket.ranges)
            self._acked_not_logged.append(ticket)
            if isinstance(ticket.result, BatchResult):
                ticket.result.latencies_s = (now_ms - ticket.timestamps_ms) / 1000.0
                if self._on_complete is not None:
                    self._on_complete(ticket.result)
        self.committer.acknowledge(offsets)

    def _log_committed(self) -> None:
        for ticket in self._acked_not_logged:
            log.debug("batch_committed", records=ticket.records, ranges=ticket.ranges)
        self._acked_not_logged.clear()

    def _drain(self) -> None:
        """Wait for every outstanding acknowledgement and take the batches in.

        Raises:
            PublishError: A delivery failed or did not arrive within the flush timeout.
        """
        remaining = self._publisher.drain(self._flush_timeout_s)
        self._collect_acked()
        if remaining or len(self._tracker):
            msg = (
                f"{len(self._tracker)} batches not acknowledged within "
                f"delivery.flush_timeout_s={self._flush_timeout_s}s "
                f"({remaining} messages outstanding)"
            )
            raise PublishError(msg)

    def on_revoke(self, partitions: list[TopicPartition], lost: bool) -> None:
        """Before partitions go: wait for every batch in flight, then commit what is
        acknowledged while this member still owns the partitions (revoked), or drop it
        (lost: the group has moved on and a commit from here would be refused or wrong).

        Runs inside ``consume()``. An error cannot leave a librdkafka callback, so it is kept
        and raised by the next call from the loop; until then nothing is committed.
        """
        gone = [(p.topic, p.partition) for p in partitions]
        if self._stopping_after_failure:
            # After a fatal error nothing more is committed, not even from the revocation that
            # closing the consumer triggers: the restart replays from the last commit.
            self.committer.forget(gone)
            return
        try:
            self._drain()
            if not lost:
                held = set(gone) | set(self._member.assignment)
                if self.committer.commit_sync(self._member.consumer, held):
                    self._log_committed()
        except FatalError as exc:
            self._callback_failure = exc
        finally:
            self.committer.forget(gone)

    def _raise_callback_failure(self) -> None:
        failure, self._callback_failure = self._callback_failure, None
        if failure is not None:
            raise failure

    def close(self, clean: bool) -> None:
        """Clean: drain and commit everything. Fatal: commit what was acknowledged before the
        failure, in order, waiting for nothing (the cluster may be what failed)."""
        member = self._member
        if clean:
            try:
                self._drain()
                if self.committer.commit_sync(member.consumer, member.assignment):
                    self._log_committed()
            except FatalError as exc:
                log.error("final_commit_failed", error=str(exc))
            self._publisher.close()
            return
        self._stopping_after_failure = True
        try:
            with contextlib.suppress(PublishError):
                self._collect_acked()
            if self.committer.commit_sync(
                member.consumer, member.assignment, FATAL_COMMIT_TIMEOUT_S
            ):
                self._log_committed()
        except FatalError as exc:
            log.warning("final_commit_failed", error=str(exc))
