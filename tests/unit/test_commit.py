"""Stage 8, commit: one offset per partition, the highest + 1, committed synchronously."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from stream_scorer.consume import MessageBatch
from stream_scorer.delivery.commit import (
    OffsetCommitter,
    RebalanceCommitError,
    commit_offsets,
    partition_spans,
    spans_to_offsets,
)
from stream_scorer.errors import CommitError, FatalError
from stream_scorer.records import SourceRecord

MakeRecord = Callable[..., SourceRecord]


@dataclass
class Answer:
    """A partition in a commit result, with an optional error."""

    topic: str
    partition: int
    error: Any = None


class FakeConsumer:
    """Records commit calls; answers with a scripted result or raises."""

    def __init__(self, result: list[Answer] | None = None, exc: Exception | None = None) -> None:
        """Script the answer."""
        self.result = result
        self.exc = exc
        self.calls: list[tuple[list[TopicPartition], bool]] = []

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> list[Answer] | None:
        """Record the call; raise or answer as scripted."""
        self.calls.append((offsets, asynchronous))
        if self.exc is not None:
            raise self.exc
        return self.result


@dataclass
class Reported:
    """A partition in librdkafka's commit callback (TopicPartition.error is read-only)."""

    topic: str
    partition: int
    offset: int
    error: Any = None


def _triples(offsets: list[TopicPartition]) -> list[tuple[str, int, int]]:
    return [(tp.topic, tp.partition, tp.offset) for tp in offsets]


def test_highest_offset_plus_one_per_partition_regardless_of_order(
    make_record: MakeRecord,
) -> None:
    """Shuffled records of several partitions and topics commit max + 1 for each partition."""
    coordinates = [("a", 0, o) for o in (5, 6, 7, 9)] + [("a", 1, o) for o in (100, 101)]
    coordinates += [("b", 0, 3)]
    random.Random(4).shuffle(coordinates)
    records = [make_record(b"", offset=o, partition=p, topic=t) for t, p, o in coordinates]

    offsets = spans_to_offsets(partition_spans(MessageBatch.from_records(records)))
    assert _triples(offsets) == [("a", 0, 10), ("a", 1, 102), ("b", 0, 4)]


def test_offset_zero_commits_one(make_record: MakeRecord) -> None:
    """A batch holding only offset 0 commits offset 1."""
    offsets = spans_to_offsets(
        partition_spans(MessageBatch.from_records([make_record(b"", offset=0)]))
    )
    assert _triples(offsets) == [("transactions", 0, 1)]


def test_empty_batch_commits_nothing() -> None:
    """No records, no offsets."""
    assert spans_to_offsets(partition_spans(MessageBatch.from_records([]))) == []


def test_commit_is_synchronous_with_the_given_offsets() -> None:
    """commit_offsets commits exactly the offsets, synchronously."""
    consumer = FakeConsumer(result=[Answer("a", 0)])
    offsets = [TopicPartition("a", 0, 10)]

    commit_offsets(consumer, offsets)  # type: ignore[arg-type]

    assert len(consumer.calls) == 1
    sent, asynchronous = consumer.calls[0]
    assert _triples(sent) == [("a", 0, 10)]
    assert asynchronous is False


def test_nothing_to_commit_makes_no_call() -> None:
    """An empty offset list does not call the broker."""
    consumer = FakeConsumer()

    commit_offsets(consumer, [])  # type: ignore[arg-type]

    assert consumer.calls == []


def test_kafka_exception_becomes_commit_error() -> None:
    """A refused commit raises CommitError, a FatalError."""
    consumer = FakeConsumer(exc=KafkaException(KafkaError(KafkaError._NO_OFFSET)))

    with pytest.raises(CommitError, match="commit of 1 partition offsets failed") as caught:
        commit_offsets(consumer, [TopicPartition("a", 0, 1)])  # type: ignore[arg-type]
    assert isinstance(caught.value, FatalError)


def test_partition_error_in_result_becomes_commit_error() -> None:
    """A result naming a failed partition raises CommitError naming it."""
    consumer = FakeConsumer(result=[Answer("a", 0), Answer("a", 1, error="NOT_COORDINATOR")])

    with pytest.raises(CommitError, match=r"\('a', 1, 'NOT_COORDINATOR'\)"):
        commit_offsets(consumer, [TopicPartition("a", 0, 1), TopicPartition("a", 1, 1)])  # type: ignore[arg-type]


