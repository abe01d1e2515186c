"""Helpers for integration tests: settings for a test run, producing, reading, waiting."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from prometheus_client import CollectorRegistry

from stream_scorer.app import build_runner
from stream_scorer.runner import Runner
from stream_scorer.settings import Settings, load_settings

__all__ = [
    "RunningScorer",
    "committed_offsets",
    "end_offsets",
    "produce_values",
    "read_topic",
    "scorer_settings",
    "wait_until",
]

REPO = Path(__file__).resolve().parents[2]


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            msg = f"timed out after {timeout_s}s waiting for {what}"
            raise AssertionError(msg)
        time.sleep(0.1)  # polling interval of a condition with a deadline, not synchronisation


def scorer_settings(
    bootstrap: str, topics: dict[str, str], registry_url: str | None, **sections: Any
) -> Settings:
    """Settings for one test's scorer: unique group, fast group join, metrics on a free port."""
    overrides: dict[str, Any] = {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "group_id": f"it-{uuid.uuid4().hex[:10]}",
            # Tests: join a group fast; production keeps librdkafka's defaults.
            "consumer": {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500},
        },
        "topics": topics,
        "schema": {
            "wire_format": "confluent" if registry_url else "plain",
            "registry_url": registry_url,
            "reader": str(REPO / "schemas/transaction.avsc"),
            "alert": str(REPO / "schemas/alert.avsc"),
        },
        "model": {"path": str(REPO / "models/fraud/1")},
        "metrics": {"port": 0, "host": "127.0.0.1", "summary_interval_s": 2.0},
        "log": {"level": "warning"},
    }
    for name, values in sections.items():
        overrides.setdefault(name, {}).update(values)
    return load_settings(None, overrides, environ={})


def produce_values(
    bootstrap: str, topic: str, messages: Iterable[tuple[bytes | None, bytes | None]]
) -> int:
    """Produce (key, value) pairs in order and wait for every acknowledgement."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5,
                         "enable.idempotence": True, "partitioner": "murmur2_random"})  # fmt: skip
    count = 0
    for key, value in messages:
        while True:
            try:
                producer.produce(topic, key=key, value=value)
                break
            except BufferError:
                producer.poll(0.05)
        count += 1
    remaining = producer.flush(60)
    assert remaining == 0, f"{remaining} test messages not acknowledged"
    return count


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """High watermark per partition."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "it-watermarks"})
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in metadata.topics[topic].partitions
        }
    finally:
        consumer.close()


#: Errors of an offset read while the group coordinator moves or loads: asked again.
COORDINATOR_BUSY = frozenset({
    KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError._TIMED_OUT,
})  # fmt: skip


def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed offset per partition (-1001 when none); asked again for up to
    30 s while the group coordinator is loading (a fresh broker, a new group)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    deadline = time.monotonic() + 30
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        partitions = [TopicPartition(topic, p) for p in metadata.topics[topic].partitions]
        while True:
            try:
                committed = consumer.committed(partitions, timeout=10)
            except KafkaException as exc:
                if exc.args[0].code() not in COORDINATOR_BUSY or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)  # back off while the coordinator loads (a retry, not a sync)
                continue
            return {tp.partition: tp.offset for tp in committed}
    finally:
        consumer.close()


def read_topic(
    bootstrap: str, topic: str, isolation_level: str = "read_uncommitted", timeout_s: float = 60
) -> list[Message]:
    """Every message of ``topic`` up to its current end offsets."""
    ends = end_offsets(bootstrap, topic)
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"it-reader-{uuid.uuid4().hex[:8]}",
        "auto.offset.reset": "earliest", "enable.auto.commit": False,
        "isolation.level": isolation_level,
    })  # fmt: skip
    consumer.assign([TopicPartition(topic, p, 0) for p in ends])
    messages: list[Message] = []
    positions = dict.fromkeys(ends, 0)
    deadline = time.monotonic() + timeout_s
    try:
        # With read_committed, transaction markers occupy offsets but are never delivered,
        # so progress is measured by position, not by message count.
        while any(positions[p] < ends[p] for p in ends):
            if time.monotonic() > deadline:
                msg = f"read {len(messages)} messages of {topic}, positions {positions} < {ends}"
                raise AssertionError(msg)
            for message in consumer.consume(1000, timeout=0.5):
                if message.error() is None:
                    messages.append(message)
            for tp in consumer.position([TopicPartition(topic, p) for p in ends]):
                if tp.offset >= 0:
                    positions[tp.partition] = tp.offset
    finally:
        consumer.close()
    return messages


@dataclass
class RunningScorer:
    """A :class:`Runner` in a background thread, stopped by :meth:`stop`."""

    settings: Settings
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    runner: Runner = field(init=False)
    thread: threading.Thread = field(init=False)
    exit_code: int | None = None

    def __post_init__(self) -> None:
        """Build the runner (start-up checks) and start its loop."""
        self.runner = build_runner(self.settings, registry=self.registry)
        self.thread = threading.Thread(target=self._run, name="scorer-under-test", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.exit_code = self.runner.run()

    def wait_caught_up(self, topic: str, timeout_s: float = 120) -> None:
        """Wait until the group's committed offsets reach the topic's end offsets."""
        bootstrap = self.settings.kafka.bootstrap_servers
        group = self.settings.kafka.group_id
        ends = end_offsets(bootstrap, topic)
        wait_until(
            lambda: (
                not self.thread.is_alive() or committed_offsets(bootstrap, group, topic) == ends
            ),
            timeout_s,
            f"group {group} to commit {ends} on {topic}",
        )
        assert self.thread.is_alive(), f"scorer stopped early with exit code {self.exit_code}"

    def stop(self, timeout_s: float = 60) -> int | None:
        """Stop the loop and return its exit code."""
        self.runner.stop()
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "scorer did not stop"
        return self.exit_code


def stream_topics(make_topic: Any, partitions: int = 4) -> dict[str, str]:
    """Fresh input and alert topics of ``partitions`` partitions and a one-partition
    dead-letter topic, named as scorer configs and tests expect them."""
    return {
        "input": make_topic("in", partitions=partitions),
        "alerts": make_topic("alerts", partitions=partitions),
        "dead_letter": make_topic("dlq", partitions=1),
    }
