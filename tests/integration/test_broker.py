"""Smoke tests of the real Kafka broker harness (scripts/kafka_broker.py)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer

from scripts.kafka_broker import KafkaBroker

# `make_topic` fixture: make_topic(prefix="t", partitions=1, config=None) -> topic name.
MakeTopic = Callable[..., str]
# Deadline for a produced message to be acknowledged or consumed.
DEADLINE_S = 30.0


def produce(bootstrap: str, topic: str, key: bytes, value: bytes) -> None:
    """Produce one message and wait for its delivery report.

    Args:
        bootstrap: Bootstrap servers.
        topic: Topic name.
        key: Message key.
        value: Message value.
    """
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            errors.append(err)

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
    assert producer.flush(DEADLINE_S) == 0, "delivery not acknowledged before the deadline"
    assert not errors, errors


def consume_one(bootstrap: str, topic: str) -> Message:
    """Consume the first message of ``topic`` with a fresh consumer group.

    Args:
        bootstrap: Bootstrap servers.
        topic: Topic name.

    Returns:
        The message.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex[:12]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            return msg
        pytest.fail(f"no message on {topic} within {DEADLINE_S:.0f} s")
    finally:
        consumer.close()


def test_produce_consume_round_trip(kafka_bootstrap: str, make_topic: MakeTopic) -> None:
    """A message produced to a fresh topic is consumed back unchanged."""
    topic = make_topic("roundtrip")
    produce(kafka_bootstrap, topic, b"k1", b"hello")

    msg = consume_one(kafka_bootstrap, topic)

    assert (msg.key(), msg.value(), msg.offset()) == (b"k1", b"hello", 0)


def test_data_survives_broker_restart(
    kafka_broker: KafkaBroker | None, kafka_bootstrap: str, make_topic: MakeTopic
) -> None:
    """A message produced before a broker stop+start is still there afterwards."""
    if kafka_broker is None:
        pytest.skip("restarting needs the repository's broker, not KAFKA_BOOTSTRAP_SERVERS")
    topic = make_topic("restart")
    produce(kafka_bootstrap, topic, b"k", b"durable")

    kafka_broker.stop()
    try:
        assert not kafka_broker.is_running()
    finally:
        kafka_broker.start()  # the session broker must be up again for later tests

    msg = consume_one(kafka_bootstrap, topic)
    assert (msg.key(), msg.value()) == (b"k", b"durable")
