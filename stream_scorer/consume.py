"""Stage 1: Kafka → one micro-batch (:class:`~stream_scorer.records.MessageBatch`) per call.

A batch is what has arrived when the loop asks, up to ``batch.max_size`` messages: under load
that is a full batch, and a light stream is scored in small batches at once rather than held
back to fill a big one (the loop's own processing time sets the batch size). When nothing has
arrived the call waits up to ``batch.max_wait_ms`` for the first message; ``batch.linger_ms``
(0 by default) waits that much longer for a batch to fill, trading latency for larger batches.

Offsets are never committed here: ``enable.auto.commit`` and
``enable.auto.offset.store`` are forced off, so only :mod:`stream_scorer.commit` (after every
result is acknowledged) moves the group forward. Consumer errors that librdkafka reports on a
message are logged and counted when transient, and raise
:class:`~stream_scorer.errors.FatalError` when fatal. Consumer lag per partition is read from
librdkafka's statistics (``statistics.interval.ms``) and handed to a callback.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from stream_scorer.errors import FatalError
from stream_scorer.records import MessageBatch

__all__ = [
    "CONSUMER_DEFAULTS",
    "CONSUMER_OVERRIDES",
    "BatchConsumer",
    "LagCallback",
    "consumer_config",
    "max_poll_interval_s",
]

log = structlog.get_logger(__name__)

LagCallback = Callable[[str, int, int], None]

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


class BatchConsumer:
    """A subscribed consumer that hands out micro-batches."""

    def __init__(
        self,
        config: Mapping[str, Any],
        topic: str,
        max_batch_size: int,
        max_wait_s: float,
        linger_s: float = 0.0,
        on_lag: LagCallback | None = None,
        on_revoke: Callable[[list[TopicPartition], bool], None] | None = None,
        on_assign: Callable[[list[TopicPartition]], None] | None = None,
    ) -> None:
        """Create the consumer and subscribe to ``topic``.

        Args:
            config: Complete librdkafka consumer config (see :func:`consumer_config`).
            topic: Input topic.
            max_batch_size: Most messages per batch.
            max_wait_s: Longest wait for the first message of a batch.
            linger_s: Longest further wait for a batch to fill once it has a message.
            on_lag: Called with (topic, partition, lag) from librdkafka statistics.
            on_revoke: Called with the partitions being revoked (``lost=False``: this member
                may still commit for them) or lost (``True``: it may not), before they go.
            on_assign: Called with newly assigned partitions.
        """
        self.topic = topic
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_s
        self._linger_s = linger_s
        self._on_lag = on_lag
        self._on_revoke = on_revoke
        self._on_assign = on_assign
        self.assignment: set[tuple[str, int]] = set()
        conf = dict(config)
        # The caller's error callback (readiness) still hears every error, after our logging.
        self._error_cb: Callable[[KafkaError], None] | None = conf.pop("error_cb", None)
        conf["error_cb"] = self._on_error
        if on_lag is not None:
            conf["stats_cb"] = self._on_stats
        self._consumer = Consumer(conf)
        self._consumer.subscribe(
            [topic], on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._lost
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
