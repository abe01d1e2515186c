"""Stage 1: Kafka → one micro-batch (:class:`MessageBatch`) per call.

A batch is what has arrived when the loop asks, up to ``batch.max_size`` messages: under load
that is a full batch, and a light stream is scored in small batches at once rather than held
back to fill a big one (the loop's own processing time sets the batch size). When nothing has
arrived the call waits up to ``batch.max_wait_ms`` for the first message; ``batch.linger_ms``
(0 by default) waits that much longer for a batch to fill, trading latency for larger batches.

Offsets are never committed here: ``enable.auto.commit`` and ``enable.auto.offset.store`` are
forced off, so only the delivery strategy (:mod:`stream_scorer.delivery`, after every result is
acknowledged) moves the group forward. Consumer errors that librdkafka reports on a
message are logged and counted when transient, and raise
:class:`~stream_scorer.errors.FatalError` when fatal. Consumer lag per partition is read from
librdkafka's statistics (``statistics.interval.ms``) and handed to a callback.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from operator import itemgetter
from typing import Any, overload

import numpy as np
import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from numpy.typing import NDArray

from stream_scorer.errors import FatalError
from stream_scorer.records import SourceRecord

__all__ = [
    "CONSUMER_DEFAULTS",
    "CONSUMER_OVERRIDES",
    "AssignCallback",
    "BatchConsumer",
    "LagCallback",
    "MessageBatch",
    "RevokeCallback",
    "consumer_config",
    "max_poll_interval_s",
]

log = structlog.get_logger(__name__)

LagCallback = Callable[[str, int, int], None]
#: Told of partitions leaving this member: ``(partitions, lost)``.
RevokeCallback = Callable[[list[TopicPartition], bool], None]
#: Told of partitions newly assigned to this member.
AssignCallback = Callable[[list[TopicPartition]], None]

#: Defaults a user may override in ``[kafka.consumer]``.
CONSUMER_DEFAULTS: dict[str, Any] = {
    # Score what is there when a group starts for the first time, rather than only new events.
    "auto.offset.reset": "earliest",
    # Rebalances move only the partitions that change owner; the others keep scoring.
    "partition.assignment.strategy": "cooperative-sticky",
    # The broker holds an empty fetch at most this long: 500 ms (the default) set p50 latency
    # to ~300 ms at moderate rates in FIELD-NOTES; 10 ms brought it to ~20 ms.
    "fetch.wait.max.ms": 10,
    # Prefetch bound per partition queue; the default 64 MiB lets memory run far ahead of a
    # slow scorer for no throughput gain.
    "queued.max.messages.kbytes": 16384,
    # Lag and throughput statistics for the consumer_lag gauge.
    "statistics.interval.ms": 5000,
}
#: Forced: offsets move only after results are acknowledged (at-least-once / exactly-once).
CONSUMER_OVERRIDES: dict[str, Any] = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
}


def consumer_config(
    client: Mapping[str, Any],
    group_id: str,
    extra: Mapping[str, Any],
    group_instance_id: str | None = None,
    isolation_level: str | None = None,
) -> dict[str, Any]:
    """Merge defaults → client/security settings → user extras → forced overrides."""
    config: dict[str, Any] = {**CONSUMER_DEFAULTS, **client, "group.id": group_id}
    if group_instance_id is not None:
        config["group.instance.id"] = group_instance_id
    if isolation_level is not None:
        config["isolation.level"] = isolation_level
    config.update(extra)
    config.update(CONSUMER_OVERRIDES)
    return config


def max_poll_interval_s(config: Mapping[str, Any]) -> float:
    """``max.poll.interval.ms`` of a consumer config in seconds (librdkafka's default 300 s)."""
    return float(config.get("max.poll.interval.ms", 300_000)) / 1000.0


class MessageBatch(Sequence[SourceRecord]):
    """One consumed micro-batch: the consumer's messages, read a field at a time.

    The only batch type (:class:`~stream_scorer.records.Batch`). The stages read a batch by
    column (every value to decode, every partition and offset to commit, every timestamp to
    time), so those are taken from the messages in C, one ``map`` per field; a
    :class:`SourceRecord` is built only for the rows that are asked for one (flagged events and
    dead letters). Building a record per message and transposing the records back into columns
    cost about 1 µs per event, a tenth of the whole loop.

    Every message must be a data message (no error), as :class:`BatchConsumer` hands them on.
    :meth:`from_records` builds the same batch from :class:`SourceRecord` values, for tests and
    offline use.
    """

    __slots__ = ("_offsets", "_partitions", "_record", "_rows", "_timestamps", "_topics", "values")

    def __init__(self, messages: list[Message]) -> None:
        """Wrap data messages; their values are taken at once (decode reads them all)."""
        self._rows: list[Any] = messages
        self._record: Callable[[Any], SourceRecord] = _record
        #: Every message's value, in batch order.
        self.values: list[bytes | None] = list(map(Message.value, messages))
        self._topics: list[str] | None = None
        self._partitions: NDArray[np.int64] | None = None
        self._offsets: NDArray[np.int64] | None = None
        self._timestamps: NDArray[np.int64] | None = None

    @classmethod
    def from_records(cls, records: Sequence[SourceRecord]) -> MessageBatch:
        """A batch of already built records (tests, offline scoring, replays)."""
        batch = cls.__new__(cls)
        rows = list(records)
        batch._rows = rows
        batch._record = _same_record
        columns = tuple(zip(*rows, strict=True)) if rows else ((),) * 7
        batch.values = list(columns[4])
        batch._topics = list(columns[0])
        n = len(rows)
        batch._partitions = np.fromiter(columns[1], np.int64, n)
        batch._offsets = np.fromiter(columns[2], np.int64, n)
        batch._timestamps = np.maximum(np.fromiter(columns[6], np.int64, n), 0)
        return batch

    def __len__(self) -> int:
        """Messages in the batch."""
        return len(self._rows)

    @overload
    def __getitem__(self, index: int) -> SourceRecord: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[SourceRecord]: ...
    def __getitem__(self, index: int | slice) -> SourceRecord | Sequence[SourceRecord]:
        """The record of one message (built on demand), or a list of them for a slice."""
        if isinstance(index, slice):
            return [self._record(m) for m in self._rows[index]]
        return self._record(self._rows[index])

    @property
    def topics(self) -> list[str]:
        """Each message's topic."""
        if self._topics is None:
            self._topics = list(map(Message.topic, self._rows))  # type: ignore[arg-type]
        return self._topics

    @property
    def partitions(self) -> NDArray[np.int64]:
        """Each message's partition."""
        if self._partitions is None:
            self._partitions = self._ints(map(Message.partition, self._rows))
        return self._partitions

    @property
    def offsets(self) -> NDArray[np.int64]:
        """Each message's offset."""
        if self._offsets is None:
            self._offsets = self._ints(map(Message.offset, self._rows))
        return self._offsets

    @property
    def keys(self) -> list[bytes | None]:
        """Each message's key, read in C (score records key every event like its alert)."""
        if self._record is _same_record:
            return [record.key for record in self._rows]
        return list(map(Message.key, self._rows))

    @property
    def timestamps_ms(self) -> NDArray[np.int64]:
        """Each message's timestamp in epoch ms; 0 where the broker gave none."""
        if self._timestamps is None:
            stamps = self._ints(map(itemgetter(1), map(Message.timestamp, self._rows)))
            self._timestamps = np.maximum(stamps, 0)
        return self._timestamps

    def _ints(self, values: Iterable[Any]) -> NDArray[np.int64]:
        """One int64 per message, from an iterator over them (a C-level ``map``)."""
        return np.fromiter(values, np.int64, len(self._rows))


def _same_record(record: SourceRecord) -> SourceRecord:
    return record


def _record(message: Message) -> SourceRecord:
    headers = message.headers()
    timestamp_ms = message.timestamp()[1]
    return SourceRecord(
        message.topic(),  # type: ignore[arg-type]  # set on every data message
        message.partition(),  # type: ignore[arg-type]  # likewise
        message.offset(),  # type: ignore[arg-type]  # likewise
        message.key(),
        message.value(),
        tuple(headers) if headers else (),  # type: ignore[arg-type]  # (str, bytes)
        timestamp_ms if timestamp_ms > 0 else 0,
    )


class BatchConsumer:
    """A group consumer of the input topic that hands out micro-batches."""

    def __init__(
        self,
        config: Mapping[str, Any],
        topic: str,
        max_batch_size: int,
        max_wait_s: float,
        linger_s: float = 0.0,
        on_lag: LagCallback | None = None,
    ) -> None:
        """Create the consumer; :meth:`subscribe` joins the group.

        Args:
            config: Complete librdkafka consumer config (see :func:`consumer_config`).
            topic: Input topic.
            max_batch_size: Most messages per batch.
            max_wait_s: Longest wait for the first message of a batch.
            linger_s: Longest further wait for a batch to fill once it has a message.
            on_lag: Called with (topic, partition, lag) from librdkafka statistics.
        """
        self.topic = topic
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_s
        self._linger_s = linger_s
        self._on_lag = on_lag
        self._on_revoke: RevokeCallback | None = None
        self._on_assign: AssignCallback | None = None
        self.assignment: set[tuple[str, int]] = set()
        conf = dict(config)
        # The caller's error callback (readiness) still hears every error, after our logging.
        self._error_cb: Callable[[KafkaError], None] | None = conf.pop("error_cb", None)
        conf["error_cb"] = self._on_error
        if on_lag is not None:
            conf["stats_cb"] = self._on_stats
        self._consumer = Consumer(conf)

    def subscribe(
        self, on_assign: AssignCallback | None = None, on_revoke: RevokeCallback | None = None
    ) -> None:
        """Subscribe to the input topic (joins the group at the next :meth:`poll_batch`).

        Args:
            on_assign: Called with newly assigned partitions.
            on_revoke: Called with the partitions being revoked (``lost=False``: this member
                may still commit for them) or lost (``True``: it may not), before they go.
        """
        self._on_assign, self._on_revoke = on_assign, on_revoke
        self._consumer.subscribe(
            [self.topic], on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._lost
        )

    @property
    def consumer(self) -> Consumer:
        """The underlying confluent-kafka consumer (for commits and group metadata)."""
        return self._consumer

    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        del consumer
        self.assignment |= {(p.topic, p.partition) for p in partitions}
        if self._on_assign is not None:
            self._on_assign(partitions)
        log.info(
            "partitions_assigned", partitions=[f"{p.topic}[{p.partition}]" for p in partitions]
        )

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        del consumer
        self._take_away(partitions, lost=False)

    def _lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        del consumer
        self._take_away(partitions, lost=True)

    def _take_away(self, partitions: list[TopicPartition], lost: bool) -> None:
        # The callback runs while the partitions are still in self.assignment: a revoked
        # partition's acknowledged offsets can still be committed by this member.
        if self._on_revoke is not None:
            self._on_revoke(partitions, lost)
        self.assignment -= {(p.topic, p.partition) for p in partitions}
        log.info(
            "partitions_lost" if lost else "partitions_revoked",
            partitions=[f"{p.topic}[{p.partition}]" for p in partitions],
        )

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            log.error("kafka_fatal_error", error=str(error))
        else:
            # Transient: librdkafka retries by itself (broker down, connection refused).
            log.warning("kafka_error", error=str(error), code=error.name())
        if self._error_cb is not None:
            self._error_cb(error)

    def _on_stats(self, stats_json: str) -> None:
        if self._on_lag is None:
            return
        stats = json.loads(stats_json)
        for topic, topic_stats in stats.get("topics", {}).items():
            for partition, part in topic_stats.get("partitions", {}).items():
                lag = part.get("consumer_lag", -1)
                if int(partition) >= 0 and lag >= 0 and (topic, int(partition)) in self.assignment:
                    self._on_lag(topic, int(partition), lag)

    def poll_batch(self) -> MessageBatch:
        """Consume one micro-batch; empty when nothing arrived within the wait.

        Raises:
            FatalError: librdkafka reported a fatal consumer error.
        """
        consume, size = self._consumer.consume, self._max_batch_size
        try:
            # What has already arrived, without waiting: under load that is a full batch, and
            # a lighter stream gets small batches at once instead of waiting to fill one.
            messages: list[Message] = consume(size, timeout=0)
            if not messages:
                # Nothing yet: wait for the first message only, then take what came with it.
                messages = consume(1, timeout=self._max_wait_s)
                if messages and size > 1:
                    messages += consume(size - 1, timeout=0)
            if messages and len(messages) < size and self._linger_s > 0:
                messages += consume(size - len(messages), timeout=self._linger_s)
        except KafkaException as exc:
            msg = f"consume failed: {exc}"
            raise FatalError(msg) from exc
        # Checked in C. Not with list.count(None): KafkaError's == raises on None.
        if any(map(Message.error, messages)):
            messages = self._data_messages(messages)
        return MessageBatch(messages)

    @staticmethod
    def _data_messages(messages: list[Message]) -> list[Message]:
        """The messages that carry data; errors are logged, and fatal ones raised.

        Raises:
            FatalError: librdkafka reported a fatal consumer error.
        """
        data = []
        for message in messages:
            error = message.error()
            if error is None:
                data.append(message)
                continue
            if error.fatal():
                msg = f"fatal consumer error: {error}"
                raise FatalError(msg)
            if error.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer_message_error", error=str(error))
        return data

    def close(self) -> None:
        """Leave the group and close the consumer."""
        self._consumer.close()
