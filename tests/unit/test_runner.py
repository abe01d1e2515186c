"""The runner's loop over fakes (no broker, no model): order of calls per batch, clean and
fatal stops, rebalance bookkeeping (lag series of revoked partitions go), readiness."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import structlog
from confluent_kafka import KafkaError, TopicPartition
from prometheus_client import CollectorRegistry

from stream_scorer.consume import MessageBatch
from stream_scorer.errors import PublishError
from stream_scorer.metrics import Health, ScorerMetrics
from stream_scorer.records import BatchOutput, BatchResult, SourceRecord
from stream_scorer.runner import Runner


class FakeConsumer:
    """Hands out scripted batches, then empty ones; records subscribe and close."""

    topic = "in"

    def __init__(self, batches: list[list[SourceRecord]], calls: list[str]) -> None:
        """Serve ``batches`` in order."""
        self._batches = list(batches)
        self.calls = calls
        self.assignment: set[tuple[str, int]] = set()
        self.on_assign: Callable[[list[TopicPartition]], None] | None = None
        self.on_revoke: Callable[[list[TopicPartition], bool], None] | None = None
        self.after_last: Callable[[], None] = lambda: None

    def subscribe(self, on_assign: Any = None, on_revoke: Any = None) -> None:
        """Remember the rebalance callbacks."""
        self.calls.append("subscribe")
        self.on_assign, self.on_revoke = on_assign, on_revoke

    def poll_batch(self) -> MessageBatch:
        """The next scripted batch, or an empty one (then run ``after_last``)."""
        self.calls.append("consume")
        if self._batches:
            return MessageBatch.from_records(self._batches.pop(0))
        self.after_last()
        return MessageBatch.from_records([])

    def close(self) -> None:
        """Record the call."""
        self.calls.append("close consumer")


class FakePipeline:
    """Returns an output with no messages and every record unflagged."""

    def __init__(self, calls: list[str]) -> None:
        """Record calls in ``calls``."""
        self.calls = calls
        self.models: Any = None
        self.contexts: list[dict[str, Any]] = []

    def process(self, batch: MessageBatch) -> BatchOutput:
        """One result per batch; remembers the log context bound while it runs."""
        self.calls.append(f"process {len(batch)}")
        self.contexts.append(dict(structlog.contextvars.get_contextvars()))
        return BatchOutput(batch, [], BatchResult(consumed=len(batch), unflagged=len(batch)))


class FakeDelivery:
    """Records calls; ``fail_on_submit`` raises like a failed delivery."""

    in_flight = 0
    queue_depth = 0

    def __init__(self, calls: list[str], fail_on_submit: bool = False) -> None:
        """Record calls in ``calls``."""
        self.calls = calls
        self.fail_on_submit = fail_on_submit

    def start(self) -> None:
        """Record the call."""
        self.calls.append("start")

    def submit(self, output: BatchOutput) -> None:
        """Record the call, or fail."""
        self.calls.append(f"submit {len(output.batch)}")
        if self.fail_on_submit:
            msg = "1 deliveries failed"
            raise PublishError(msg)
        output.result.stage_s["publish"] = 0.001

    def between_batches(self) -> None:
        """Record the call."""
        self.calls.append("settle")

    def on_revoke(self, partitions: list[TopicPartition], lost: bool) -> None:
        """Record the call."""
        self.calls.append(f"revoke {[p.partition for p in partitions]} lost={lost}")

    def close(self, clean: bool) -> None:
        """Record the call."""
        self.calls.append(f"close delivery clean={clean}")


def records(n: int, partition: int = 0) -> list[SourceRecord]:
    """``n`` records of one partition."""
    return [SourceRecord("in", partition, i, None, b"v") for i in range(n)]


def make_runner(
    batches: list[list[SourceRecord]],
    fail_on_submit: bool = False,
    clock: Callable[[], float] | None = None,
) -> tuple[Runner, list[str], FakeConsumer, CollectorRegistry]:
    """A runner over fakes that stops itself once the scripted batches are consumed."""
    calls: list[str] = []
    registry = CollectorRegistry()
    consumer = FakeConsumer(batches, calls)
    stop = threading.Event()
    consumer.after_last = stop.set
    runner = Runner(
        consumer,  # type: ignore[arg-type]  # the fakes have what the runner uses
        FakePipeline(calls),  # type: ignore[arg-type]
        FakeDelivery(calls, fail_on_submit),
        ScorerMetrics(registry),
        Health(),
        stop=stop,
        liveness_timeout_s=60.0,
        **({"clock": clock} if clock is not None else {}),
    )
    return runner, calls, consumer, registry


def test_each_batch_is_settled_scored_and_submitted_in_order() -> None:
    """start → subscribe, then per batch consume → settle → process → submit; a clean stop
    closes the delivery (clean) before the consumer."""
    runner, calls, _, registry = make_runner([records(3), records(2)])

    assert runner.run() == 0

    assert calls == [
        "start", "subscribe",
        "consume", "settle", "process 3", "submit 3",
        "consume", "settle", "process 2", "submit 2",
        "consume", "settle",
        "close delivery clean=True", "close consumer",
    ]  # fmt: skip
    assert (runner.totals.consumed, runner.totals.batches) == (5, 2)
    assert registry.get_sample_value("stream_scorer_records_consumed_total", {"topic": "in"}) == 5
    assert registry.get_sample_value("stream_scorer_batches_total") == 2
    assert (
        registry.get_sample_value(
            "stream_scorer_stage_duration_seconds_count", {"stage": "publish"}
        )
        == 2
    )


def test_fatal_error_exits_1_and_closes_unclean() -> None:
    """A FatalError from the delivery stops the loop with exit code 1; nothing is counted for
    the failed batch and the delivery is closed as after a failure."""
    runner, calls, _, _ = make_runner([records(3)], fail_on_submit=True)

    assert runner.run() == 1

    assert calls[-2:] == ["close delivery clean=False", "close consumer"]
    assert runner.totals.consumed == 0
    assert not runner.health.ready


def test_revocation_settles_the_delivery_and_drops_lag_series() -> None:
    """Revoked partitions go to the delivery first; their lag gauges are no longer exported
    (their new owner reports them), and rebalances are counted by kind."""
    runner, calls, consumer, registry = make_runner([])
    runner.metrics.set_lag("in", 0, 5)
    runner.metrics.set_lag("in", 1, 7)
    runner.delivery.start()
    runner.consumer.subscribe(on_assign=runner._on_assign, on_revoke=runner._on_revoke)
    assert consumer.on_assign is not None and consumer.on_revoke is not None

    consumer.on_assign([TopicPartition("in", 0), TopicPartition("in", 1)])
    consumer.on_revoke([TopicPartition("in", 0)], False)

    assert calls[-1] == "revoke [0] lost=False"
    assert runner.assigned.is_set()
    lag = registry.get_sample_value
    assert lag("stream_scorer_consumer_lag", {"topic": "in", "partition": "0"}) is None
    assert lag("stream_scorer_consumer_lag", {"topic": "in", "partition": "1"}) == 7
    assert lag("stream_scorer_rebalances_total", {"kind": "assigned"}) == 1
    assert lag("stream_scorer_rebalances_total", {"kind": "revoked"}) == 1


@pytest.mark.parametrize(
    ("code", "ready"), [(KafkaError._ALL_BROKERS_DOWN, False), (KafkaError._MSG_TIMED_OUT, True)]
)
def test_unreachable_cluster_marks_not_ready_without_broker_details(code: int, ready: bool) -> None:
    """Only errors meaning the cluster cannot be reached change readiness; the reason shown is
    generic (no broker addresses)."""
    runner, _, _, _ = make_runner([])
    runner.health.set_ready(True, "consuming")

    runner.on_kafka_error(KafkaError(code, "127.0.0.1:9092/bootstrap: Connect failed"))

    assert runner.health.ready is ready
    assert "127.0.0.1" not in runner.health.reason


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        """Start at 100 s."""
        self.now = 100.0

    def __call__(self) -> float:
        """The current time."""
        return self.now


def test_liveness_fails_on_a_stalled_iteration_and_recovers() -> None:
    """An iteration running past the liveness timeout makes /healthz fail; progress heals it."""
    clock = Clock()
    runner, _, _, _ = make_runner([], clock=clock)
    runner.health.set_ready(True, "consuming")

    clock.now += 30.0
    runner.check_progress()
    assert runner.health.live and not runner.health.ready  # past LOOP_STALL_S: not ready only
    clock.now += 31.0
    runner.check_progress()
    assert not runner.health.live
    assert runner.health.live_reason == "loop stalled"

    runner._iteration_at = clock.now
    runner.check_progress()
    assert runner.health.live


def test_liveness_fails_when_events_wait_and_no_batch_completes() -> None:
    """With lag reported and no batch completed for the liveness timeout, /healthz fails;
    without lag an idle loop stays live however long it waits."""
    clock = Clock()
    runner, _, _, _ = make_runner([], clock=clock)

    clock.now += 120.0
    runner._iteration_at = clock.now
    runner.check_progress()
    assert runner.health.live

    runner.on_lag("in", 0, 500)
    runner.check_progress()
    assert not runner.health.live
    assert runner.health.live_reason == "no progress while events wait"


@pytest.mark.parametrize("code", [KafkaError._AUTHENTICATION, KafkaError._SSL])
def test_refused_credentials_or_certificate_stop_with_exit_1(code: int) -> None:
    """A broker refusing the credentials or the certificate stops the loop at once with exit
    1 and the cause, instead of retrying forever and flooding the log."""
    runner, calls, consumer, _ = make_runner([records(2)] * 1000)
    consumer.after_last = lambda: None
    real_poll = consumer.poll_batch

    def refused_after_first() -> MessageBatch:
        batch = real_poll()
        runner.on_kafka_error(KafkaError(code, "SASL authentication error: bad password"))
        return batch

    consumer.poll_batch = refused_after_first  # type: ignore[method-assign]

    assert runner.run() == 1
    assert runner.stop_requested
    assert calls.count("consume") == 1
    assert calls[-2:] == ["close delivery clean=False", "close consumer"]


def test_log_lines_of_a_batch_name_it() -> None:
    """While a batch is scored and submitted, every log line carries its id and its offset
    range per partition; the context is gone between batches."""
    runner, _, _, _ = make_runner(
        [[*records(3, partition=1), *records(2, partition=0)], records(1)]
    )

    assert runner.run() == 0

    contexts = runner.pipeline.contexts  # type: ignore[attr-defined]
    assert contexts == [
        {"batch_id": 1, "offsets": "p0:0-1 p1:0-2"},
        {"batch_id": 2, "offsets": "p0:0-0"},
    ]
    assert "batch_id" not in structlog.contextvars.get_contextvars()
