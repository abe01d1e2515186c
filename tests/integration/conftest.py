"""Fixtures for tests that need a real Kafka broker.

The session uses ``KAFKA_BOOTSTRAP_SERVERS`` when set; otherwise it fetches and starts the
repository's own Apache Kafka broker (``scripts/kafka_broker.py``) in a temporary data dir on
free ports. If that broker cannot start, the fixtures fail loudly: nothing here skips.
Every test under ``tests/integration/`` is marked ``integration``.

Tests of TLS and SASL use :func:`secure_kafka`, a second session broker started only when such
a test runs (always the repository's own, whatever ``KAFKA_BOOTSTRAP_SERVERS`` says): besides
PLAINTEXT it serves SSL and SASL_SSL (SCRAM-SHA-512), with a CA and a broker certificate this
session generates and one SCRAM user created when its storage is formatted.
"""

from __future__ import annotations

import os
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from scripts.kafka_broker import KafkaBroker, TlsFiles, generate_tls_files

from .helpers import stream_topics

REPO_ROOT = Path(__file__).resolve().parents[2]

__all__ = ["MakeTopic", "SecureKafka"]

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


@dataclass(frozen=True)
class SecureKafka:
    """The session's secured broker: its three client listeners and the credentials."""

    broker: KafkaBroker
    tls: TlsFiles
    username: str
    """The SCRAM-SHA-512 user created at format time."""
    password: str
    """That user's password (random per session)."""

    @property
    def plaintext(self) -> str:
        """PLAINTEXT listener: the tests' own producers, readers and admin use it."""
        return self.broker.bootstrap_servers

    @property
    def ssl(self) -> str:
        """SSL listener (server-authenticated TLS)."""
        return self.broker.bootstrap_ssl

    @property
    def sasl_ssl(self) -> str:
        """SASL_SSL listener (SCRAM-SHA-512 inside TLS)."""
        return self.broker.bootstrap_sasl_ssl


@pytest.fixture(scope="session")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureKafka]:
    """A second broker with SSL and SASL_SSL listeners, started for the tests that need it."""
    root = tmp_path_factory.mktemp("kafka-secure")
    tls = generate_tls_files(root / "tls")
    username, password = "scorer", secrets.token_urlsafe(16)
    broker = KafkaBroker(
        root / "data", die_with_parent=True, tls=tls, scram_users={username: password}
    )
    broker.fetch()
    broker.start()
    try:
        yield SecureKafka(broker, tls, username, password)
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def secure_admin(secure_kafka: SecureKafka) -> AdminClient:
    """An AdminClient on the secured broker's PLAINTEXT listener."""
    return AdminClient({"bootstrap.servers": secure_kafka.plaintext})


@pytest.fixture
def make_secure_topic(secure_admin: AdminClient) -> Iterator[MakeTopic]:
    """Like ``make_topic``, on the secured broker."""
    yield from _topic_factory(secure_admin)


@pytest.fixture
def make_topic(admin: AdminClient) -> Iterator[MakeTopic]:
    """Factory creating uniquely named topics, deleted after the test."""
    yield from _topic_factory(admin)


def _topic_factory(admin: AdminClient) -> Iterator[MakeTopic]:
    """Yield a topic factory on ``admin``'s cluster; delete what it made afterwards."""
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
