"""Stage 8: move the consumer group past a batch, only after its results are acknowledged.

In: the batch (:class:`~stream_scorer.records.Batch`). Out: committed offsets, one per
partition, each the highest consumed offset + 1. The commit is synchronous. A transient failure
(coordinator moving or loading, a timeout, a broker briefly away) is retried until
:data:`COMMIT_TIMEOUT_S`. A commit refused because the group is rebalancing raises
:class:`RebalanceCommitError`: the batch's results are already acknowledged, so the caller may
carry on (at-least-once allows the next owner to score the batch again). Any other failure
raises :class:`~stream_scorer.errors.CommitError` and the batch is replayed after a restart.

:class:`OffsetCommitter` keeps the at-least-once offsets of the pipelined loop and commits them
asynchronously between batches, synchronously on revocation and at shutdown.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence

import numpy as np
import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from stream_scorer.errors import CommitError
from stream_scorer.records import Batch

__all__ = [
    "COMMIT_TIMEOUT_S",
    "OffsetCommitter",
    "RebalanceCommitError",
    "commit_offsets",
    "partition_spans",
    "spans_to_offsets",
]

log = structlog.get_logger(__name__)

#: Longest a batch's commit is retried; part of the batch-time bound the runner checks
#: against max.poll.interval.ms.
COMMIT_TIMEOUT_S = 30.0
#: Pause between commit attempts while the coordinator is unavailable.
COMMIT_RETRY_BACKOFF_S = 0.2
#: The group moved on (a rebalance started or finished without this member's generation):
#: the commit is refused, not failed; the partitions' next owner replays from the last commit.
REBALANCE_ERRORS = frozenset({
    KafkaError.REBALANCE_IN_PROGRESS, KafkaError.ILLEGAL_GENERATION,
    KafkaError.UNKNOWN_MEMBER_ID, KafkaError.FENCED_INSTANCE_ID, KafkaError._ASSIGNMENT_LOST,
})  # fmt: skip
#: Transient: the coordinator is moving, loading or briefly unreachable; retry.
RETRIABLE_ERRORS = frozenset({
    KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.REQUEST_TIMED_OUT,
    KafkaError._TIMED_OUT, KafkaError._TRANSPORT, KafkaError._WAIT_COORD,
})  # fmt: skip


class RebalanceCommitError(CommitError):
    """The group refused the commit because it is rebalancing or this member's generation is
    stale; the batch's results are acknowledged, only the offsets did not move."""


def partition_spans(batch: Batch) -> dict[tuple[str, int], tuple[int, int]]:
    """First and last offset of the batch per (topic, partition), in sorted order.

    Runs once per batch over every record, on the batch's columns, grouped with numpy.
    """
    if not len(batch):
        return {}
    topics: Sequence[str] = batch.topics
    parts, offs = batch.partitions, batch.offsets
    result: dict[tuple[str, int], tuple[int, int]] = {}
    if topics.count(topics[0]) != len(topics):  # several input topics: rare, keep it simple
        for topic in sorted(set(topics)):
            mask = np.fromiter((t == topic for t in topics), bool, len(topics))
            for partition in np.unique(parts[mask]).tolist():
                mine = offs[mask & (parts == partition)]
                result[(topic, partition)] = (int(mine.min()), int(mine.max()))
        return result
    topic = topics[0]
    for partition in np.unique(parts).tolist():
        mine = offs[parts == partition]
        result[(topic, partition)] = (int(mine.min()), int(mine.max()))
    return result


def spans_to_offsets(spans: Mapping[tuple[str, int], tuple[int, int]]) -> list[TopicPartition]:
    """The offsets to commit for a batch's :func:`partition_spans`: last + 1 per partition."""
    return [
        TopicPartition(topic, partition, last + 1)
        for (topic, partition), (_, last) in spans.items()
    ]


def _commit_once(consumer: Consumer, offsets: Sequence[TopicPartition]) -> tuple[set[int], str]:
    """One synchronous commit: the error codes it reported and a message ("" when it succeeded).

    A per-partition error that is not a ``KafkaError`` has no code and is never retried.
    """
    try:
        result = consumer.commit(offsets=list(offsets), asynchronous=False)
    except KafkaException as exc:
        error = exc.args[0] if exc.args else None
        codes = {error.code()} if isinstance(error, KafkaError) else {KafkaError._FAIL}
        return codes, f"commit of {len(offsets)} partition offsets failed: {exc}"
    failed = [tp for tp in result or () if tp.error is not None]
    if not failed:
        return set(), ""
    codes = {
        tp.error.code() if isinstance(tp.error, KafkaError) else KafkaError._FAIL for tp in failed
    }
    return codes, f"commit failed for {[(tp.topic, tp.partition, str(tp.error)) for tp in failed]}"


def commit_offsets(
    consumer: Consumer, offsets: Sequence[TopicPartition], timeout_s: float = COMMIT_TIMEOUT_S
) -> None:
    """Commit ``offsets`` synchronously, retrying transient failures until ``timeout_s``.

    Raises:
        RebalanceCommitError: The group is rebalancing or this member's generation is stale.
        CommitError: The broker refused the commit, or did not take it within ``timeout_s``.
    """
    if not offsets:
        return
    deadline = time.monotonic() + timeout_s
    while True:
        codes, detail = _commit_once(consumer, offsets)
        if not codes:
            return
        if codes & REBALANCE_ERRORS:
            raise RebalanceCommitError(detail)
        if not codes <= RETRIABLE_ERRORS or time.monotonic() >= deadline:
            raise CommitError(detail)
        log.warning("commit_retry", error=detail)
        time.sleep(COMMIT_RETRY_BACKOFF_S)  # back off while the coordinator comes back


