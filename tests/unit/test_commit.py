"""Stage 8, commit: one offset per partition, the highest + 1, committed synchronously."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from stream_scorer.commit import commit_offsets, offsets_to_commit
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

    assert _triples(offsets_to_commit(records)) == [("a", 0, 10), ("a", 1, 102), ("b", 0, 4)]


def test_offset_zero_commits_one(make_record: MakeRecord) -> None:
    """A batch holding only offset 0 commits offset 1."""
    assert _triples(offsets_to_commit([make_record(b"", offset=0)])) == [("transactions", 0, 1)]


def test_empty_batch_commits_nothing() -> None:
    """No records, no offsets."""
    assert offsets_to_commit([]) == []


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
