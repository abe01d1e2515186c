"""At-least-once delivery on fakes (no broker, no model): offsets are committed only for
acknowledged batches, in order, at most once per commit interval; submit waits for room when
too many batches await acknowledgement; an overdue or failed batch stops the loop; revocation
and shutdown drain and commit; lost partitions and a fatal stop commit nothing more.

tests/integration proves the same strategy on the real broker.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
from confluent_kafka import KafkaError, TopicPartition

from stream_scorer.consume import MessageBatch
from stream_scorer.delivery.at_least_once import AtLeastOnceDelivery
from stream_scorer.errors import PublishError
from stream_scorer.records import BatchOutput, BatchResult, Header, Outgoing, SourceRecord

NOW_MS = 1_767_225_700_000


class FakeKafkaConsumer:
    """Records commits."""

    def __init__(self) -> None:
        """No commit yet."""
        self.commits: list[tuple[list[tuple[int, int]], bool]] = []

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> list[TopicPartition]:
        """Record (partition, offset) pairs and whether the call was asynchronous."""
        self.commits.append(([(tp.partition, tp.offset) for tp in offsets], asynchronous))
        return offsets


class FakeMember:
    """Holds partitions 0 and 1 of topic ``in``."""

    def __init__(self) -> None:
        """Assigned partitions 0 and 1."""
        self.consumer = FakeKafkaConsumer()
        self.assignment = {("in", 0), ("in", 1)}


class FakeMessage:
    """What a delivery report names."""

    def __init__(self, topic: str) -> None:
        """A message of ``topic``."""
        self._topic = topic

    def topic(self) -> str:
        """The message's topic."""
        return self._topic


class FakePublisher:
    """Keeps delivery callbacks; reports arrive when the test says (or on a waiting poll)."""

    def __init__(self, deliver_on_wait: bool = False, only_errors: bool = False) -> None:
        """Nothing queued; with ``deliver_on_wait`` a poll that may wait delivers the oldest;
        with ``only_errors`` a successful delivery calls nothing back, as the real producer
        with ``delivery.report.only.error``."""
        self.queued: list[tuple[str, Callable[[Any, Any], None]]] = []
        self.deliver_on_wait = deliver_on_wait
        self.only_errors = only_errors
        self.closed = False

    @property
    def queue_depth(self) -> int:
        """Messages whose report has not been served, as ``len(producer)``."""
        return len(self.queued)

    def start_batch(self) -> None:
        """Nothing to reset."""

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
        self.queued.append((topic, on_delivery))

    def produce_all(
        self, messages: Sequence[Outgoing], on_delivery: Callable[[Any, Any], None]
    ) -> int:
        """Queue every message's report, in order, as Publisher.produce_all does."""
        for topic, key, value, headers in messages:
            self.produce(topic, key, value, headers, on_delivery)
        return len(messages)

    def deliver(self, count: int, error: KafkaError | None = None) -> None:
        """Report the ``count`` oldest messages delivered (or failed with ``error``)."""
        for _ in range(count):
            topic, callback = self.queued.pop(0)
            if error is not None or not self.only_errors:
                callback(error, FakeMessage(topic))

    def poll(self, timeout_s: float = 0.0) -> None:
        """Deliver the oldest report only when allowed to wait."""
        if timeout_s > 0 and self.deliver_on_wait and self.queued:
            self.deliver(1)

    def drain(self, timeout_s: float) -> int:
        """Deliver everything, as Producer.flush does; nothing left outstanding."""
        del timeout_s
        self.deliver(len(self.queued))
        return 0

    def close(self) -> None:
        """Remember the producer was released."""
        self.closed = True


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        """Start at 1000 s."""
        self.now = 1000.0

    def __call__(self) -> float:
        """The current time."""
        return self.now


def output(partition: int, last_offset: int, messages: int) -> BatchOutput:
    """A one-record batch at ``last_offset`` with ``messages`` alerts to publish."""
    record = SourceRecord("in", partition, last_offset, None, b"v", (), NOW_MS - 250)
    return BatchOutput(
        MessageBatch.from_records([record]),
        [("alerts", None, b"a", []) for _ in range(messages)],
        BatchResult(consumed=1),
    )


Make = Callable[..., tuple[AtLeastOnceDelivery, FakeMember, FakePublisher]]