class OffsetCommitter:
    """At-least-once offsets of the pipelined loop: what is acknowledged and what is committed.

    The loop hands it the offsets of every batch whose results are all acknowledged
    (:meth:`acknowledge`, in batch order) and asks it after each batch to commit them
    asynchronously (:meth:`commit_async`): the consumer goes on at once instead of waiting a
    round trip to the group coordinator per batch. The outcome arrives in librdkafka's commit
    callback (:meth:`on_commit`, served inside ``consume()``): a commit refused by a rebalance or
    a transient error is simply sent again with the next one (offsets only move forward, so a
    later commit covers an earlier one); any other failure stops the loop at its next batch.
    On revocation and at shutdown the acknowledged offsets are committed synchronously
    (:meth:`commit_sync`), while the member still owns the partitions.

    Only partitions the consumer holds are ever committed: a partition revoked or lost is
    forgotten (:meth:`forget`), so nothing is committed for it by a member that no longer
    owns it.
    """

    def __init__(self, on_outcome: Callable[[str, float | None], None] | None = None) -> None:
        """Nothing acknowledged yet; ``on_outcome(result, seconds)`` hears of every commit's
        result (``ok``, ``retried``, ``refused``, ``failed``; seconds of a synchronous one)."""
        self._on_outcome = on_outcome
        self._acked: dict[tuple[str, int], int] = {}
        #: Offsets handed to a commit that has not failed since.
        self._sent: dict[tuple[str, int], int] = {}
        self._failure: str | None = None
        #: Asynchronous commits that failed and were sent again (for tests and the log).
        self.retried = 0

    def acknowledge(self, offsets: Sequence[TopicPartition]) -> None:
        """Results up to these next-offsets are acknowledged; they may be committed."""
        for tp in offsets:
            key = (tp.topic, tp.partition)
            if tp.offset > self._acked.get(key, -1):
                self._acked[key] = tp.offset

    def pending(self, assignment: Collection[tuple[str, int]]) -> list[TopicPartition]:
        """Acknowledged offsets of held partitions not yet (successfully) sent in a commit."""
        return [
            TopicPartition(topic, partition, offset)
            for (topic, partition), offset in sorted(self._acked.items())
            if (topic, partition) in assignment and self._sent.get((topic, partition)) != offset
        ]

    def commit_async(self, consumer: Consumer, assignment: Collection[tuple[str, int]]) -> int:
        """Send what is pending without waiting; the number of partitions sent.

        Raises:
            CommitError: An earlier asynchronous commit failed for good.
        """
        if self._failure is not None:
            raise CommitError(self._failure)
        offsets = self.pending(assignment)
        if not offsets:
            return 0
        try:
            consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as exc:
            msg = f"commit of {len(offsets)} partition offsets failed: {exc}"
            raise CommitError(msg) from exc
        for tp in offsets:
            self._sent[(tp.topic, tp.partition)] = tp.offset
        return len(offsets)

    def commit_sync(
        self,
        consumer: Consumer,
        assignment: Collection[tuple[str, int]],
        timeout_s: float = COMMIT_TIMEOUT_S,
    ) -> list[TopicPartition]:
        """Commit every acknowledged offset of the held partitions and wait for the answer.

        Sends them even if an asynchronous commit carried them already: that one may still be
        in flight, or have failed unseen. A rebalance refusing the commit is logged, not
        raised: the partitions' next owner scores the uncommitted batches again.

        Raises:
            CommitError: The broker refused the commit for another reason.
        """
        offsets = [
            TopicPartition(topic, partition, offset)
            for (topic, partition), offset in sorted(self._acked.items())
            if (topic, partition) in assignment
        ]
        tick = time.perf_counter()
        try:
            commit_offsets(consumer, offsets, timeout_s)
        except RebalanceCommitError as exc:
            log.warning("commit_refused_by_rebalance", error=str(exc), partitions=len(offsets))
            self._outcome("refused", time.perf_counter() - tick)
            return []
        except CommitError:
            self._outcome("failed", time.perf_counter() - tick)
            raise
        if offsets:
            self._outcome("ok", time.perf_counter() - tick)
        for tp in offsets:
            self._sent[(tp.topic, tp.partition)] = tp.offset
        return offsets

    def forget(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Drop revoked or lost partitions: this member commits nothing for them any more."""
        for key in partitions:
            self._acked.pop(key, None)
            self._sent.pop(key, None)

    def on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """librdkafka's commit callback (``on_commit`` in the consumer config)."""
        failed = [tp for tp in partitions if tp.error is not None]
        if error is None and not failed:
            self._outcome("ok", None)
            return
        codes = {
            tp.error.code() if isinstance(tp.error, KafkaError) else KafkaError._FAIL
            for tp in failed
        }
        if error is not None:
            codes.add(error.code())
        detail = f"asynchronous commit failed: {error or ''} {[str(tp.error) for tp in failed]}"
        if codes <= REBALANCE_ERRORS | RETRIABLE_ERRORS | {KafkaError._NO_OFFSET}:
            # Sent again with the next commit; the partitions' offsets only move forward.
            for tp in failed or partitions:
                key = (tp.topic, tp.partition)
                if self._sent.get(key) == tp.offset:
                    del self._sent[key]
            self.retried += 1
            self._outcome("retried", None)
            log.warning("commit_retry", error=detail)
            return
        self._outcome("failed", None)
        self._failure = detail

    def _outcome(self, result: str, seconds: float | None) -> None:
        if self._on_outcome is not None:
            self._on_outcome(result, seconds)
