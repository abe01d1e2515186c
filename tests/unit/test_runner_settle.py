"""The pipelined at-least-once loop's bookkeeping between batches (Runner._settle): offsets are
committed only for acknowledged batches, in order, at most once per commit interval; the loop
waits for room when too many batches await acknowledgement, and stops when one is overdue.

Kafka is replaced by fakes here; tests/integration proves the same loop on the real broker.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import TopicPartition
from prometheus_client import CollectorRegistry

from stream_scorer.acks import BatchTicket
from stream_scorer.errors import PublishError
from stream_scorer.runner import Runner
from stream_scorer.settings import load_settings

REPO = Path(__file__).resolve().parents[2]


class FakeKafkaConsumer:
    """Records commits."""

    def __init__(self) -> None:
        """No commit yet."""
        self.commits: list[tuple[list[tuple[int, int]], bool]] = []

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        """Record (partition, offset) pairs and whether the call was asynchronous."""
        self.commits.append(([(tp.partition, tp.offset) for tp in offsets], asynchronous))


class FakeBatchConsumer:
    """Holds partitions 0 and 1 of topic ``in``."""

    def __init__(self) -> None:
        """Assigned partitions 0 and 1."""
        self.consumer = FakeKafkaConsumer()
        self.assignment = {("in", 0), ("in", 1)}


class FakePublisher:
    """Acknowledges one queued delivery per poll (the oldest first)."""

    def __init__(self) -> None:
        """Nothing queued."""
        self.queued: list[BatchTicket] = []
        self.polls = 0

    def poll(self, timeout_s: float = 0.0) -> None:
        """Deliver the oldest queued message."""
        del timeout_s
        self.polls += 1
        if self.queued:
            self.queued.pop(0).on_delivery(None, None)  # type: ignore[arg-type]


def runner_with(**delivery: Any) -> Runner:
    """A Runner with the shipped model; its Kafka side is never started."""
    settings = load_settings(
        None, {"model": {"path": str(REPO / "models/fraud/1")}, "delivery": delivery}, environ={}
    )
    return Runner(settings, registry=CollectorRegistry())


def batch(runner: Runner, publisher: FakePublisher, partition: int, offset: int, alerts: int):  # type: ignore[no-untyped-def]
    """A sealed batch whose ``alerts`` messages are queued at the publisher."""
    ticket = runner._tracker.open(
        [TopicPartition("in", partition, offset)], np.array([1], np.int64), 1
    )
    for _ in range(alerts):
        ticket.produced()
        publisher.queued.append(ticket)
    ticket.seal()
    return ticket


def test_commits_acknowledged_batches_only_in_order() -> None:
    """A batch acknowledged before an earlier one is committed only with it."""
    runner, consumer, publisher = (
        runner_with(commit_interval_ms=0),
        FakeBatchConsumer(),
        FakePublisher(),
    )
    first = batch(runner, publisher, 0, 100, alerts=2)
    batch(runner, publisher, 1, 50, alerts=0)  # nothing to acknowledge: done when sealed

    runner._settle(consumer, publisher)  # type: ignore[arg-type]
    assert consumer.consumer.commits == []  # the first batch still has one delivery pending
    assert first.pending == 1

    runner._settle(consumer, publisher)  # type: ignore[arg-type]
    assert consumer.consumer.commits == [([(0, 100), (1, 50)], True)]


def test_commits_at_most_once_per_interval() -> None:
    """With a long commit interval, later acknowledged batches wait for the next commit."""
    runner, consumer, publisher = (
        runner_with(commit_interval_ms=60_000),
        FakeBatchConsumer(),
        FakePublisher(),
    )
    runner._settle(consumer, publisher)  # type: ignore[arg-type]
    assert consumer.consumer.commits == []  # nothing acknowledged: the interval not started
    batch(runner, publisher, 0, 10, alerts=0)
    runner._settle(consumer, publisher)  # type: ignore[arg-type]
    batch(runner, publisher, 0, 20, alerts=0)
    runner._settle(consumer, publisher)  # type: ignore[arg-type]

    assert consumer.consumer.commits == [([(0, 10)], True)]
    assert runner._committer.pending(consumer.assignment) == [TopicPartition("in", 0, 20)]


def test_waits_for_room_in_flight() -> None:
    """With room for one batch in flight, settle serves acknowledgements until one is left."""
    runner, consumer, publisher = runner_with(), FakeBatchConsumer(), FakePublisher()
    for offset in (10, 20, 30):
        batch(runner, publisher, 0, offset, alerts=1)

    runner._settle(consumer, publisher, in_flight=1)  # type: ignore[arg-type]

    assert len(runner._tracker) == 1
    assert consumer.consumer.commits == [([(0, 20)], True)]


def test_overdue_batch_stops_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch not acknowledged within delivery.flush_timeout_s raises PublishError."""
    runner, consumer, publisher = (
        runner_with(flush_timeout_s=5),
        FakeBatchConsumer(),
        FakePublisher(),
    )
    ticket = batch(runner, publisher, 0, 10, alerts=1)
    publisher.queued.clear()  # its delivery report never comes
    ticket.sealed_at = time.monotonic() - 6

    with pytest.raises(PublishError, match="not acknowledged within"):
        runner._settle(consumer, publisher)  # type: ignore[arg-type]
    assert consumer.consumer.commits == []


