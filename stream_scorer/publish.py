"""Stage 7: produce alerts and dead letters; a batch is done only when all are acknowledged.

Every produced message's delivery report is checked in the callback; :meth:`flush` waits for all
of them and raises :class:`~stream_scorer.errors.PublishError` once if any failed or any is still
outstanding at the deadline. When librdkafka's local queue is full (a slow broker, a throttled
downstream), :meth:`produce` serves delivery reports and waits instead of dropping or growing
memory: consumption is paused by construction, since the next batch is consumed only after this
one is flushed.

With ``delivery.mode = "exactly-once"`` the producer is transactional: one Kafka transaction
per batch holds the alerts, the dead letters and the consumed offsets
(``send_offsets_to_transaction``), so a ``read_committed`` reader sees each of them exactly once.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from stream_scorer.errors import FatalError, PublishError
from stream_scorer.records import Header

__all__ = [
    "PRODUCER_DEFAULTS",
    "PRODUCER_OVERRIDES",
    "ResultPublisher",
    "TransactionAbortedError",
    "producer_config",
]

log = structlog.get_logger(__name__)

#: Defaults a user may override in ``[kafka.producer]``.
PRODUCER_DEFAULTS: dict[str, Any] = {
    # Batch sends for a few ms: far fewer requests at high rates, negligible latency at low.
    "linger.ms": 5,
    # Same key → same partition as the Java client, so alerts of one card keep their order
    # next to producers written in other languages (librdkafka's default is CRC32).
    "partitioner": "murmur2_random",
    "compression.type": "lz4",
}
#: Forced: no duplicates from producer retries, and every write acknowledged by all replicas.
PRODUCER_OVERRIDES: dict[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
}
#: How long produce() waits for room in a full local queue per attempt.
QUEUE_FULL_POLL_S = 0.05
#: Timeout for transactional control calls (init, commit, abort, send offsets).
TXN_CALL_TIMEOUT_S = 30.0


class TransactionAbortedError(PublishError):
    """The batch's transaction was aborted; nothing of it is visible and its offsets did not
    move. The caller rewinds to the last committed offsets and scores the batch again."""


def producer_config(
    client: Mapping[str, Any], extra: Mapping[str, Any], transactional_id: str | None = None
) -> dict[str, Any]:
    """Merge defaults → client/security settings → user extras → forced overrides."""
    config: dict[str, Any] = {**PRODUCER_DEFAULTS, **client, **extra, **PRODUCER_OVERRIDES}
    if transactional_id is not None:
        config["transactional.id"] = transactional_id
    return config


class ResultPublisher:
    """Produces to the alert and dead-letter topics and checks every delivery."""

    def __init__(self, config: Mapping[str, Any], flush_timeout_s: float = 30.0) -> None:
        """Create the producer; with ``transactional.id`` set, initialise transactions.

        Raises:
            FatalError: The transactional producer could not be initialised.
        """
        self._producer = Producer(dict(config))
        self._flush_timeout_s = flush_timeout_s
        self._failures: list[str] = []
        self._pending = 0
        self.transactional = "transactional.id" in config
        self._in_transaction = False
        if self.transactional:
            try:
                self._producer.init_transactions(TXN_CALL_TIMEOUT_S)
            except KafkaException as exc:
                msg = f"cannot initialise transactions: {exc}"
                raise FatalError(msg) from exc

    def _on_delivery(self, error: KafkaError | None, message: Message) -> None:
        self._pending -= 1
        if error is not None:
            self._failures.append(f"{message.topic()}: {error}")

    def begin(self) -> None:
        """Start the batch (a transaction in exactly-once mode)."""
        self._failures.clear()
        if self.transactional and not self._in_transaction:
            try:
                self._producer.begin_transaction()
            except KafkaException as exc:
                self._raise_transaction_error("begin_transaction", exc)
            self._in_transaction = True

    def produce(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Sequence[Header]
    ) -> None:
        """Queue one message; waits for room when librdkafka's queue is full.

        Raises:
            PublishError: The queue stayed full for the whole flush timeout.
        """
        deadline = time.monotonic() + self._flush_timeout_s
        while True:
            try:
                self._producer.produce(
                    topic,
                    value=value,
                    key=key,
                    headers=list(headers),
                    on_delivery=self._on_delivery,
                )
            except BufferError:
                # Backpressure: serve delivery reports until the queue has room again.
                if time.monotonic() > deadline:
                    msg = f"producer queue stayed full for {self._flush_timeout_s}s"
                    raise PublishError(msg) from None
                self._producer.poll(QUEUE_FULL_POLL_S)
                continue
            except KafkaException as exc:
                if self.transactional:
                    self._raise_transaction_error("produce", exc)
                msg = f"produce to {topic} failed: {exc}"
                raise PublishError(msg) from exc
            self._pending += 1
            return

    def poll(self) -> None:
        """Serve delivery callbacks without waiting."""
        self._producer.poll(0)

    def flush(self) -> None:
        """Wait until every queued message is acknowledged.

        Raises:
            PublishError: A delivery failed, or some were still outstanding at the deadline.
        """
        remaining = self._producer.flush(self._flush_timeout_s)
        if remaining or self._failures:
            failures, self._failures = self._failures, []
            msg = (
                f"{len(failures)} deliveries failed, {remaining} not acknowledged within "
                f"{self._flush_timeout_s}s: {failures[:5]}"
            )
            raise PublishError(msg)

    def commit_transaction(self, offsets: list[TopicPartition], consumer: Consumer) -> None:
        """Send the batch's offsets and commit its transaction (exactly-once mode).

        Raises:
            TransactionAbortedError: The transaction was aborted; rewind and replay the batch.
            FatalError: The producer is fenced or broken; stop and let a restart take over.
        """
        try:
            if offsets:
                self._producer.send_offsets_to_transaction(
                    offsets, consumer.consumer_group_metadata(), TXN_CALL_TIMEOUT_S
                )
            self._commit_with_retries()
        except KafkaException as exc:
            self._raise_transaction_error("commit_transaction", exc)
        self._in_transaction = False

    def _commit_with_retries(self) -> None:
        # A retriable commit error (e.g. a timeout) is retried as the Kafka docs prescribe;
        # anything else is classified by _transaction_error.
        while True:
            try:
                self._producer.commit_transaction(TXN_CALL_TIMEOUT_S)
            except KafkaException as exc:
                if exc.args[0].retriable():
                    log.warning("transaction_commit_retry", error=str(exc))
                    continue
                raise
            return

    def _raise_transaction_error(self, call: str, exc: KafkaException) -> NoReturn:
        """Abort and raise TransactionAbortedError when Kafka says the error is abortable;
        otherwise (fenced, fatal, unknown) raise FatalError, as the Kafka docs prescribe."""
        error: KafkaError = exc.args[0]
        if error.txn_requires_abort():
            self.abort()
            msg = f"{call}: transaction aborted: {error}"
            raise TransactionAbortedError(msg) from exc
        self._in_transaction = False
        msg = f"{call}: fatal transactional error: {error}"
        raise FatalError(msg) from exc

    def abort(self) -> None:
        """Abort the open transaction, if any; its messages are never visible to read_committed."""
        if self.transactional and self._in_transaction:
            try:
                self._producer.abort_transaction(TXN_CALL_TIMEOUT_S)
            except KafkaException as exc:
                msg = f"abort_transaction failed: {exc}"
                raise FatalError(msg) from exc
            finally:
                self._in_transaction = False
                self._failures.clear()

    def close(self) -> None:
        """Flush what is left (best effort) and release the producer."""
        if self._in_transaction:
            self.abort()
        self._producer.flush(self._flush_timeout_s)
