"""Stage 1, consume: how a micro-batch is taken from librdkafka's queue.

librdkafka's ``Consumer`` is replaced by a fake queue that records every ``consume(n, timeout)``
call; the real consumer is exercised on the real broker in tests/integration.
"""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, Message

from stream_scorer.consume import BatchConsumer, MessageBatch
from stream_scorer.errors import FatalError
from stream_scorer.records import SourceRecord


def data_message(offset: int) -> Message:
    """A data message at ``offset`` of partition 0 (confluent-kafka's own Message type)."""
    return Message(
        topic="in", partition=0, offset=offset, key=b"k", value=b"v", timestamp=(1, 1000)
    )


def error_message(code: int, fatal: bool = False) -> Message:
    """An event librdkafka reports in the message stream instead of data."""
    return Message(
        topic="in", partition=0, offset=-1001, timestamp=(0, -1),
        error=KafkaError(code, "broken", fatal=fatal),
    )  # fmt: skip


class FakeQueue:
    """Answers consume(n, timeout) from scripted arrivals: ``ready`` messages are queued now;
    ``arriving`` ones come one by one to a caller that waits."""

    instance: FakeQueue

    def __init__(self, config: dict[str, Any]) -> None:
        """Empty; remembers itself for the test."""
        del config
        self.ready: list[Message] = []
        self.arriving: list[Message] = []
        self.calls: list[tuple[int, float]] = []
        FakeQueue.instance = self

    def subscribe(self, topics: list[str], **callbacks: Any) -> None:
        """Nothing to do."""

    def consume(self, num_messages: int, timeout: float) -> list[Message]:
        """What is queued (up to n); when waiting, also what arrives meanwhile."""
        self.calls.append((num_messages, timeout))
        if timeout > 0:
            self.ready += self.arriving
            self.arriving = []
        taken, self.ready = self.ready[:num_messages], self.ready[num_messages:]
        return taken


@pytest.fixture
def make_consumer(monkeypatch: pytest.MonkeyPatch) -> Any:
    """``make_consumer(max_batch, max_wait_s, linger_s)`` → (BatchConsumer, FakeQueue)."""
    monkeypatch.setattr("stream_scorer.consume.Consumer", FakeQueue)

    def make(max_batch: int, max_wait_s: float, linger_s: float = 0.0) -> Any:
        consumer = BatchConsumer({}, "in", max_batch, max_wait_s, linger_s)
        return consumer, FakeQueue.instance

    return make


def test_takes_what_has_arrived_without_waiting(make_consumer: Any) -> None:
    """Messages already queued are a batch at once: no wait to fill it."""
    consumer, queue = make_consumer(max_batch=100, max_wait_s=0.5)
    queue.ready = [data_message(i) for i in range(7)]

    records = consumer.poll_batch()

    assert [r.offset for r in records] == list(range(7))
    assert queue.calls == [(100, 0)]


def test_full_batch_when_more_has_arrived(make_consumer: Any) -> None:
    """Under load a batch is max_batch messages; the rest stay queued for the next."""
    consumer, queue = make_consumer(max_batch=3, max_wait_s=0.5)
    queue.ready = [data_message(i) for i in range(5)]

    assert [r.offset for r in consumer.poll_batch()] == [0, 1, 2]
    assert [r.offset for r in consumer.poll_batch()] == [3, 4]


def test_waits_for_the_first_message_only(make_consumer: Any) -> None:
    """With nothing queued: wait up to max_wait for one message, then take what came with it."""
    consumer, queue = make_consumer(max_batch=100, max_wait_s=0.5)
    queue.arriving = [data_message(i) for i in range(4)]

    records = consumer.poll_batch()

    assert [r.offset for r in records] == [0, 1, 2, 3]
    assert queue.calls == [(100, 0), (1, 0.5), (99, 0)]


def test_linger_waits_for_the_batch_to_fill(make_consumer: Any) -> None:
    """batch.linger_ms > 0: once a batch has a message, wait that long for the rest."""
    consumer, queue = make_consumer(max_batch=10, max_wait_s=0.5, linger_s=0.05)
    queue.ready = [data_message(0)]
    queue.arriving = [data_message(1), data_message(2)]

    records = consumer.poll_batch()

    assert [r.offset for r in records] == [0, 1, 2]
    assert queue.calls == [(10, 0), (9, 0.05)]


def test_nothing_arrives(make_consumer: Any) -> None:
    """No message within max_wait: an empty batch, after one wait and no linger."""
    consumer, queue = make_consumer(max_batch=10, max_wait_s=0.5, linger_s=0.05)

    assert len(consumer.poll_batch()) == 0
    assert queue.calls == [(10, 0), (1, 0.5)]


def test_batch_is_read_by_column_and_by_record(make_consumer: Any) -> None:
    """A batch hands out values, partitions, offsets and timestamps as columns, and a record
    for any one message, holding the same values."""
    consumer, queue = make_consumer(max_batch=10, max_wait_s=0.5)
    queue.ready = [
        Message(topic="in", partition=p, offset=o, key=b"k%d" % o, value=b"v%d" % o,
                headers=[("h", b"1")] if o == 7 else None, timestamp=(1, ts))
        for p, o, ts in ((2, 7, 1500), (0, 3, -1), (2, 8, 1600))
    ]  # fmt: skip

    batch = consumer.poll_batch()

    assert isinstance(batch, MessageBatch)
    assert batch.values == [b"v7", b"v3", b"v8"]
    assert batch.partitions.tolist() == [2, 0, 2]
    assert batch.offsets.tolist() == [7, 3, 8]
    assert batch.timestamps_ms.tolist() == [1500, 0, 1600]
    assert batch.topics == ["in", "in", "in"]
    assert batch[0] == SourceRecord("in", 2, 7, b"k7", b"v7", (("h", b"1"),), 1500)
    assert batch[1] == SourceRecord("in", 0, 3, b"k3", b"v3", (), 0)
    assert list(batch[1:]) == [batch[1], batch[2]]
    assert list(batch) == [batch[0], batch[1], batch[2]]


def test_error_events_are_left_out_and_fatal_ones_raise(make_consumer: Any) -> None:
    """Transient errors in the message stream (partition EOF, a broker hiccup) are not
    records; a fatal one stops the loop."""
    consumer, queue = make_consumer(max_batch=10, max_wait_s=0.5)
    queue.ready = [
        data_message(0),
        error_message(KafkaError._PARTITION_EOF),
        error_message(KafkaError._TRANSPORT),
        data_message(1),
    ]

    assert [record.offset for record in consumer.poll_batch()] == [0, 1]

    queue.ready = [data_message(2), error_message(KafkaError._FATAL, fatal=True)]
    with pytest.raises(FatalError, match="fatal consumer error"):
        consumer.poll_batch()
