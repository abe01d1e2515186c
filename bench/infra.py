"""The benchmark's surroundings: broker, registry, topics, the data set, offsets and alerts.

Everything the harness needs from Kafka goes through one :class:`Cluster`: it starts the repo's
real Apache Kafka broker (``scripts/kafka_broker.py``) unless a bootstrap address is given,
serves the in-process development Schema Registry, creates topics with ``AdminClient``, produces
the fixed data set, and reads end offsets, committed offsets, group membership and output
topics. Child processes are started through :func:`spawn`, which ties them to the harness's
life (SIGKILL when the harness dies) and :func:`terminate` stops them.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import (
    Consumer,
    ConsumerGroupState,
    ConsumerGroupTopicPartitions,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # NewTopic: re-exported, not declared
    AdminClient,
    NewTopic,
)

from bench.baselines.common import ConfluentAvroDecoder, event_time_ms
from scripts.kafka_broker import KAFKA_VERSION, KafkaBroker
from stream_scorer.devtools.devregistry import DevSchemaRegistry
from stream_scorer.devtools.generate import TransactionGenerator
from stream_scorer.devtools.loadgen import EventEncoder
from stream_scorer.settings import load_settings

__all__ = [
    "REPO",
    "Alerts",
    "Cluster",
    "Dataset",
    "LatencySample",
    "spawn",
    "tail",
    "terminate",
    "write_scorer_config",
]

#: Repository root: subprocesses run here so relative paths (models/, schemas/) resolve.
REPO = Path(__file__).resolve().parent.parent
#: Timeout of admin calls against the local broker.
ADMIN_TIMEOUT_S = 30.0
#: Linux prctl option: signal sent to a child when its parent dies.
PR_SET_PDEATHSIG = 1
#: Grace period for a contender to finish its batch, commit and leave the group on SIGTERM.
TERMINATE_GRACE_S = 20.0
#: Events generated and encoded per chunk while producing the data set.
PRODUCE_CHUNK = 10_000
#: Kafka timestamp type of a message stamped by the broker (``LogAppendTime``).
TIMESTAMP_LOG_APPEND_TIME = 2
#: Producer settings for the pre-produced data set: large batches, the scorer's compression.
DATASET_PRODUCER: dict[str, Any] = {
    "linger.ms": 50,
    "batch.size": 1_000_000,
    "compression.type": "lz4",
    "partitioner": "murmur2_random",
    "enable.idempotence": True,
    "queue.buffering.max.messages": 500_000,
}


def _die_with_parent() -> None:
    """Ask the kernel to SIGKILL this child when the harness dies (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _child_env() -> dict[str, str]:
    """The harness's environment without ``STREAM_SCORER_*`` overrides from the caller."""
    return {k: v for k, v in os.environ.items() if not k.upper().startswith("STREAM_SCORER_")}


def spawn(
    argv: Sequence[str],
    log_path: Path,
    cwd: Path = REPO,
    extra_env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in ``cwd`` (the repository root), output to ``log_path``, killed with the
    harness; ``extra_env`` is added to its environment (e.g. another checkout's PYTHONPATH)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            list(argv),
            cwd=cwd,
            env={**_child_env(), **(extra_env or {})},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - only prctl, no locks or threads
        )


def terminate(process: subprocess.Popen[bytes], grace_s: float = TERMINATE_GRACE_S) -> int | None:
    """SIGTERM ``process``, SIGKILL its process group after ``grace_s``; returns its exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(grace_s)
    return process.returncode


def write_scorer_config(
    path: Path,
    bootstrap: str,
    group: str,
    topics: Mapping[str, str],
    registry_url: str,
    batch_size: int,
    metrics_port: int,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    root: Path | None = None,
) -> Path:
    """Write a stream-scorer TOML config: the shipped defaults plus what a run must set.

    ``overrides`` sets further keys by section (for the variant measured beside the default).
    Model and schema paths are absolute, under ``root`` (the repository by default): a
    relative path in a config file resolves against the file's folder, not the working one.
    """
    base = REPO if root is None else root
    sections: dict[str, dict[str, Any]] = {
        "kafka": {"bootstrap_servers": bootstrap, "group_id": group, "client_id": group},
        "topics": dict(topics),
        "schema": {
            "wire_format": "confluent",
            "registry_url": registry_url,
            "reader": str(base / "schemas/transaction.avsc"),
            "alert": str(base / "schemas/alert.avsc"),
        },
        "model": {"path": str(base / "models/fraud/1")},
        "batch": {"max_size": batch_size},
        "metrics": {"host": "127.0.0.1", "port": metrics_port},
        "log": {"level": "warning"},
    }
    for section, values in (overrides or {}).items():
        sections[section] = {**sections.get(section, {}), **values}
    lines = ["# Written by bench/run.py for one benchmark run."]
    for section, values in sections.items():
        lines.append(f"\n[{section}]")
        # JSON strings and numbers are valid TOML basic strings and numbers.
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in values.items())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@dataclass(frozen=True, slots=True)
class Dataset:
    """The pre-produced input topic."""

    topic: str
    events: int
    partitions: int
    seed: int
    fraud_rate: float
    fraud_events: int
    bytes: int
    produce_s: float


@dataclass(frozen=True, slots=True)
class LatencySample:
    """End-to-end latencies of the alerts of one latency run, in milliseconds."""

    latencies_ms: np.ndarray[Any, np.dtype[np.float64]]
    alerts: int
    discarded: int
    non_log_append: int


@dataclass(frozen=True, slots=True)
class Alerts:
    """Every stream-scorer alert of a topic: source event time, broker time, model version."""

    event_ms: list[int]
    stamp_ms: list[int]
    versions: list[str]


class Cluster:
    """Broker, registry and the admin operations the harness needs."""

    def __init__(self, bootstrap: str | None, data_dir: Path) -> None:
        """Start the repo's broker in ``data_dir`` (fresh) unless ``bootstrap`` is given.

        Also starts the in-process development Schema Registry.
        """
        self.broker: KafkaBroker | None = None
        if bootstrap is None:
            shutil.rmtree(data_dir, ignore_errors=True)  # a fresh log every run: no stale topics
            self.broker = KafkaBroker(data_dir, die_with_parent=True)
            self.broker.fetch()
            self.broker.start()
            bootstrap = self.broker.bootstrap_servers
        self.bootstrap = bootstrap
        self.kafka_version = KAFKA_VERSION if self.broker is not None else "external"
        self.registry = DevSchemaRegistry()
        self.registry_url = self.registry.url
        self.admin = AdminClient({"bootstrap.servers": bootstrap})
        self._watermarks = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": "bench-harness-watermarks"}
        )

    def close(self) -> None:
        """Stop the registry and, when the harness started it, the broker."""
        with contextlib.suppress(RuntimeError, KafkaException):
            self._watermarks.close()
        del self.admin  # released before the broker stops, so it logs no reconnect errors
        self.registry.close()
        if self.broker is not None:
            self.broker.stop()

    # -- topics and offsets

    def create_topic(self, name: str, partitions: int, log_append_time: bool = False) -> str:
        """Create ``name``; ``log_append_time`` makes the broker stamp each message's time."""
        config = {"message.timestamp.type": "LogAppendTime"} if log_append_time else {}
        futures = self.admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config)],
            operation_timeout=ADMIN_TIMEOUT_S,
        )
        futures[name].result(ADMIN_TIMEOUT_S)
        deadline = time.monotonic() + ADMIN_TIMEOUT_S
        while len(self.partitions(name)) < partitions:  # metadata propagates asynchronously
            if time.monotonic() > deadline:
                msg = f"topic {name} did not appear"
                raise TimeoutError(msg)
            time.sleep(0.1)
        return name

    def partitions(self, topic: str) -> list[int]:
        """Partition ids of ``topic`` (empty when it does not exist yet)."""
        metadata = self._watermarks.list_topics(topic, timeout=ADMIN_TIMEOUT_S)
        found = metadata.topics.get(topic)
        if found is None or found.error is not None:
            return []
        return sorted(found.partitions)

    def end_offsets(self, topic: str) -> dict[int, int]:
        """High watermark per partition."""
        return {
            p: self._watermarks.get_watermark_offsets(
                TopicPartition(topic, p), timeout=ADMIN_TIMEOUT_S
            )[1]
            for p in self.partitions(topic)
        }

    def committed(self, group: str, topic: str, partitions: Sequence[int]) -> int:
        """Sum over ``partitions`` of ``group``'s committed offsets (a missing one counts 0)."""
        request = ConsumerGroupTopicPartitions(
            group, [TopicPartition(topic, p) for p in partitions]
        )
        futures = self.admin.list_consumer_group_offsets([request], request_timeout=ADMIN_TIMEOUT_S)
        result = futures[group].result(ADMIN_TIMEOUT_S)
        return sum(max(tp.offset, 0) for tp in result.topic_partitions)

    def group_members(self, group: str) -> tuple[int, int]:
        """(members, assigned partitions) of a stable ``group``; (0, 0) while it rebalances."""
        futures = self.admin.describe_consumer_groups([group], request_timeout=ADMIN_TIMEOUT_S)
        try:
            description = futures[group].result(ADMIN_TIMEOUT_S)
        except KafkaException:
            return 0, 0
        if description.state != ConsumerGroupState.STABLE:
            return 0, 0
        assigned = sum(
            len(member.assignment.topic_partitions)
            for member in description.members
            if member.assignment is not None
        )
        return len(description.members), assigned

    # -- data

    def produce_dataset(
        self, topic: str, events: int, partitions: int, seed: int, fraud_rate: float
    ) -> Dataset:
        """Create ``topic`` and fill it with ``events`` synthetic transactions, keyed by card.

        Confluent wire format, writer schema registered under ``<topic>-value``.
        """
        self.create_topic(topic, partitions)
        settings = load_settings(
            None,
            {
                "kafka": {"bootstrap_servers": self.bootstrap},
                "topics": {"input": topic, "alerts": f"{topic}-unused-a", "dead_letter": "x"},
                "schema": {"wire_format": "confluent", "registry_url": self.registry_url},
            },
            environ={},
        )
        encoder = EventEncoder(settings)
        generator = TransactionGenerator(seed=seed, fraud_rate=fraud_rate)
        producer = Producer({**DATASET_PRODUCER, "bootstrap.servers": self.bootstrap})
        started = time.perf_counter()
        produced = fraud = size = 0
        while produced < events:
            batch, labels = generator.generate(min(PRODUCE_CHUNK, events - produced))
            fraud += int(labels.sum())
            for event in batch:
                value = encoder.encode(event)
                size += len(value)
                while True:
                    try:
                        producer.produce(topic, key=event["card_id"].encode(), value=value)
                        break
                    except BufferError:
                        producer.poll(0.05)  # local queue full: serve deliveries, then retry
            produced += len(batch)
            producer.poll(0)
        if producer.flush(120):
            msg = "data set not fully acknowledged"
            raise KafkaException(msg)
        elapsed = time.perf_counter() - started
        del producer  # no client may outlive the broker: it would log reconnect errors
        written = sum(self.end_offsets(topic).values())
        if written != events:
            msg = f"{topic} holds {written} messages, expected {events}"
            raise RuntimeError(msg)
        return Dataset(topic, events, partitions, seed, fraud_rate, fraud, size, elapsed)

    def read_latencies(
        self, topic: str, warmup_until_ms: int, timeout_s: float = 120.0
    ) -> LatencySample:
        """Alert broker time (``LogAppendTime``) minus source ``event_time`` of every alert.

        Alerts are Confluent-framed Avro (stream-scorer, schema from the registry) or JSON (the
        baselines). Alerts of events older than ``warmup_until_ms`` are discarded.
        """
        ends = self.end_offsets(topic)
        decoder = ConfluentAvroDecoder(self.registry_url)
        latencies: list[float] = []
        discarded = non_log_append = alerts = 0
        for message in self._read_all(topic, ends, timeout_s):
            value = message.value()
            if value is None:
                continue
            alerts += 1
            record = decoder.decode(value) if value[:1] == b"\x00" else json.loads(value)
            event_ms = event_time_ms(record["event_time"])
            kind, stamp_ms = message.timestamp()
            if kind != TIMESTAMP_LOG_APPEND_TIME:
                non_log_append += 1
            if event_ms < warmup_until_ms:
                discarded += 1
                continue
            latencies.append(float(stamp_ms - event_ms))
        return LatencySample(
            np.asarray(latencies, dtype=np.float64), alerts, discarded, non_log_append
        )

    def read_alerts(self, topic: str, timeout_s: float = 120.0) -> Alerts:
        """Source ``event_time``, broker timestamp and ``model_version`` of every alert.

        stream-scorer alerts only (Confluent-framed Avro, schema from the registry); a message
        that is not one is an error, since the phases that read this run stream-scorer alone.
        """
        ends = self.end_offsets(topic)
        decoder = ConfluentAvroDecoder(self.registry_url)
        alerts = Alerts([], [], [])
        for message in self._read_all(topic, ends, timeout_s):
            value = message.value()
            if value is None or value[:1] != b"\x00":
                msg = f"{topic}: offset {message.offset()} is not a Confluent-framed alert"
                raise ValueError(msg)
            record = decoder.decode(value)
            alerts.event_ms.append(event_time_ms(record["event_time"]))
            alerts.stamp_ms.append(int(message.timestamp()[1]))
            alerts.versions.append(str(record["model_version"]))
        return alerts

    def count_messages(self, topic: str) -> int:
        """Messages in ``topic`` (sum of high watermarks; no compaction or deletion here)."""
        return sum(self.end_offsets(topic).values())

    def _read_all(self, topic: str, ends: Mapping[int, int], timeout_s: float) -> Iterator[Any]:
        """Every message of ``topic`` up to ``ends``."""
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"bench-reader-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
            }
        )
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        remaining = {p for p, end in ends.items() if end > 0}
        deadline = time.monotonic() + timeout_s
        try:
            while remaining and time.monotonic() < deadline:
                for message in consumer.consume(1000, timeout=0.5):
                    if message.error() is not None:
                        continue
                    yield message
                    partition = int(message.partition() or 0)
                    if int(message.offset() or 0) + 1 >= ends[partition]:
                        remaining.discard(partition)
        finally:
            consumer.close()


def tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file."""
    try:
        with path.open("rb") as fh:
            text = fh.read().decode(errors="replace")
    except OSError:
        return "<no log>"
    return "\n".join(text.splitlines()[-lines:])
