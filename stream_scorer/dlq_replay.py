"""``stream-scorer dead-letters replay``: dead letters back onto the input topic, after a fix.

Reads the dead-letter topic from its beginning to its current end (assigned, not subscribed: it
joins no group and commits nothing, so it can run beside the service), decrypts payloads that
``privacy.dead_letter_payload = "encrypt"`` sealed (AES-256-GCM, under the key their
``dlq.key_id`` header names; the record's source coordinates are authenticated), and produces
each original value, with its key, to the input topic (or ``--to``). The reason and lineage
headers of the dead letter are dropped; ``replayed.from`` names the dead letter it came from.

A payload that does not decrypt (wrong key, altered, or moved between records) is not replayed:
it is counted and named (topic, partition, offset) and the command exits 1, after replaying the
rest.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from stream_scorer.errors import ConfigurationError, FatalError
from stream_scorer.privacy import ENCRYPTION_HEADER, KEY_ID_HEADER, PayloadCipher
from stream_scorer.records import Header

__all__ = ["ReplayCounts", "replay_dead_letters"]

log = structlog.get_logger(__name__)

#: Headers the scorer added to a dead letter; a replayed event goes back without them.
ADDED_HEADER_PREFIXES = ("error.", "source.", "dlq.")
ADDED_HEADERS = frozenset({"scorer.version"})
#: Longest wait for the dead-letter topic's metadata and for each fetch.
FETCH_TIMEOUT_S = 10.0


@dataclass(slots=True)
class ReplayCounts:
    """What a replay did."""

    read: int = 0
    replayed: int = 0
    refused: int = 0


def _original_headers(headers: list[Header]) -> list[Header]:
    return [
        (name, value)
        for name, value in headers
        if name not in ADDED_HEADERS and not name.startswith(ADDED_HEADER_PREFIXES)
    ]


def _payload(
    message: Message, headers: Mapping[str, bytes | None], ciphers: Mapping[str, PayloadCipher]
) -> bytes | None:
    """The original value of one dead letter.

    Raises:
        ValueError: It is encrypted under a key we lack, or does not decrypt.
    """
    value = message.value()
    if ENCRYPTION_HEADER not in headers or value is None:
        return value
    key_id = (headers.get(KEY_ID_HEADER) or b"").decode("utf-8", errors="replace")
    cipher = ciphers.get(key_id)
    if cipher is None:
        msg = f"encrypted under key id {key_id!r}, which is not configured"
        raise ValueError(msg)
    topic = (headers.get("source.topic") or b"").decode()
    partition = int(headers.get("source.partition") or b"-1")
    offset = int(headers.get("source.offset") or b"-1")
    return cipher.decrypt(value, topic, partition, offset)


def replay_dead_letters(
    client: Mapping[str, Any],
    dead_letter_topic: str,
    target_topic: str,
    ciphers: Mapping[str, PayloadCipher],
    limit: int | None = None,
) -> ReplayCounts:
    """Replay every dead letter (at most ``limit``) onto ``target_topic``.

    Args:
        client: librdkafka connection and security properties (bootstrap, SASL, TLS).
        dead_letter_topic: Where the dead letters are.
        target_topic: Where their original values go (normally the input topic).
        ciphers: Decryption by key id, for encrypted payloads.
        limit: Most dead letters to replay.

    Raises:
        ConfigurationError: The dead-letter topic does not exist.
        FatalError: The cluster cannot be reached or a replayed event was not acknowledged.
    """
    consumer = Consumer({
        **client, "group.id": f"stream-scorer-dlq-replay-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False, "auto.offset.reset": "earliest",
    })  # fmt: skip
    producer = Producer({**client, "enable.idempotence": True, "acks": "all", "linger.ms": 5})
    failures: list[str] = []

    def on_delivery(error: KafkaError | None, message: Message) -> None:
        if error is not None:
            failures.append(str(error))

    counts = ReplayCounts()
    try:
        metadata = consumer.list_topics(dead_letter_topic, timeout=FETCH_TIMEOUT_S)
        topic = metadata.topics.get(dead_letter_topic)
        if topic is None or topic.error is not None:
            msg = f"topics.dead_letter: topic {dead_letter_topic!r} does not exist"
            raise ConfigurationError(msg)
        ends = {
            p: consumer.get_watermark_offsets(
                TopicPartition(dead_letter_topic, p), timeout=FETCH_TIMEOUT_S
            )[1]
            for p in topic.partitions
        }
        consumer.assign([TopicPartition(dead_letter_topic, p, 0) for p in ends])
        positions = dict.fromkeys(ends, 0)
        while any(positions[p] < ends[p] for p in ends):
            if limit is not None and counts.read >= limit:
                break
            for message in consumer.consume(500, timeout=1.0):
                if message.error() is not None:
                    continue
                partition, offset = message.partition(), message.offset()
                assert partition is not None and offset is not None  # noqa: S101 - data message
                positions[partition] = offset + 1
                if offset >= ends[partition] or (limit is not None and counts.read >= limit):
                    continue
                counts.read += 1
                headers: list[Header] = list(message.headers() or [])  # type: ignore[arg-type]
                try:
                    value = _payload(message, dict(headers), ciphers)
                except ValueError as exc:
                    counts.refused += 1
                    log.error(
                        "dead_letter_not_replayed",
                        partition=f"{dead_letter_topic}[{partition}]",
                        offset=offset,
                        reason=str(exc),
                    )
                    continue
                replayed_from = f"{dead_letter_topic}[{partition}]@{offset}".encode()
                producer.produce(
                    target_topic,
                    key=message.key(),
                    value=value,
                    headers=[*_original_headers(headers), ("replayed.from", replayed_from)],
                    on_delivery=on_delivery,
                )
                counts.replayed += 1
                producer.poll(0)
        remaining = producer.flush(30.0)
    finally:
        consumer.close()
    if remaining or failures:
        msg = (
            f"{remaining} replayed events not acknowledged, {len(failures)} failed: {failures[:3]}"
        )
        raise FatalError(msg)
    log.info(
        "dead_letters_replayed",
        read=counts.read,
        replayed=counts.replayed,
        refused=counts.refused,
        to=target_topic,
    )
    return counts
