"""Exactly-once delivery on fakes (no broker, no model): one transaction per batch holds its
messages and offsets; an aborted transaction rewinds the batch's partitions that are still held
and reports nothing; a failed delivery stops the loop; a fatal stop aborts the open transaction.

tests/integration proves the same strategy on the real broker (kill -9, fencing, aborts).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from stream_scorer.consume import MessageBatch
from stream_scorer.delivery.exactly_once import ExactlyOnceDelivery
from stream_scorer.delivery.publish import TransactionAbortedError, TransactionalPublisher
from stream_scorer.errors import FatalError, PublishError
from stream_scorer.records import BatchOutput, BatchResult, Header, Outgoing, SourceRecord

NOW_MS = 1_767_225_700_000


class FakeKafkaConsumer:
    """Records seeks."""

    def __init__(self) -> None:
        """No seek yet."""
        self.seeks: list[tuple[int, int]] = []

    def seek(self, tp: TopicPartition) -> None:
        """Record (partition, offset)."""
        self.seeks.append((tp.partition, tp.offset))


class FakeMember:
    """Holds partitions 0 and 1 of topic ``in``."""

    def __init__(self) -> None:
        """Assigned partitions 0 and 1."""
        self.consumer = FakeKafkaConsumer()
        self.assignment = {("in", 0), ("in", 1)}


class FakeProducer:
    """flush() delivers every queued report, failing them with ``error`` when set."""

    def __init__(self) -> None:
        """Nothing queued."""
        self.queued: list[tuple[str, Callable[[Any, Any], None]]] = []
        self.error: KafkaError | None = None

    def flush(self, timeout_s: float) -> int:
        """Deliver everything; nothing outstanding."""
        del timeout_s
        while self.queued:
            topic, callback = self.queued.pop(0)
            callback(self.error, _Message(topic))
        return 0


class _Message:
    def __init__(self, topic: str) -> None:
        self._topic = topic

    def topic(self) -> str:
        return self._topic


class FakeTransactionalPublisher:
    """Records the transaction calls; commit can be made to abort."""

    def __init__(self) -> None:
        """No transaction yet."""
        self.producer = FakeProducer()
        self.flush_timeout_s = 30.0
        self.calls: list[str] = []
        self.committed: list[list[tuple[int, int]]] = []
        self.abort_next_commit = False
        self.in_transaction = False

    def init(self, interrupted: Any = None) -> None:
        """Record the call."""
        self.calls.append("init")

    def begin(self) -> None:
        """Open a transaction."""
        self.calls.append("begin")
        self.in_transaction = True

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[Header],
        on_delivery: Callable[[Any, Any], None],
    ) -> None:
        """Queue the message's report."""
        del key, value, headers
        self.calls.append(f"produce {topic}")
        self.producer.queued.append((topic, on_delivery))

    def produce_all(
        self, messages: Sequence[Outgoing], on_delivery: Callable[[Any, Any], None]
    ) -> int:
        """Queue every message's report, in order, as Publisher.produce_all does."""
        for topic, key, value, headers in messages:
            self.produce(topic, key, value, headers, on_delivery)
        return len(messages)

    def remaining_s(self) -> float:
        """Plenty of time."""
        return 30.0

    def commit_transaction(self, offsets: list[TopicPartition], consumer: Any) -> None:
        """Commit, or abort like an abortable coordinator error."""
        del consumer
        if self.abort_next_commit:
            self.abort_next_commit = False
            self.calls.append("abort")
            self.in_transaction = False
            msg = "commit_transaction: transaction aborted: coordinator said so"
            raise TransactionAbortedError(msg)
        self.calls.append("commit")
        self.committed.append([(tp.partition, tp.offset) for tp in offsets])
        self.in_transaction = False

    def abort(self) -> None:
        """Abort an open transaction."""
        if self.in_transaction:
            self.calls.append("abort")
            self.in_transaction = False

    def poll(self, timeout_s: float = 0.0) -> None:
        """Nothing to serve."""

    def close(self) -> None:
        """Record the call."""
        self.calls.append("close")


def output(records: list[tuple[int, int]], messages: int) -> BatchOutput:
    """A batch of (partition, offset) records with ``messages`` alerts to publish."""
    batch = MessageBatch.from_records(
        [SourceRecord("in", p, o, None, b"v", (), NOW_MS - 100) for p, o in records]
    )
    return BatchOutput(
        batch, [("alerts", None, b"a", []) for _ in range(messages)], BatchResult(len(records))
    )


Make = Callable[[], tuple[ExactlyOnceDelivery, FakeMember, FakeTransactionalPublisher]]


