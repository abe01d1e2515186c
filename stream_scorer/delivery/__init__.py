"""Stages 7–8 as a strategy: publish a batch's output, then move the group past it, safely.

The pipeline returns a :class:`~stream_scorer.records.BatchOutput`; a :class:`Delivery` takes it
from there. Two strategies keep the two promises, each whole in one module:

* :class:`~stream_scorer.delivery.at_least_once.AtLeastOnceDelivery`: produce, go on to the next
  batch while acknowledgements arrive (tickets), commit acknowledged offsets in batch order,
  asynchronously; wait for everything in flight and commit synchronously on revocation and at
  shutdown (:mod:`~stream_scorer.delivery.acks`, :mod:`~stream_scorer.delivery.commit`).
* :class:`~stream_scorer.delivery.exactly_once.ExactlyOnceDelivery`: one Kafka transaction per
  batch holds its messages and its consumed offsets; an aborted transaction rewinds the consumer
  so the batch is scored again.

The runner drives a strategy through :class:`Delivery` only, so the loop never branches on the
delivery mode. When a batch is safe (acknowledged, or committed in its transaction) the strategy
hands its result to the ``on_complete`` callback it was built with.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Protocol

from confluent_kafka import Consumer, TopicPartition

from stream_scorer.records import BatchOutput, BatchResult

__all__ = ["CompletedCallback", "Delivery", "GroupMember"]

#: Called once per batch when its results are safe, with latencies set.
CompletedCallback = Callable[[BatchResult], None]


class GroupMember(Protocol):
    """What a strategy needs of the consumer: the client (commits, seeks) and the assignment."""

    @property
    def consumer(self) -> Consumer:
        """The confluent-kafka consumer."""
        ...

    @property
    def assignment(self) -> Collection[tuple[str, int]]:
        """(topic, partition) pairs this member holds now."""
        ...


class Delivery(Protocol):
    """Publishes batch outputs and commits their offsets, keeping one delivery promise."""

    def start(self) -> None:
        """Prepare the producer (exactly-once: initialise transactions, fencing zombies).

        Raises:
            FatalError: The producer could not be prepared.
        """
        ...

    def submit(self, output: BatchOutput) -> None:
        """Publish one batch's messages; its offsets follow once its results are safe.

        Adds its own stage timings to ``output.result.stage_s`` (``publish``, and
        ``backpressure`` or ``commit``).

        Raises:
            FatalError: A delivery or commit failed; nothing of this batch or after it is
                committed.
        """
        ...

    def between_batches(self) -> None:
        """Serve delivery reports and commit what is safe, without waiting.

        Raises:
            FatalError: A delivery or commit failed, here or in a rebalance callback.
        """
        ...

    def on_revoke(self, partitions: list[TopicPartition], lost: bool) -> None:
        """Partitions are leaving this member (inside ``consume()``): settle them first."""
        ...

    def close(self, clean: bool) -> None:
        """Stop: after a clean stop wait for and commit everything; after a fatal error commit
        only what was safe before it, and release the producer."""
        ...

    @property
    def in_flight(self) -> int:
        """Batches published but not yet safe."""
        ...

    @property
    def queue_depth(self) -> int:
        """Messages in the producer's local queue, not yet acknowledged."""
        ...
