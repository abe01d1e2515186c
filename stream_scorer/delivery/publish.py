"""Stage 7: produce alerts and dead letters, and check every delivery report.

:class:`Publisher` wraps one confluent-kafka producer. :meth:`Publisher.produce` queues one
message and hands its delivery report to the callback the delivery strategy passes (the
at-least-once strategy counts them per batch; the exactly-once strategy per transaction). When
librdkafka's local queue is full (a slow broker, a throttled downstream), ``produce`` serves
delivery reports and waits instead of dropping or growing memory, up to the batch's deadline:
the loop that called it consumes nothing meanwhile, so consumption pauses.

:class:`TransactionalPublisher` adds the transactional calls of exactly-once mode (begin, send
the consumed offsets, commit, abort) and classifies their errors the way the Kafka docs
prescribe: abortable errors raise :class:`TransactionAbortedError` (rewind and score the batch
again), anything else :class:`~stream_scorer.errors.FatalError`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from stream_scorer.errors import FatalError, PublishError
from stream_scorer.records import Header, Outgoing

#: librdkafka's delivery report callback: ``(error or None, message)``.
DeliveryCallback = Callable[[KafkaError | None, Message], None]

__all__ = [
    "PRODUCER_DEFAULTS",
    "PRODUCER_OVERRIDES",
    "TRANSACTIONAL_DEFAULTS",
    "DeliveryCallback",
    "Publisher",
    "TransactionAbortedError",
    "TransactionalPublisher",
    "producer_config",
    "transaction_timeout_s",
]

log = structlog.get_logger(__name__)

#: Defaults a user may override in ``[kafka.producer]``.
PRODUCER_DEFAULTS: dict[str, Any] = {
    # Every ms here is a ms of alert latency. Alerts are ~1 % of events, so even at 100k
    # events/s one ms groups them into few requests (librdkafka's default is 5).
    "linger.ms": 1,
    # Same key → same partition as the Java client, so alerts of one card keep their order
    # next to producers written in other languages (librdkafka's default is CRC32).
    "partitioner": "murmur2_random",
    "compression.type": "lz4",
    # One Python callback per message cost ~2 us each (a Message object, its key and value
    # copied), as much as produce() itself with a score record per event. With this, the
    # Python client calls back for failed messages only (it still receives every report in
    # C); success is known without a callback: a message counts in len(producer) until its
    # report is served (librdkafka's rd_kafka_outq_len), so an empty queue after a poll means
    # every message produced before it is delivered or its failure was reported. The
    # strategies rely on that, not on counting successes (delivery/acks.py).
    "delivery.report.only.error": True,
}
#: Defaults of a transactional (exactly-once) producer, overridable in ``[kafka.producer]``.
TRANSACTIONAL_DEFAULTS: dict[str, Any] = {
    # How long the transaction coordinator lets a transaction stay open before aborting it.
    # It bounds how long a member that died mid-batch (and is not restarted with the same
    # transactional id) holds back read_committed readers of the alert topic and the new owner
    # of its partitions. It must exceed the longest batch: the runner refuses to start unless
    # delivery.flush_timeout_s leaves room for the commit within it. librdkafka also caps
    # message.timeout.ms to it. 60 s is librdkafka's (and the Java client's) default.
    "transaction.timeout.ms": 60_000,
}
#: Forced: no duplicates from producer retries, and every write acknowledged by all replicas.
PRODUCER_OVERRIDES: dict[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
}
#: librdkafka's "any partition": the configured partitioner picks one from the key.
PARTITION_UA = -1
#: How long produce() waits for room in a full local queue per attempt.
QUEUE_FULL_POLL_S = 0.05
#: Timeout for transactional control calls (init, commit, abort, send offsets).
TXN_CALL_TIMEOUT_S = 30.0
#: init_transactions is called in slices this long, so a refusal is noticed between them.
INIT_SLICE_S = 1.0


class TransactionAbortedError(PublishError):
    """The batch's transaction was aborted; nothing of it is visible and its offsets did not
    move. The caller rewinds to the last committed offsets and scores the batch again."""


def producer_config(
    client: Mapping[str, Any], extra: Mapping[str, Any], transactional_id: str | None = None
) -> dict[str, Any]:
    """Merge defaults → client/security settings → user extras → forced overrides."""
    transactional = TRANSACTIONAL_DEFAULTS if transactional_id is not None else {}
    config: dict[str, Any] = {
        **PRODUCER_DEFAULTS, **transactional, **client, **extra, **PRODUCER_OVERRIDES,
    }  # fmt: skip
    if transactional_id is not None:
        config["transactional.id"] = transactional_id
    return config


def transaction_timeout_s(config: Mapping[str, Any]) -> float | None:
    """The transaction timeout of a producer config in seconds; None when not transactional."""
    if "transactional.id" not in config:
        return None
    return float(config.get("transaction.timeout.ms", 60_000)) / 1000.0


class Publisher:
    """Produces to the alert and dead-letter topics; delivery reports go to the caller."""

    def __init__(self, config: Mapping[str, Any], flush_timeout_s: float = 30.0) -> None:
        """Create the producer (connects lazily)."""
        self._producer = Producer(dict(config))
        self.flush_timeout_s = flush_timeout_s
        # Produce of one batch has one deadline, so a batch never takes longer than
        # flush_timeout_s to publish however often the local queue fills up.
        self._deadline = time.monotonic() + flush_timeout_s

    @property
    def producer(self) -> Producer:
        """The underlying confluent-kafka producer."""
        return self._producer

    @property
    def queue_depth(self) -> int:
        """Messages queued locally and not yet acknowledged (``len(producer)``)."""
        return len(self._producer)

    def start_batch(self) -> None:
        """Start the deadline of the next batch's messages."""
        self._deadline = time.monotonic() + self.flush_timeout_s

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[Header],
        on_delivery: DeliveryCallback,
    ) -> None:
        """Queue one message; waits for room when librdkafka's queue is full.

        Raises:
            PublishError: The queue stayed full until the batch's deadline, or the producer
                refused the message.
        """
        while True:
            try:
                self._producer.produce(
                    topic, value=value, key=key, headers=list(headers), on_delivery=on_delivery
                )
            except BufferError:
                # Backpressure: serve delivery reports until the queue has room again.
                if time.monotonic() > self._deadline:
                    msg = f"producer queue stayed full for the batch's {self.flush_timeout_s}s"
                    raise PublishError(msg) from None
                self._producer.poll(QUEUE_FULL_POLL_S)
                continue
            except KafkaException as exc:
                self._on_produce_error(topic, exc)
            return

    def produce_all(self, messages: Sequence[Outgoing], on_delivery: DeliveryCallback) -> int:
        """Queue every message in order, one delivery callback for all; how many were queued.

        The hot path of a batch (one score record per event): ``produce`` is called with
        positional arguments and without an empty header list, which measured ~2x cheaper per
        message than keywords plus ``headers=[]`` (librdkafka allocates a header set for an
        empty list too). A full queue falls back to :meth:`produce`, which waits for room, and
        the loop resumes after the message it queued, so the order is kept.

        Raises:
            PublishError: As :meth:`produce`.
        """
        produce = self._producer.produce
        queued = 0
        total = len(messages)
        while queued < total:
            try:
                for topic, key, value, headers in messages[queued:] if queued else messages:
                    if headers:
                        # Alerts and dead letters only (few per batch): the copy is cheap.
                        hdrs: list[tuple[str, str | bytes | None]] = list(headers)
                        produce(topic, value, key, PARTITION_UA, on_delivery, None, 0, hdrs)
                    else:
                        produce(topic, value, key, PARTITION_UA, on_delivery)
                    queued += 1
            except BufferError:
                # Backpressure for the one message that did not fit, then the rest in bulk.
                topic, key, value, headers = messages[queued]
                self.produce(topic, key, value, headers, on_delivery)
                queued += 1
            except KafkaException as exc:
                self._on_produce_error(messages[queued][0], exc)
        return queued

    def _on_produce_error(self, topic: str, exc: KafkaException) -> NoReturn:
        msg = f"produce to {topic} failed: {exc}"
        raise PublishError(msg) from exc

    def poll(self, timeout_s: float = 0.0) -> None:
        """Serve delivery callbacks, waiting up to ``timeout_s`` for the first one."""
        self._producer.poll(timeout_s)

    def drain(self, timeout_s: float) -> int:
        """Wait up to ``timeout_s`` for every queued message; the number still outstanding."""
        return int(self._producer.flush(timeout_s))

    def close(self) -> None:
        """Flush what is left (best effort) and release the producer."""
        self._producer.flush(self.flush_timeout_s)