@pytest.fixture
def make() -> Make:
    """``make(**options)`` → a strategy on fakes, its member and its publisher."""

    def build(
        commit_interval_s: float = 0.0,
        max_in_flight: int = 64,
        flush_timeout_s: float = 30.0,
        deliver_on_wait: bool = False,
        clock: Clock | None = None,
        on_complete: Callable[[BatchResult], None] | None = None,
        only_errors: bool = False,
    ) -> tuple[AtLeastOnceDelivery, FakeMember, FakePublisher]:
        member, publisher = FakeMember(), FakePublisher(deliver_on_wait, only_errors)
        delivery = AtLeastOnceDelivery(
            member,  # type: ignore[arg-type]  # the fake has what the strategy uses
            publisher,  # type: ignore[arg-type]
            flush_timeout_s,
            commit_interval_s,
            max_in_flight,
            on_complete,
            clock_ms=lambda: NOW_MS,
            monotonic=clock or Clock(),
        )
        return delivery, member, publisher

    return build


def test_commits_acknowledged_batches_only_in_order(make: Make) -> None:
    """A batch acknowledged before an earlier one is committed only with it."""
    delivery, member, publisher = make()
    delivery.submit(output(0, 99, messages=2))
    delivery.submit(output(1, 49, messages=0))  # nothing to acknowledge: done when sealed

    publisher.deliver(1)
    delivery.between_batches()
    assert member.consumer.commits == []  # the first batch still has one delivery pending

    publisher.deliver(1)
    delivery.between_batches()
    assert member.consumer.commits == [([(0, 100), (1, 50)], True)]
    assert delivery.in_flight == 0


def test_error_only_reports_acknowledge_batches_once_the_queue_is_empty(make: Make) -> None:
    """With reports for failures only, sealed batches are acknowledged once the producer's
    queue is seen empty, and not while any message is still outstanding."""
    delivery, member, publisher = make(only_errors=True)
    delivery.submit(output(0, 99, messages=2))
    delivery.submit(output(1, 49, messages=1))

    publisher.deliver(2)  # the first batch's messages: delivered, nothing called back
    delivery.between_batches()
    assert member.consumer.commits == []  # one message outstanding: nothing proven yet
    assert delivery.in_flight == 2

    publisher.deliver(1)
    delivery.between_batches()
    assert member.consumer.commits == [([(0, 100), (1, 50)], True)]
    assert delivery.in_flight == 0


def test_error_only_reports_still_fail_their_batch(make: Make) -> None:
    """A failure reported under error-only reports poisons its batch even once the queue is
    empty: the next call raises and nothing is committed."""
    delivery, member, publisher = make(only_errors=True)
    delivery.submit(output(0, 9, messages=2))
    publisher.deliver(1, KafkaError(KafkaError._MSG_TIMED_OUT))
    publisher.deliver(1)

    with pytest.raises(PublishError, match="1 deliveries failed"):
        delivery.between_batches()
    assert member.consumer.commits == []


def test_error_only_reports_submit_waits_until_the_queue_drains(make: Make) -> None:
    """With no report per success, waiting for room in flight ends when the queue is empty."""
    delivery, member, _ = make(max_in_flight=2, deliver_on_wait=True, only_errors=True)
    for last in (9, 19, 29):
        delivery.submit(output(0, last, messages=2))

    # The third submit found the first two proven delivered (the second's wait drained the
    # queue) and returned with only itself in flight.
    assert delivery.in_flight == 1
    assert member.consumer.commits[-1] == ([(0, 20)], True)


def test_commits_at_most_once_per_interval(make: Make) -> None:
    """With a long commit interval, later acknowledged batches wait for the next commit."""
    clock = Clock()
    delivery, member, _ = make(commit_interval_s=60.0, clock=clock)
    delivery.between_batches()
    assert member.consumer.commits == []  # nothing acknowledged: the interval not started
    delivery.submit(output(0, 9, messages=0))
    delivery.submit(output(0, 19, messages=0))
    delivery.between_batches()

    assert member.consumer.commits == [([(0, 10)], True)]
    assert delivery.committer.pending(member.assignment) == [TopicPartition("in", 0, 20)]
    clock.now += 60.0
    delivery.between_batches()
    assert member.consumer.commits[-1] == ([(0, 20)], True)


