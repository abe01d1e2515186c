"""Batches in flight: which consumed offsets may be committed, once their results are acked.

The pipelined at-least-once loop does not wait for a batch's alerts and dead letters to be
acknowledged before consuming the next batch. Instead each batch gets a :class:`BatchTicket`
that counts its produced messages and their delivery reports. Offsets are committed strictly
in batch order: a batch becomes committable when it and every batch before it are sealed (all
its messages produced) and fully acknowledged. A failed delivery poisons its batch: nothing
from it or after it is ever committed, and :meth:`AckTracker.committable` raises.

Success is not counted per message: the producer reports failures only
(``delivery.report.only.error``, see :mod:`~stream_scorer.delivery.publish`) and a sealed batch
is acknowledged once the producer's queue has been seen empty after it
(:meth:`AckTracker.all_delivered`); a report per message, when configured, counts it down too.

Delivery callbacks run inside ``Producer.poll()``/``flush()`` on the loop's own thread, so no
locking is needed.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from confluent_kafka import KafkaError, Message, TopicPartition
from numpy.typing import NDArray

from stream_scorer.errors import PublishError

__all__ = ["AckTracker", "BatchTicket"]


@dataclass(slots=True)
class BatchTicket:
    """One consumed batch: its offsets, its pending deliveries, and its event timestamps."""

    offsets: list[TopicPartition]
    #: Event timestamps (epoch ms) of its records, for latency at acknowledgement.
    timestamps_ms: NDArray[np.int64] = field(default_factory=lambda: np.empty(0, np.int64))
    records: int = 0
    pending: int = 0
    sealed: bool = False
    failures: list[str] = field(default_factory=list)
    #: Monotonic time the batch was sealed: its acknowledgements are due within the flush
    #: timeout from then.
    sealed_at: float = 0.0
    #: What the pipeline made of the batch, handed on once it is acknowledged.
    result: Any = None
    #: First and last offset per partition, for the debug log lines.
    ranges: dict[str, list[int]] = field(default_factory=dict)
    #: The producer's queue was seen empty after the batch was sealed: every message of it
    #: was delivered or reported failed (see :meth:`AckTracker.all_delivered`).
    flushed: bool = False

    def seal(self, result: Any = None) -> None:
        """Every message of the batch is produced; from now on it only waits for acks."""
        self.sealed = True
        self.sealed_at = time.monotonic()
        self.result = result

    def expect(self, messages: int) -> None:
        """``messages`` more messages of this batch are about to be queued."""
        self.pending += messages

    def on_delivery(self, error: KafkaError | None, message: Message) -> None:
        """Delivery report of one of this batch's messages (librdkafka callback; with
        ``delivery.report.only.error`` only failures are reported)."""
        self.pending -= 1
        if error is not None:
            self.failures.append(f"{message.topic()}: {error}")

    @property
    def done(self) -> bool:
        """Sealed and every message acknowledged: each reported, or the queue seen empty."""
        return self.sealed and (self.pending == 0 or self.flushed)


class AckTracker:
    """Batches in flight, oldest first."""

    def __init__(self) -> None:
        """No batch in flight."""
        self._tickets: collections.deque[BatchTicket] = collections.deque()

    def __len__(self) -> int:
        """Batches not yet committable."""
        return len(self._tickets)

    def open(
        self, offsets: list[TopicPartition], timestamps_ms: NDArray[np.int64], records: int
    ) -> BatchTicket:
        """Start tracking a batch; seal it once all its messages are produced."""
        ticket = BatchTicket(offsets, timestamps_ms, records)
        self._tickets.append(ticket)
        return ticket

    def all_delivered(self) -> None:
        """The producer's queue is empty: every sealed batch's messages are delivered.

        Sound because a message counts in ``len(producer)`` from ``produce()`` until its
        delivery report has been served (librdkafka's ``rd_kafka_outq_len``: messages waiting
        to be sent or acknowledged, plus reports waiting to be served), and a failed message's
        report always reaches its ticket's callback, ``delivery.report.only.error`` or not. So
        a queue seen empty after a poll, with no failure recorded, means every message produced
        before that poll was acknowledged. Only sealed batches are marked: a batch still being
        produced may have more messages to come.
        """
        for ticket in self._tickets:
            if ticket.sealed:
                ticket.flushed = True

    def committable(self) -> tuple[list[TopicPartition], list[BatchTicket]]:
        """Offsets of the leading acknowledged batches, merged, and those batches.

        Raises:
            PublishError: A delivery of the oldest unfinished batch failed; nothing of it or
                after it may be committed.
        """
        done: list[BatchTicket] = []
        while self._tickets:
            ticket = self._tickets[0]
            if ticket.failures:
                if done:
                    break  # hand out the batches before it first; raise on the next call
                msg = f"{len(ticket.failures)} deliveries failed: {ticket.failures[:5]}"
                raise PublishError(msg)
            if not ticket.done:
                break
            done.append(self._tickets.popleft())
        return _merge([t.offsets for t in done]), done

    def oldest(self) -> BatchTicket | None:
        """The oldest batch not yet committable, if any."""
        return self._tickets[0] if self._tickets else None


def _merge(batches: Sequence[list[TopicPartition]]) -> list[TopicPartition]:
    """The highest next-offset per partition over several batches (later batches win)."""
    latest: dict[tuple[str, int], int] = {}
    for offsets in batches:
        for tp in offsets:
            key = (tp.topic, tp.partition)
            latest[key] = max(latest.get(key, -1), tp.offset)
    return [TopicPartition(t, p, o) for (t, p), o in sorted(latest.items())]