def test_failed_delivery_stops_the_loop_without_committing() -> None:
    """A delivery that failed makes settle raise; nothing of its batch is committed."""
    runner, consumer, publisher = (
        runner_with(commit_interval_ms=0),
        FakeBatchConsumer(),
        FakePublisher(),
    )
    ticket = batch(runner, publisher, 0, 10, alerts=1)
    publisher.queued.clear()
    ticket.failures.append("alerts: broker said no")
    ticket.pending = 0

    with pytest.raises(PublishError, match="broker said no"):
        runner._settle(consumer, publisher)  # type: ignore[arg-type]
    assert consumer.consumer.commits == []


class DrainingPublisher(FakePublisher):
    """Acknowledges everything queued when drained, as Producer.flush does."""

    def drain(self, timeout_s: float) -> int:
        """Deliver every queued message; nothing left outstanding."""
        del timeout_s
        while self.queued:
            self.poll()
        return 0


def wired(runner: Runner) -> tuple[FakeBatchConsumer, DrainingPublisher]:
    """Give the runner a fake consumer and publisher, as run() does with real ones."""
    consumer, publisher = FakeBatchConsumer(), DrainingPublisher()
    runner._consumer, runner._publisher = consumer, publisher  # type: ignore[assignment]
    return consumer, publisher


def test_revocation_waits_for_batches_in_flight_and_commits_them() -> None:
    """On revocation every batch in flight is acknowledged first, then the offsets of all held
    partitions are committed synchronously, and the revoked ones are forgotten."""
    runner = runner_with(commit_interval_ms=60_000)
    consumer, publisher = wired(runner)
    batch(runner, publisher, 0, 10, alerts=2)
    batch(runner, publisher, 1, 20, alerts=1)

    runner._on_revoke([TopicPartition("in", 0)], lost=False)

    assert consumer.consumer.commits == [([(0, 10), (1, 20)], False)]
    assert len(runner._tracker) == 0
    assert runner._committer.pending({("in", 0), ("in", 1)}) == []
    runner._committer.acknowledge([TopicPartition("in", 1, 25)])
    assert runner._committer.pending({("in", 0), ("in", 1)}) == [TopicPartition("in", 1, 25)]


def test_lost_partitions_are_never_committed() -> None:
    """Partitions lost (the group moved on) are drained and forgotten without a commit."""
    runner = runner_with()
    consumer, publisher = wired(runner)
    batch(runner, publisher, 0, 10, alerts=1)

    runner._on_revoke([TopicPartition("in", 0)], lost=True)

    assert consumer.consumer.commits == []
    assert runner._committer.pending({("in", 0)}) == []


def test_revocation_after_a_fatal_error_commits_nothing() -> None:
    """consumer.close() after a fatal error revokes the partitions: nothing is committed."""
    runner = runner_with()
    consumer, publisher = wired(runner)
    batch(runner, publisher, 0, 10, alerts=1)
    runner._commit_on_revoke = False

    runner._on_revoke([TopicPartition("in", 0)], lost=False)

    assert consumer.consumer.commits == []
