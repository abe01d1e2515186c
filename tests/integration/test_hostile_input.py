"""Hostile input through the service on the real broker (issue 12, findings 1 and 2).

The review's scenarios, as it ran them: a real `stream-scorer run` process, Confluent framing
through a Schema Registry, 2,000 good events with, among them, 20 small messages whose writer
schema has one extra array-of-null field declaring millions of zero-byte items (they stalled
3 of 4 partitions for hours), and 5 events whose writer schema is nested 2,000 records deep (it
crashed the process in a loop with nothing committed). Now every good event is scored, every
hostile one dead-lettered with its reason, and every offset committed, quickly.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import fastavro
import pytest

from stream_scorer.app import load_schema
from stream_scorer.decode import frame_body
from stream_scorer.devtools.devregistry import DevSchemaRegistry

from .helpers import (
    REPO,
    committed_offsets,
    end_offsets,
    produce_values,
    read_topic,
    stream_topics,
    wait_until,
)
from .scorer_process import ScorerProcess, base_config, make_events

pytestmark = [pytest.mark.integration, pytest.mark.slow]

READER = load_schema(REPO / "schemas/transaction.avsc", "reader")
PARSED = fastavro.parse_schema(READER)
#: 60 blocks of 65,536 null items (3 bytes a block header), then the end of the array.
PILL_TAIL = b"\x80\x80\x08" * 60 + b"\x00"
#: Far below the hours the review saw; the whole run, join and model load included.
COMMIT_WITHIN_S = 90
DEEP_ID = 900


def _deep_schema_text(levels: int) -> str:
    text = '"int"'
    for i in range(levels):
        text = f'{{"type":"record","name":"R{i}","fields":[{{"name":"f","type":{text}}}]}}'
    return text


def _body(event: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, PARSED, event)
    return buffer.getvalue()


def test_poison_pills_and_deep_schemas_are_dead_lettered_and_everything_commits(
    kafka_bootstrap: str, make_topic: Any, tmp_path: Path
) -> None:
    """20 zero-byte-item pills and 5 deep-schema events among 2,000 good ones: all offsets
    committed within the bound, 25 dead letters naming the item budget or the schema, the
    process still running (no crash loop) and stopping cleanly."""
    topics = stream_topics(make_topic)
    with DevSchemaRegistry() as registry:
        good_id = registry.add(f"{topics['input']}-value", READER)
        pad = {"name": "pad", "type": {"type": "array", "items": "null"}}
        poison_id = registry.add("poison-value", {**READER, "fields": [*READER["fields"], pad]})
        # Stored as text: it cannot even be built as a Python dict without recursion.
        registry._state.schemas[DEEP_ID] = _deep_schema_text(2_000)
        events = make_events(2_000, seed=41)
        messages: list[tuple[bytes | None, bytes | None]] = [
            (e["card_id"].encode(), frame_body("confluent", _body(e), good_id)) for e in events
        ]
        for k in range(20):
            body = _body(events[k]) + PILL_TAIL
            messages.insert(50 + k * 97, (b"pill", frame_body("confluent", body, poison_id)))
        for k in range(5):
            messages.insert(30 + k * 311, (b"deep", frame_body("confluent", b"\x02", DEEP_ID)))
        produce_values(kafka_bootstrap, topics["input"], messages)
        config = base_config(
            kafka_bootstrap,
            topics,
            schema={"wire_format": "confluent", "registry_url": registry.url},
        )
        scorer = ScorerProcess(tmp_path, config)
        try:
            ends = end_offsets(kafka_bootstrap, topics["input"])
            group = config["kafka"]["group_id"]
            wait_until(
                lambda: (
                    not scorer.alive()
                    or committed_offsets(kafka_bootstrap, group, topics["input"]) == ends
                ),
                COMMIT_WITHIN_S,
                "every offset to be committed",
            )
            assert scorer.alive(), f"the scorer died:\n{scorer.tail()}"
            scorer.terminate()
            assert scorer.wait() == 0
        finally:
            scorer.close()

    dead = read_topic(kafka_bootstrap, topics["dead_letter"])
    assert len(dead) == 25
    reasons = [dict(m.headers() or [])["error.message"].decode() for m in dead]
    keys = [m.key() for m in dead]
    assert keys.count(b"pill") == 20 and keys.count(b"deep") == 5
    for key, reason in zip(keys, reasons, strict=True):
        if key == b"pill":
            assert "item" in reason and "_ITEMS)" in reason, reason  # the item budgets
        else:
            assert "schema" in reason, reason
    consumed = sum(r.get("consumed", 0) for r in scorer.logged("stopped"))
    assert consumed == 2_025
