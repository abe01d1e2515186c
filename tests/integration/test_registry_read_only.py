"""End to end on the real broker with a Schema Registry that forbids client registration."""

from __future__ import annotations

import io
import struct
from typing import Any

import fastavro

from stream_scorer.app import load_schema
from stream_scorer.decode import frame_body
from stream_scorer.devtools.devregistry import DevSchemaRegistry
from stream_scorer.devtools.generate import TransactionGenerator

from .helpers import (
    REPO,
    RunningScorer,
    committed_offsets,
    end_offsets,
    produce_values,
    read_topic,
    scorer_settings,
)

READER = load_schema(REPO / "schemas/transaction.avsc", "reader")
ALERT = load_schema(REPO / "schemas/alert.avsc", "alert")


def encode(schema_id: int, parsed: Any, event: dict[str, Any]) -> bytes:
    """One event, Confluent-framed with ``schema_id``."""
    buffer = io.BytesIO(frame_body("confluent", b"", schema_id=schema_id))
    buffer.seek(0, io.SEEK_END)
    fastavro.schemaless_writer(buffer, parsed, event)
    return buffer.getvalue()


def test_auto_register_off_scores_against_a_read_only_registry(
    kafka_bootstrap: str, topics: dict[str, str]
) -> None:
    """A read-only registry where an operator registered both schemas: the scorer starts with
    auto_register = false, frames every alert with the operator's alert schema id, and
    commits everything, without registering anything."""
    with DevSchemaRegistry(read_only=True) as registry:
        input_id = registry.add(f"{topics['input']}-value", READER)
        alert_id = registry.add(f"{topics['alerts']}-value", ALERT)
        settings = scorer_settings(
            kafka_bootstrap, topics, registry.url, schema={"auto_register": False}
        )
        events, _ = TransactionGenerator(seed=2026).generate(5_000)
        parsed = fastavro.parse_schema(READER)
        produce_values(
            kafka_bootstrap,
            topics["input"],
            ((e["card_id"].encode(), encode(input_id, parsed, e)) for e in events),
        )

        scorer = RunningScorer(settings)
        scorer.wait_caught_up(topics["input"])
        assert scorer.stop() == 0

    alerts = read_topic(kafka_bootstrap, topics["alerts"])
    assert alerts, "the fixed seed flags some events"
    framed_ids = {struct.unpack_from(">I", m.value() or b"", 1)[0] for m in alerts}
    assert framed_ids == {alert_id}
    assert alert_id != input_id
    assert read_topic(kafka_bootstrap, topics["dead_letter"]) == []
    assert committed_offsets(
        kafka_bootstrap, settings.kafka.group_id, topics["input"]
    ) == end_offsets(kafka_bootstrap, topics["input"])