@pytest.fixture
def done() -> list[BatchResult]:
    """Batches reported complete."""
    return []


@pytest.fixture
def aborts() -> list[int]:
    """One entry per aborted transaction."""
    return []


@pytest.fixture
def make(done: list[BatchResult], aborts: list[int]) -> Make:
    """``make()`` → a strategy on fakes, its member and its publisher."""

    def build() -> tuple[ExactlyOnceDelivery, FakeMember, FakeTransactionalPublisher]:
        member, publisher = FakeMember(), FakeTransactionalPublisher()
        delivery = ExactlyOnceDelivery(
            member,  # type: ignore[arg-type]  # the fake has what the strategy uses
            publisher,  # type: ignore[arg-type]
            done.append,
            on_abort=lambda: aborts.append(1),
            clock_ms=lambda: NOW_MS,
        )
        return delivery, member, publisher

    return build


def test_batch_is_one_transaction_with_its_offsets(make: Make, done: list[BatchResult]) -> None:
    """Messages, then the batch's next offsets per partition, then commit; reported once."""
    delivery, _, publisher = make()
    delivery.start()
    out = output([(0, 5), (1, 7), (0, 6)], messages=2)

    delivery.submit(out)

    assert publisher.calls == ["init", "begin", "produce alerts", "produce alerts", "commit"]
    assert publisher.committed == [[(0, 7), (1, 8)]]
    assert done == [out.result]
    assert out.result.latencies_s.tolist() == [0.1, 0.1, 0.1]
    assert {"publish", "commit"} <= set(out.result.stage_s)
    assert delivery.in_flight == 0


def test_aborted_transaction_rewinds_held_partitions(
    make: Make, done: list[BatchResult], aborts: list[int]
) -> None:
    """An aborted commit seeks each still-held partition back to the batch's first offset, so
    the batch is scored again; a partition revoked meanwhile is left to its new owner."""
    delivery, member, publisher = make()
    member.assignment = {("in", 0)}
    publisher.abort_next_commit = True

    delivery.submit(output([(0, 5), (1, 7), (0, 6)], messages=1))

    assert member.consumer.seeks == [(0, 5)]
    assert done == []
    assert aborts == [1]


def test_failed_delivery_stops_the_loop(make: Make, done: list[BatchResult]) -> None:
    """A delivery report with an error raises PublishError; nothing is committed."""
    delivery, _, publisher = make()
    publisher.producer.error = KafkaError(KafkaError._MSG_TIMED_OUT)

    with pytest.raises(PublishError, match="1 deliveries failed"):
        delivery.submit(output([(0, 1)], messages=1))

    assert publisher.committed == []
    assert done == []


def test_fatal_stop_aborts_the_open_transaction(make: Make) -> None:
    """Closing after a fatal error aborts the open transaction; a clean close releases."""
    delivery, _, publisher = make()
    publisher.begin()

    delivery.close(clean=False)

    assert publisher.calls[-1] == "abort"
    delivery.close(clean=True)
    assert publisher.calls[-1] == "close"


class SlicedProducer:
    """init_transactions times out ``timeouts`` times, then succeeds; counts polls."""

    def __init__(self, timeouts: int) -> None:
        """Script the timeouts."""
        self.timeouts = timeouts
        self.calls = 0
        self.polls = 0

    def init_transactions(self, timeout_s: float) -> None:
        """Time out (retriable) or succeed."""
        self.calls += 1
        assert timeout_s <= 1.0
        if self.calls <= self.timeouts:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, retriable=True))

    def poll(self, timeout_s: float) -> int:
        """Serve callbacks."""
        self.polls += 1
        return 0


def _publisher(producer: SlicedProducer) -> TransactionalPublisher:
    publisher = TransactionalPublisher(
        {"transactional.id": "t", "bootstrap.servers": "127.0.0.1:1"}
    )
    publisher._producer = producer  # type: ignore[assignment]
    return publisher


def test_init_transactions_is_resumed_in_slices() -> None:
    """A slice that times out is resumed, serving callbacks in between, until it succeeds."""
    producer = SlicedProducer(timeouts=3)

    _publisher(producer).init()

    assert (producer.calls, producer.polls) == (4, 3)


def test_init_transactions_stops_when_interrupted() -> None:
    """Once the error callback has asked to stop (refused credentials), init gives up at the
    next slice instead of waiting out the whole timeout."""
    producer = SlicedProducer(timeouts=1000)

    with pytest.raises(FatalError, match="stopped"):
        _publisher(producer).init(interrupted=lambda: producer.calls >= 2)

    assert producer.calls == 2