class ScriptedConsumer(FakeConsumer):
    """Answers each commit with the next scripted partition error code (None: success)."""

    def __init__(self, codes: list[int | None]) -> None:
        """Script one answer per call."""
        super().__init__()
        self.codes = codes

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> list[Answer] | None:
        """Record the call and answer with the next code."""
        self.calls.append((offsets, asynchronous))
        code = self.codes.pop(0)
        error = None if code is None else KafkaError(code)
        return [Answer(tp.topic, tp.partition, error) for tp in offsets]


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retry at once instead of after the coordinator back-off."""
    monkeypatch.setattr("stream_scorer.delivery.commit.COMMIT_RETRY_BACKOFF_S", 0.0)


@pytest.mark.usefixtures("no_backoff")
def test_transient_commit_failure_is_retried_until_it_succeeds() -> None:
    """A coordinator moving or loading is retried; the commit then succeeds."""
    consumer = ScriptedConsumer(
        [KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.NOT_COORDINATOR, None]
    )
    commit_offsets(consumer, [TopicPartition("t", 0, 5)])  # type: ignore[arg-type]
    assert len(consumer.calls) == 3


@pytest.mark.usefixtures("no_backoff")
def test_transient_commit_failure_gives_up_at_the_timeout() -> None:
    """A coordinator that never comes back fails the commit once the timeout has passed."""
    consumer = ScriptedConsumer([KafkaError.COORDINATOR_NOT_AVAILABLE] * 1000)
    with pytest.raises(CommitError, match=r"COORDINATOR_NOT_AVAILABLE|Coordinator"):
        commit_offsets(consumer, [TopicPartition("t", 0, 5)], timeout_s=0.0)  # type: ignore[arg-type]
    assert len(consumer.calls) == 1


def test_commit_refused_by_a_rebalance_is_its_own_error() -> None:
    """A rebalance refusing the commit raises RebalanceCommitError, at once, not retried."""
    consumer = ScriptedConsumer([KafkaError.REBALANCE_IN_PROGRESS])
    with pytest.raises(RebalanceCommitError):
        commit_offsets(consumer, [TopicPartition("t", 0, 5)])  # type: ignore[arg-type]
    assert len(consumer.calls) == 1


def test_committer_sends_acknowledged_offsets_of_held_partitions_once() -> None:
    """Async commits carry the highest acknowledged offset per held partition, each once."""
    committer, consumer = OffsetCommitter(), FakeConsumer()
    held = {("t", 0), ("t", 1)}
    committer.acknowledge([TopicPartition("t", 0, 10), TopicPartition("t", 2, 7)])
    committer.acknowledge([TopicPartition("t", 0, 8), TopicPartition("t", 1, 3)])  # 8 < 10

    assert committer.commit_async(consumer, held) == 2  # type: ignore[arg-type]
    assert _triples(consumer.calls[0][0]) == [("t", 0, 10), ("t", 1, 3)]
    assert consumer.calls[0][1] is True
    assert committer.commit_async(consumer, held) == 0  # type: ignore[arg-type]
    committer.acknowledge([TopicPartition("t", 1, 4)])
    committer.commit_async(consumer, held)  # type: ignore[arg-type]
    assert _triples(consumer.calls[1][0]) == [("t", 1, 4)]


def test_committer_resends_after_a_retriable_async_failure() -> None:
    """A rebalance or a timeout failing an async commit makes the next one send it again."""
    committer, consumer = OffsetCommitter(), FakeConsumer()
    committer.acknowledge([TopicPartition("t", 0, 10)])
    committer.commit_async(consumer, {("t", 0)})  # type: ignore[arg-type]
    failed = Reported("t", 0, 10, KafkaError(KafkaError.REBALANCE_IN_PROGRESS))
    committer.on_commit(None, [failed])  # type: ignore[list-item]

    assert committer.commit_async(consumer, {("t", 0)}) == 1  # type: ignore[arg-type]
    assert committer.retried == 1


def test_committer_stops_the_loop_after_a_fatal_async_failure() -> None:
    """An authorisation failure of an async commit raises at the next commit."""
    committer, consumer = OffsetCommitter(), FakeConsumer()
    committer.acknowledge([TopicPartition("t", 0, 10)])
    committer.commit_async(consumer, {("t", 0)})  # type: ignore[arg-type]
    committer.on_commit(KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED), [])

    with pytest.raises(CommitError, match="asynchronous commit failed"):
        committer.commit_async(consumer, {("t", 0)})  # type: ignore[arg-type]


def test_committer_forgets_partitions_it_no_longer_holds() -> None:
    """A revoked or lost partition is never committed again by this member."""
    committer, consumer = OffsetCommitter(), FakeConsumer()
    committer.acknowledge([TopicPartition("t", 0, 10), TopicPartition("t", 1, 4)])
    committer.forget([("t", 0)])

    committed = committer.commit_sync(consumer, {("t", 0), ("t", 1)})  # type: ignore[arg-type]
    assert _triples(committed) == [("t", 1, 4)]
    assert consumer.calls[0][1] is False


def test_committer_sync_commit_refused_by_a_rebalance_is_not_fatal() -> None:
    """On revocation a commit the group refuses is logged: the next owner replays."""
    committer = OffsetCommitter()
    consumer = ScriptedConsumer([KafkaError.ILLEGAL_GENERATION])
    committer.acknowledge([TopicPartition("t", 0, 10)])

    assert committer.commit_sync(consumer, {("t", 0)}) == []  # type: ignore[arg-type]


def test_partition_spans_are_first_and_last_offset_per_partition(make_record: MakeRecord) -> None:
    """One topic (the numpy path) and several topics (the loop) give the same spans."""
    coordinates = [("a", 1, o) for o in (7, 3, 9)] + [("a", 0, o) for o in (100, 42)]
    records = [make_record(b"", offset=o, partition=p, topic=t) for t, p, o in coordinates]
    assert partition_spans(MessageBatch.from_records(records)) == {
        ("a", 0): (42, 100),
        ("a", 1): (3, 9),
    }

    mixed = [*records, make_record(b"", offset=5, partition=0, topic="b")]
    assert partition_spans(MessageBatch.from_records(mixed)) == {
        ("a", 0): (42, 100),
        ("a", 1): (3, 9),
        ("b", 0): (5, 5),
    }
    assert partition_spans(MessageBatch.from_records([])) == {}


def test_partition_spans_of_a_consumed_batch_equal_those_of_its_records() -> None:
    """A MessageBatch (read by column) gives the spans its records give."""
    coordinates = [("a", 1, 7), ("a", 1, 3), ("a", 0, 100), ("a", 1, 9), ("a", 0, 42)]
    for extra in ([], [("b", 0, 5)]):
        batch = MessageBatch(
            [Message(topic=t, partition=p, offset=o, value=b"") for t, p, o in coordinates + extra]
        )
        assert partition_spans(batch) == partition_spans(MessageBatch.from_records(list(batch)))
        assert partition_spans(batch)[("a", 0)] == (42, 100)
    assert partition_spans(MessageBatch([])) == {}


def test_committer_reports_every_outcome() -> None:
    """on_outcome hears ok, retried, refused and failed commits; synchronous ones are timed."""
    outcomes: list[tuple[str, bool]] = []
    committer = OffsetCommitter(lambda result, s: outcomes.append((result, s is not None)))
    committer.acknowledge([TopicPartition("t", 0, 10)])
    ok = Reported("t", 0, 10)
    retried = Reported("t", 0, 10, KafkaError(KafkaError.REBALANCE_IN_PROGRESS))

    committer.on_commit(None, [ok])  # type: ignore[list-item]
    committer.on_commit(None, [retried])  # type: ignore[list-item]
    committer.commit_sync(FakeConsumer(), {("t", 0)})  # type: ignore[arg-type]
    committer.commit_sync(ScriptedConsumer([KafkaError.ILLEGAL_GENERATION]), {("t", 0)})  # type: ignore[arg-type]
    committer.on_commit(KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED), [])

    assert outcomes == [
        ("ok", False), ("retried", False), ("ok", True), ("refused", True), ("failed", False),
    ]  # fmt: skip
