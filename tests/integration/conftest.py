"""Fixtures for tests that need a real Kafka broker.

The session uses ``KAFKA_BOOTSTRAP_SERVERS`` when set; otherwise it fetches and starts the
repository's own Apache Kafka broker (``scripts/kafka_broker.py``) in a temporary data dir on
free ports. If that broker cannot start, the fixtures fail loudly: nothing here skips.
Every test under ``tests/integration/`` is marked ``integration``.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from scripts.kafka_broker import KafkaBroker

from .helpers import stream_topics

REPO_ROOT = Path(__file__).resolve().parents[2]

__all__ = ["MakeTopic"]

# Environment variable naming an external cluster to test against instead of our broker.
BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP_SERVERS"
# Deadline for a topic creation/deletion to show up in (or vanish from) the metadata.
TOPIC_TIMEOUT_S = 30.0
# Poll interval while waiting on metadata.
POLL_INTERVAL_S = 0.1
# This directory; items collected below it get the `integration` marker.
INTEGRATION_DIR = Path(__file__).resolve().parent

MakeTopic = Callable[..., str]
"""``make_topic(prefix="t", partitions=1, config=None) -> topic name``."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test collected from ``tests/integration/`` as ``integration``."""
    for item in items:
        if INTEGRATION_DIR in item.path.resolve().parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker | None]:
    """The repository's broker for this session, or None when an external cluster is used."""
    if os.environ.get(BOOTSTRAP_ENV):
        yield None
        return
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka"), die_with_parent=True)
    broker.fetch()
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: KafkaBroker | None) -> str:
    """Bootstrap servers of the cluster under test."""
    if kafka_broker is None:
        return os.environ[BOOTSTRAP_ENV]
    return kafka_broker.bootstrap_servers


@pytest.fixture(scope="session")
def admin(kafka_bootstrap: str) -> AdminClient:
    """An AdminClient on the cluster under test (it reconnects across broker restarts)."""
    return AdminClient({"bootstrap.servers": kafka_bootstrap})


def wait_for_topics(
    admin: AdminClient, topics: set[str], *, present: bool, timeout_s: float = TOPIC_TIMEOUT_S
) -> None:
    """Wait until all ``topics`` are (or none are) in the metadata, with a deadline.

    Args:
        admin: Admin client.
        topics: Topic names.
        present: Wait for presence (with leaders for every partition) or for absence.
        timeout_s: Deadline in seconds.

    Raises:
        TimeoutError: The metadata did not converge in time.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        metadata = admin.list_topics(timeout=max(1.0, deadline - time.monotonic()))
        if present:
            done = all(
                name in metadata.topics
                and metadata.topics[name].error is None
                and metadata.topics[name].partitions
                and all(p.leader >= 0 for p in metadata.topics[name].partitions.values())
                for name in topics
            )
        else:
            done = not topics & set(metadata.topics)
        if done:
            return
        if time.monotonic() >= deadline:
            state = "appear" if present else "disappear"
            msg = f"topics {sorted(topics)} did not {state} within {timeout_s:.0f} s"
            raise TimeoutError(msg)
        time.sleep(POLL_INTERVAL_S)


@pytest.fixture
def make_topic(admin: AdminClient) -> Iterator[MakeTopic]:
    """Factory creating uniquely named topics, deleted after the test."""
    created: list[str] = []

    def _make(prefix: str = "t", partitions: int = 1, config: dict[str, str] | None = None) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        topic = NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})
        admin.create_topics([topic], request_timeout=TOPIC_TIMEOUT_S)[name].result(
            timeout=TOPIC_TIMEOUT_S
        )
        created.append(name)
        wait_for_topics(admin, {name}, present=True)
        return name

    yield _make
    if created:
        for future in admin.delete_topics(created, request_timeout=TOPIC_TIMEOUT_S).values():
            future.result(timeout=TOPIC_TIMEOUT_S)
        wait_for_topics(admin, set(created), present=False)


@pytest.fixture
def topics(make_topic: MakeTopic) -> dict[str, str]:
    """Fresh input (4 partitions), alert (4) and dead-letter (1) topics. A module that needs
    another shape defines its own ``topics`` fixture."""
    return stream_topics(make_topic)
