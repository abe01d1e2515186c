"""The synthetic event producer behind ``stream-scorer produce`` and the demo.

Produces :class:`~stream_scorer.devtools.generate.TransactionGenerator` events, Avro-encoded in the
configured wire format (registering the writer schema when it is Confluent's), keyed by card id,
at a steady rate. Event time is the moment of sending, so the scorer's end-to-end latency is
measured from it. An optional fraction of deliberately corrupt messages exercises the
dead-letter path.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import fastavro
import numpy as np
import structlog
from confluent_kafka import KafkaException, Producer

from stream_scorer.app import load_schema
from stream_scorer.decode import frame_body
from stream_scorer.delivery.publish import producer_config
from stream_scorer.devtools.generate import TransactionGenerator
from stream_scorer.registry import SchemaRegistryClient
from stream_scorer.settings import Settings

__all__ = ["EventEncoder", "produce_events"]

log = structlog.get_logger(__name__)

#: Events generated per chunk; pacing happens between chunks of this many / 10 ms slices.
CHUNK = 1000
#: Pacing resolution: the producer sleeps until the next slice is due (pacing, not a wait).
SLICE_S = 0.01
#: Bytes of a corrupt message: not Avro in any wire format.
CORRUPT_VALUE = b"\xde\xad\xbe\xef not an avro event"


class EventEncoder:
    """Encodes transaction dicts in one wire format."""

    def __init__(self, settings: Settings, schema: Mapping[str, Any] | None = None) -> None:
        """Parse the writer schema; register it when the wire format is Confluent's."""
        raw = dict(schema or load_schema(settings.schema_.reader, "schema.reader"))
        self._schema = fastavro.parse_schema(raw)
        fmt = settings.schema_.wire_format
        schema_id = 0
        if fmt == "confluent":
            url = settings.schema_.registry_url
            assert url is not None  # noqa: S101 - the settings validator requires it
            schema_id = SchemaRegistryClient(url).register(f"{settings.topics.input}-value", raw)
        self._header = frame_body(fmt, b"", schema_id=schema_id, schema=raw)

    def encode(self, event: Mapping[str, Any]) -> bytes:
        """Framed Avro bytes of one event."""
        buffer = io.BytesIO()
        buffer.write(self._header)
        fastavro.schemaless_writer(buffer, self._schema, event)
        return buffer.getvalue()


def produce_events(
    settings: Settings,
    rate: float,
    count: int | None,
    seed: int = 7,
    fraud_rate: float = 0.01,
    corrupt_rate: float = 0.0,
    stop: threading.Event | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Produce synthetic events to ``topics.input`` until ``count`` or ``stop``.

    Args:
        settings: Cluster, topic and wire format.
        rate: Events per second; 0 or less means as fast as possible.
        count: How many; None for no limit.
        seed: Generator seed.
        fraud_rate: Share of fraudulent events.
        corrupt_rate: Share of messages replaced by undecodable bytes.
        stop: Set to end early.
        on_progress: Called with the running total after each slice.

    Returns:
        Events produced (and acknowledged).
    """
    encoder = EventEncoder(settings)
    generator = TransactionGenerator(seed=seed, fraud_rate=fraud_rate)
    rng = np.random.default_rng(seed + 1)
    config = producer_config(settings.kafka.client_config(), settings.kafka.producer)
    producer = Producer(config)
    topic = settings.topics.input
    produced = 0
    start = time.monotonic()
    per_slice = max(1, int(rate * SLICE_S)) if rate > 0 else CHUNK
    pending: list[dict[str, Any]] = []
    while (count is None or produced < count) and not (stop is not None and stop.is_set()):
        if not pending:
            pending, _ = generator.generate(CHUNK)
        n = min(per_slice, len(pending), (count - produced) if count is not None else per_slice)
        now_ms = time.time_ns() // 1_000_000
        for event in pending[:n]:
            event["event_time"] = now_ms
            value = CORRUPT_VALUE if corrupt_rate and rng.random() < corrupt_rate else None
            _produce(producer, topic, event["card_id"].encode(), value or encoder.encode(event))
        del pending[:n]
        produced += n
        producer.poll(0)
        if on_progress is not None:
            on_progress(produced)
        if rate > 0:
            due = start + produced / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    remaining = producer.flush(30)
    if remaining:
        msg = f"{remaining} events not acknowledged"
        raise KafkaException(msg)
    return produced


def _produce(producer: Producer, topic: str, key: bytes, value: bytes) -> None:
    while True:
        try:
            producer.produce(topic, value=value, key=key)
        except BufferError:
            producer.poll(0.05)  # local queue full: serve deliveries, then retry
            continue
        return