def test_submit_waits_for_room_in_flight(make: Make) -> None:
    """With room for two batches, submit serves acknowledgements until one is left in flight."""
    delivery, member, _ = make(max_in_flight=2, deliver_on_wait=True)
    for last in (9, 19, 29):
        delivery.submit(output(0, last, messages=1))

    assert delivery.in_flight == 1
    assert member.consumer.commits[-1] == ([(0, 20)], True)


def test_backpressure_and_publish_are_timed_apart(make: Make) -> None:
    """submit reports the produce time and the wait for room as separate stages."""
    delivery, _, _ = make()
    out = output(0, 9, messages=3)

    delivery.submit(out)

    assert set(out.result.stage_s) == {"publish", "backpressure"}


def test_overdue_batch_stops_the_loop(make: Make) -> None:
    """A batch not acknowledged within flush_timeout_s of being produced raises PublishError."""
    clock = Clock()
    delivery, member, _ = make(flush_timeout_s=5.0, clock=clock)
    delivery.submit(output(0, 9, messages=1))  # its delivery report never comes
    clock.now += 6.0

    with pytest.raises(PublishError, match="not acknowledged within"):
        delivery.between_batches()
    assert member.consumer.commits == []


def test_failed_delivery_stops_the_loop_without_committing(make: Make) -> None:
    """A delivery that failed makes the next call raise; nothing of its batch is committed."""
    delivery, member, publisher = make()
    delivery.submit(output(0, 9, messages=1))
    publisher.deliver(1, KafkaError(KafkaError._MSG_TIMED_OUT))

    with pytest.raises(PublishError, match="alerts"):
        delivery.between_batches()
    assert member.consumer.commits == []


def test_completed_batches_are_reported_in_order_with_latency(make: Make) -> None:
    """on_complete hears each batch once it is acknowledged, in order, latencies set."""
    done: list[BatchResult] = []
    delivery, _, publisher = make(on_complete=done.append)
    first, second = output(0, 9, messages=1), output(1, 5, messages=0)
    delivery.submit(first)
    delivery.submit(second)
    assert done == []

    publisher.deliver(1)
    delivery.between_batches()

    assert done == [first.result, second.result]
    assert first.result.latencies_s.tolist() == [0.25]


def test_revocation_waits_for_batches_in_flight_and_commits_them(make: Make) -> None:
    """On revocation every batch in flight is acknowledged first, then the offsets of all held
    partitions are committed synchronously, and the revoked ones are forgotten."""
    delivery, member, _ = make(commit_interval_s=60.0)
    delivery.submit(output(0, 9, messages=2))
    delivery.submit(output(1, 19, messages=1))

    delivery.on_revoke([TopicPartition("in", 0)], lost=False)

    assert member.consumer.commits == [([(0, 10), (1, 20)], False)]
    assert delivery.in_flight == 0
    committer = delivery.committer
    assert committer.pending({("in", 0), ("in", 1)}) == []
    committer.acknowledge([TopicPartition("in", 1, 25)])
    assert committer.pending({("in", 0), ("in", 1)}) == [TopicPartition("in", 1, 25)]


def test_lost_partitions_are_never_committed(make: Make) -> None:
    """Partitions lost (the group moved on) are drained and forgotten without a commit."""
    delivery, member, _ = make()
    delivery.submit(output(0, 9, messages=1))

    delivery.on_revoke([TopicPartition("in", 0)], lost=True)

    assert member.consumer.commits == []
    assert delivery.committer.pending({("in", 0)}) == []


def test_revocation_after_a_fatal_error_commits_nothing(make: Make) -> None:
    """Closing after a fatal error commits only what was acknowledged before it; the
    revocation that closing the consumer triggers commits nothing more."""
    delivery, member, publisher = make()
    delivery.submit(output(0, 9, messages=1))

    delivery.close(clean=False)
    publisher.deliver(1)  # acknowledged only after the failure
    delivery.on_revoke([TopicPartition("in", 0)], lost=False)

    assert member.consumer.commits == []
    assert not publisher.closed


def test_clean_close_drains_commits_and_releases(make: Make) -> None:
    """A clean stop waits for every acknowledgement, commits synchronously, closes the producer."""
    delivery, member, publisher = make(commit_interval_s=60.0)
    delivery.submit(output(0, 9, messages=2))
    delivery.submit(output(1, 3, messages=1))

    delivery.close(clean=True)

    assert member.consumer.commits == [([(0, 10), (1, 4)], False)]
    assert publisher.closed
