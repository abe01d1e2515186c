"""Stage 8: move the consumer group past a batch, only after its results are acknowledged.

In: the batch's :class:`SourceRecord` values. Out: committed offsets, one per partition, each
the highest consumed offset + 1. The commit is synchronous: a failure raises
:class:`~stream_scorer.errors.CommitError` and the batch is replayed after a restart.
"""

from __future__ import annotations

from collections.abc import Sequence

from confluent_kafka import Consumer, KafkaException, TopicPartition

from stream_scorer.errors import CommitError
from stream_scorer.records import SourceRecord

__all__ = ["commit_offsets", "offsets_to_commit"]


def offsets_to_commit(records: Sequence[SourceRecord]) -> list[TopicPartition]:
    """Next offset to read per partition: highest offset in the batch + 1."""
    highest: dict[tuple[str, int], int] = {}
    for record in records:
        key = (record.topic, record.partition)
        if record.offset >= highest.get(key, -1):
            highest[key] = record.offset
    return [
        TopicPartition(topic, partition, offset + 1)
        for (topic, partition), offset in sorted(highest.items())
    ]


def commit_offsets(consumer: Consumer, offsets: Sequence[TopicPartition]) -> None:
    """Commit ``offsets`` synchronously.

    Raises:
        CommitError: The broker refused the commit or did not answer.
    """
    if not offsets:
        return
    try:
        result = consumer.commit(offsets=list(offsets), asynchronous=False)
    except KafkaException as exc:
        msg = f"commit of {len(offsets)} partition offsets failed: {exc}"
        raise CommitError(msg) from exc
    failed = [tp for tp in result or () if tp.error is not None]
    if failed:
        msg = f"commit failed for {[(tp.topic, tp.partition, str(tp.error)) for tp in failed]}"
        raise CommitError(msg)
