"""AckTracker: offsets become committable only in batch order, once acknowledged."""

from __future__ import annotations

import numpy as np
import pytest
from confluent_kafka import KafkaError, TopicPartition

from stream_scorer.delivery.acks import AckTracker
from stream_scorer.errors import PublishError


class _Message:
    def topic(self) -> str:
        return "alerts"


def _open(tracker: AckTracker, offset: int, partition: int = 0):  # type: ignore[no-untyped-def]
    return tracker.open([TopicPartition("in", partition, offset)], np.zeros(1, np.int64), 1)


def test_batch_without_messages_is_committable_once_sealed() -> None:
    """A batch that produced nothing is committable as soon as it is sealed."""
    tracker = AckTracker()
    ticket = _open(tracker, 10)
    assert tracker.committable()[0] == []
    ticket.sealed = True
    offsets, done = tracker.committable()
    assert [(tp.partition, tp.offset) for tp in offsets] == [(0, 10)]
    assert done == [ticket]
    assert len(tracker) == 0


def test_later_batch_waits_for_earlier_unacknowledged_one() -> None:
    """An acknowledged batch is not committed while an earlier batch still has deliveries
    outstanding; both are committed together once it is acknowledged."""
    tracker = AckTracker()
    first, second = _open(tracker, 10), _open(tracker, 20)
    first.expect(1)
    first.sealed = second.sealed = True
    assert tracker.committable()[0] == []
    first.on_delivery(None, _Message())  # type: ignore[arg-type]
    offsets, done = tracker.committable()
    assert [(tp.partition, tp.offset) for tp in offsets] == [(0, 20)]
    assert done == [first, second]


def test_offsets_merge_per_partition() -> None:
    """Several acknowledged batches merge to the highest next offset of each partition."""
    tracker = AckTracker()
    for offset, partition in ((5, 0), (7, 1), (9, 0)):
        _open(tracker, offset, partition).sealed = True
    offsets, _ = tracker.committable()
    assert [(tp.partition, tp.offset) for tp in offsets] == [(0, 9), (1, 7)]


def test_failed_delivery_poisons_the_batch_and_everything_after() -> None:
    """A failed delivery raises and nothing of its batch, or after it, becomes committable."""
    tracker = AckTracker()
    bad, later = _open(tracker, 10), _open(tracker, 20)
    bad.expect(1)
    bad.sealed = later.sealed = True
    bad.on_delivery(KafkaError(KafkaError._MSG_TIMED_OUT), _Message())  # type: ignore[arg-type]
    with pytest.raises(PublishError, match="1 deliveries failed"):
        tracker.committable()
    assert len(tracker) == 2


def test_batches_before_a_failed_one_are_handed_out_before_the_error() -> None:
    """Acknowledged batches ahead of a failed one are still committable (they are accounted
    for); the failure is raised on the next call, and nothing after it is ever handed out."""
    tracker = AckTracker()
    first, failed, later = _open(tracker, 10), _open(tracker, 20), _open(tracker, 30)
    first.sealed = failed.sealed = later.sealed = True
    failed.failures.append("dlq: message too large")

    offsets, done = tracker.committable()
    assert [tp.offset for tp in offsets] == [10] and done == [first]
    with pytest.raises(PublishError, match="too large"):
        tracker.committable()


def test_an_empty_queue_acknowledges_sealed_batches_only() -> None:
    """all_delivered marks every sealed batch delivered; one still being produced stays
    pending, since more of its messages may follow."""
    tracker = AckTracker()
    sealed, producing = _open(tracker, 10), _open(tracker, 20)
    sealed.expect(3)
    sealed.sealed = True
    producing.expect(1)

    tracker.all_delivered()
    producing.sealed = True

    offsets, done = tracker.committable()
    assert [(tp.partition, tp.offset) for tp in offsets] == [(0, 10)]
    assert done == [sealed]
    assert not producing.done


def test_an_empty_queue_does_not_hide_a_failure() -> None:
    """A failure reported before the queue emptied still poisons its batch."""
    tracker = AckTracker()
    ticket = _open(tracker, 10)
    ticket.expect(2)
    ticket.on_delivery(KafkaError(KafkaError._MSG_TIMED_OUT), _Message())  # type: ignore[arg-type]
    ticket.sealed = True
    tracker.all_delivered()

    with pytest.raises(PublishError, match="1 deliveries failed"):
        tracker.committable()
