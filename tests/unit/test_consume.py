"""Stage 1, consume: how a micro-batch is taken from librdkafka's queue.

librdkafka's ``Consumer`` is replaced by a fake queue that records every ``consume(n, timeout)``
call; the real consumer is exercised on the real broker in tests/integration.
"""

from __future__ import annotations

from typing import Any

import pytest

from stream_scorer.consume import BatchConsumer


class FakeMessage:
    """A data message at an offset of partition 0."""

    def __init__(self, offset: int) -> None:
        """At ``offset``."""
        self._offset = offset

    def error(self) -> None:
        """No error."""

    def topic(self) -> str:
        """Always ``in``."""
        return "in"

    def partition(self) -> int:
        """Always 0."""
        return 0

    def offset(self) -> int:
        """The offset."""
        return self._offset

    def key(self) -> bytes:
        """A key."""
        return b"k"

    def value(self) -> bytes:
        """A value."""
        return b"v"

    def headers(self) -> None:
        """No headers."""

    def timestamp(self) -> tuple[int, int]:
        """Create time 1000."""
        return (1, 1000)


class FakeQueue:
    """Answers consume(n, timeout) from scripted arrivals: ``ready`` messages are queued now;
    ``arriving`` ones come one by one to a caller that waits."""

    instance: FakeQueue

    def __init__(self, config: dict[str, Any]) -> None:
        """Empty; remembers itself for the test."""
        del config
        self.ready: list[FakeMessage] = []
        self.arriving: list[FakeMessage] = []
        self.calls: list[tuple[int, float]] = []
        FakeQueue.instance = self

    def subscribe(self, topics: list[str], **callbacks: Any) -> None:
        """Nothing to do."""

    def consume(self, num_messages: int, timeout: float) -> list[FakeMessage]:
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
    queue.ready = [FakeMessage(i) for i in range(7)]

    records = consumer.poll_batch()

    assert [r.offset for r in records] == list(range(7))
    assert queue.calls == [(100, 0)]


def test_full_batch_when_more_has_arrived(make_consumer: Any) -> None:
    """Under load a batch is max_batch messages; the rest stay queued for the next."""
    consumer, queue = make_consumer(max_batch=3, max_wait_s=0.5)
    queue.ready = [FakeMessage(i) for i in range(5)]

    assert [r.offset for r in consumer.poll_batch()] == [0, 1, 2]
    assert [r.offset for r in consumer.poll_batch()] == [3, 4]


def test_waits_for_the_first_message_only(make_consumer: Any) -> None:
    """With nothing queued: wait up to max_wait for one message, then take what came with it."""
    consumer, queue = make_consumer(max_batch=100, max_wait_s=0.5)
    queue.arriving = [FakeMessage(i) for i in range(4)]

    records = consumer.poll_batch()

    assert [r.offset for r in records] == [0, 1, 2, 3]
    assert queue.calls == [(100, 0), (1, 0.5), (99, 0)]


def test_linger_waits_for_the_batch_to_fill(make_consumer: Any) -> None:
    """batch.linger_ms > 0: once a batch has a message, wait that long for the rest."""
    consumer, queue = make_consumer(max_batch=10, max_wait_s=0.5, linger_s=0.05)
    queue.ready = [FakeMessage(0)]
    queue.arriving = [FakeMessage(1), FakeMessage(2)]

    records = consumer.poll_batch()

    assert [r.offset for r in records] == [0, 1, 2]
    assert queue.calls == [(10, 0), (9, 0.05)]


def test_nothing_arrives(make_consumer: Any) -> None:
    """No message within max_wait: an empty batch, after one wait and no linger."""
    consumer, queue = make_consumer(max_batch=10, max_wait_s=0.5, linger_s=0.05)

    assert consumer.poll_batch() == []
    assert queue.calls == [(10, 0), (1, 0.5)]
