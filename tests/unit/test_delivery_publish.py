"""Publisher.produce_all on librdkafka without a broker and on a recording producer: a batch is
queued in order, headers only where a message has some, a full queue waits and resumes after
the message it queued, and the producer reports failures only unless configured otherwise."""

from __future__ import annotations

from typing import Any

import pytest

from stream_scorer.delivery.publish import Publisher, producer_config
from stream_scorer.errors import PublishError
from stream_scorer.records import Outgoing

#: No broker at all: messages stay queued locally, and no connection error adds a callback
#: to the queue length.
NO_BROKER: dict[str, Any] = {"message.timeout.ms": 60_000, "log_level": 0}


class RecordingProducer:
    """Records produce() calls; raises BufferError at the attempts numbered in ``full_at``."""

    def __init__(self, full_at: frozenset[int] = frozenset()) -> None:
        """Nothing produced yet."""
        self.calls: list[tuple[Any, ...]] = []
        self.full_at = full_at
        self.polls = 0
        self._attempts = 0

    def produce(self, *args: Any, **kwargs: Any) -> None:
        """Record the message, or refuse it once as a full queue does."""
        self._attempts += 1
        if self._attempts in self.full_at:
            msg = "Local: Queue full"
            raise BufferError(msg)
        self.calls.append((args, kwargs))

    def poll(self, timeout_s: float) -> int:
        """Count the waits for room."""
        del timeout_s
        self.polls += 1
        return 0


def _messages(n: int, headers_at: int | None = None) -> list[Outgoing]:
    return [
        ("scores", f"k{i}".encode(), f"v{i}".encode(), [("h", b"x")] if i == headers_at else [])
        for i in range(n)
    ]


def _values(producer: RecordingProducer) -> list[bytes]:
    return [kwargs["value"] if "value" in kwargs else args[1] for args, kwargs in producer.calls]


def test_produce_all_queues_every_message_on_librdkafka() -> None:
    """A batch with and without headers lands in the real producer's queue, all of it."""
    publisher = Publisher(producer_config(NO_BROKER, {}), flush_timeout_s=1.0)
    callback = lambda error, message: None  # noqa: E731 - nothing is delivered here

    queued = publisher.produce_all(_messages(5, headers_at=2), callback)

    assert queued == 5
    assert publisher.queue_depth == 5
    publisher.producer.purge()


def test_produce_all_keeps_order_across_a_full_queue() -> None:
    """The message that met a full queue is queued after a wait, before the ones after it."""
    publisher = Publisher(producer_config(NO_BROKER, {}), flush_timeout_s=1.0)
    recording = RecordingProducer(full_at=frozenset({3, 4}))  # full twice
    publisher._producer = recording  # type: ignore[assignment]  # records instead of sending

    queued = publisher.produce_all(_messages(6), lambda error, message: None)

    assert queued == 6
    assert _values(recording) == [f"v{i}".encode() for i in range(6)]
    assert recording.polls == 1


def test_produce_all_passes_headers_only_where_present() -> None:
    """A message without headers is produced without a header list; one with them keeps them."""
    publisher = Publisher(producer_config(NO_BROKER, {}), flush_timeout_s=1.0)
    recording = RecordingProducer()
    publisher._producer = recording  # type: ignore[assignment]

    publisher.produce_all(_messages(3, headers_at=1), lambda error, message: None)

    headers = [args[7] if len(args) > 7 else None for args, _ in recording.calls]
    assert headers == [None, [("h", b"x")], None]


def test_produce_all_gives_up_when_the_queue_stays_full() -> None:
    """A queue that stays full past the batch's deadline raises PublishError, nothing dropped
    silently."""
    config = producer_config(NO_BROKER, {"queue.buffering.max.messages": 3})
    publisher = Publisher(config, flush_timeout_s=0.2)
    publisher.start_batch()

    with pytest.raises(PublishError, match="stayed full"):
        publisher.produce_all(_messages(5), lambda error, message: None)
    assert publisher.queue_depth == 3
    publisher.producer.purge()


def test_producers_report_failures_only_by_default_and_may_opt_out() -> None:
    """Both delivery modes' producers report failed messages only; [kafka.producer] may ask
    for every report (the strategies count them down then)."""
    assert producer_config({}, {})["delivery.report.only.error"] is True
    transactional = producer_config({}, {}, transactional_id="scorer-0")
    assert transactional["delivery.report.only.error"] is True
    opted_out = producer_config({}, {"delivery.report.only.error": False})
    assert opted_out["delivery.report.only.error"] is False