class TransactionalPublisher(Publisher):
    """A transactional producer: one transaction per batch holds its messages and offsets."""

    def __init__(self, config: Mapping[str, Any], flush_timeout_s: float = 30.0) -> None:
        """Create the producer; :meth:`init` registers its transactional id."""
        if "transactional.id" not in config:
            msg = "a transactional publisher needs transactional.id"
            raise ValueError(msg)
        super().__init__(config, flush_timeout_s)
        self.in_transaction = False

    def init(self, interrupted: Callable[[], bool] = lambda: False) -> None:
        """Initialise transactions (fences a previous instance with the same id).

        The call is made in slices of :data:`INIT_SLICE_S` (librdkafka resumes it after a
        timeout), serving callbacks between them: a broker that refuses the credentials is
        reported by the error callback, which sets ``interrupted``, within a slice instead of
        after the whole :data:`TXN_CALL_TIMEOUT_S`.

        Raises:
            FatalError: The transactional producer could not be initialised, or ``interrupted``
                said to stop.
        """
        deadline = time.monotonic() + TXN_CALL_TIMEOUT_S
        while True:
            try:
                self._producer.init_transactions(INIT_SLICE_S)
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                self._producer.poll(0)  # serve the error callback: it may say why
                if interrupted():
                    msg = "cannot initialise transactions: stopped (see the error above)"
                    raise FatalError(msg) from exc
                if error.retriable() and time.monotonic() < deadline:
                    continue
                msg = f"cannot initialise transactions: {exc}"
                raise FatalError(msg) from exc
            return

    def begin(self) -> None:
        """Start the batch's transaction."""
        self.start_batch()
        if not self.in_transaction:
            try:
                self._producer.begin_transaction()
            except KafkaException as exc:
                self._raise_transaction_error("begin_transaction", exc)
            self.in_transaction = True

    def _on_produce_error(self, topic: str, exc: KafkaException) -> NoReturn:
        self._raise_transaction_error("produce", exc)

    def remaining_s(self) -> float:
        """Time left before the batch's deadline."""
        return max(0.0, self._deadline - time.monotonic())

    def commit_transaction(self, offsets: list[TopicPartition], consumer: Consumer) -> None:
        """Send the batch's offsets and commit its transaction.

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
        self.in_transaction = False

    def _commit_with_retries(self) -> None:
        # A retriable commit error (e.g. a timeout) is retried as the Kafka docs prescribe, but
        # only until TXN_CALL_TIMEOUT_S: an unbounded retry would hold the batch past
        # max.poll.interval.ms and the transaction past its timeout. Anything else, and a retry
        # that runs out of time, is classified by _raise_transaction_error.
        deadline = time.monotonic() + TXN_CALL_TIMEOUT_S
        while True:
            try:
                self._producer.commit_transaction(max(1.0, deadline - time.monotonic()))
            except KafkaException as exc:
                if exc.args[0].retriable() and time.monotonic() < deadline:
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
        self.in_transaction = False
        msg = f"{call}: fatal transactional error: {error}"
        if error.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED):
            msg += (
                " (another producer with the same transactional.id started: a restart of this"
                " instance, or a second instance sharing its id; give every instance its own"
                " kafka.group_instance_id or delivery.transactional_id)"
            )
        raise FatalError(msg) from exc

    def abort(self) -> None:
        """Abort the open transaction, if any; its messages are never visible to read_committed."""
        if self.in_transaction:
            try:
                self._producer.abort_transaction(TXN_CALL_TIMEOUT_S)
            except KafkaException as exc:
                msg = f"abort_transaction failed: {exc}"
                raise FatalError(msg) from exc
            finally:
                self.in_transaction = False

    def close(self) -> None:
        """Abort an open transaction and release the producer."""
        if self.in_transaction:
            self.abort()
        super().close()
