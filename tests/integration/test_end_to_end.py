"""End to end on the real broker: events in, alerts equal to offline scoring, dead letters out."""

from __future__ import annotations

import io
import json
import math
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastavro
import pytest
from confluent_kafka import Message

from stream_scorer.app import load_model, load_schema
from stream_scorer.decode import frame_body
from stream_scorer.devtools.devregistry import DevSchemaRegistry
from stream_scorer.devtools.generate import TransactionGenerator
from stream_scorer.devtools.loadgen import EventEncoder
from stream_scorer.offline import score_events, score_file
from stream_scorer.registry import SchemaRegistryClient
from stream_scorer.settings import Settings

from .helpers import (
    REPO,
    RunningScorer,
    committed_offsets,
    end_offsets,
    produce_values,
    read_topic,
    scorer_settings,
)

ALERT_SCHEMA = fastavro.parse_schema(load_schema(REPO / "schemas/alert.avsc", "alert"))
READER = load_schema(REPO / "schemas/transaction.avsc", "reader")


@pytest.fixture
def registry_url() -> Iterator[str]:
    """An in-process development Schema Registry."""
    with DevSchemaRegistry() as registry:
        yield registry.url


def decode_alert(message: Message) -> dict[str, Any]:
    """The alert record of a Confluent-framed alert message."""
    value = message.value()
    assert value is not None
    assert value[0] == 0, "alerts are framed in the Confluent wire format"
    return fastavro.schemaless_reader(io.BytesIO(value[5:]), ALERT_SCHEMA, None)  # type: ignore[return-value]


def offline_reference(settings: Settings, events: list[dict[str, Any]]) -> dict[str, Any]:
    """Offline scores by event id, via the same settings the stream uses."""
    model = load_model(settings, READER)
    return {r["event_id"]: r for r in score_events(events, model, settings.batch.max_size)}


def test_alerts_are_exactly_the_offline_flagged_events(
    kafka_bootstrap: str, topics: dict[str, str], registry_url: str, tmp_path: Path
) -> None:
    """20,000 events in: the alert topic holds exactly the events score-file flags, with equal
    scores, the source key and lineage to the source offset; offsets committed to the end."""
    settings = scorer_settings(kafka_bootstrap, topics, registry_url)
    events, _ = TransactionGenerator(seed=2024).generate(20_000)
    encoder = EventEncoder(settings)
    produce_values(
        kafka_bootstrap,
        topics["input"],
        ((e["card_id"].encode(), encoder.encode(e)) for e in events),
    )
    # The offline reference goes through score-file's own path: an Avro container file.
    container = tmp_path / "events.avro"
    with container.open("wb") as fh:
        fastavro.writer(fh, fastavro.parse_schema(READER), events)
    scores_path = tmp_path / "scores.jsonl"
    counts = score_file(
        container, load_model(settings, READER), settings.batch.max_size, scores_path
    )
    offline = [json.loads(line) for line in scores_path.read_text().splitlines()]
    expected = {r["event_id"]: r["score"] for r in offline if r["flagged"]}
    assert counts["events"] == 20_000
    assert 20 < len(expected) < 2_000, "the fixed seed gives a realistic alert rate"

    scorer = RunningScorer(settings)
    scorer.wait_caught_up(topics["input"])
    assert scorer.stop() == 0

    alerts = read_topic(kafka_bootstrap, topics["alerts"])
    decoded = [decode_alert(m) for m in alerts]
    assert sorted(a["event_id"] for a in decoded) == sorted(expected)
    inputs = {(m.partition(), m.offset()): m for m in read_topic(kafka_bootstrap, topics["input"])}
    card_by_id = {e["transaction_id"]: e["card_id"] for e in events}
    for message, alert in zip(alerts, decoded, strict=True):
        # Equal up to float32 summation order: onnxruntime's two intra-op threads split a
        # batch differently when the stream's batches differ from the offline ones.
        assert alert["score"] == pytest.approx(expected[alert["event_id"]], abs=1e-6)
        assert alert["score"] >= alert["threshold"]
        assert message.key() == card_by_id[alert["event_id"]].encode()
        source = inputs[(alert["source_partition"], alert["source_offset"])]
        assert alert["source_topic"] == topics["input"]
        assert source.key() == message.key(), "lineage points at the source event"
        assert alert["model_name"] == "fraud" and alert["model_version"] == "1"
        headers = dict(message.headers() or [])
        assert headers["source.offset"] == str(alert["source_offset"]).encode()
    assert read_topic(kafka_bootstrap, topics["dead_letter"]) == []
    assert committed_offsets(
        kafka_bootstrap, settings.kafka.group_id, topics["input"]
    ) == end_offsets(kafka_bootstrap, topics["input"])
    registry = scorer.registry
    assert (
        registry.get_sample_value(
            "stream_scorer_records_consumed_total", {"topic": topics["input"]}
        )
        == 20_000
    )
    assert registry.get_sample_value(
        "stream_scorer_records_flagged_total", {"model_name": "fraud", "model_version": "1"}
    ) == len(expected)


def evolved_schema() -> dict[str, Any]:
    """Writer schema v2: adds ``loyalty_tier`` and drops ``is_new_device`` (reader default)."""
    schema = json.loads(json.dumps(READER))
    schema["fields"] = [f for f in schema["fields"] if f["name"] != "is_new_device"]
    schema["fields"].append({"name": "loyalty_tier", "type": "string", "default": "none"})
    # Promotion: the writer sends txn_count_1h as int; mcc written as int stays int.
    return schema


def test_mixed_input_scores_the_valid_and_dead_letters_the_rest(
    kafka_bootstrap: str, topics: dict[str, str], registry_url: str
) -> None:
    """Garbage, truncated Avro, an unknown schema id and a NaN amount go to the dead-letter topic
    with their original bytes and a reason; valid events, including ones written with an evolved
    schema, are scored as offline scoring says; the loop never stops."""
    settings = scorer_settings(kafka_bootstrap, topics, registry_url)
    encoder = EventEncoder(settings)
    v2 = evolved_schema()
    v2_id = SchemaRegistryClient(registry_url).register(f"{topics['input']}-value", v2)
    v2_parsed = fastavro.parse_schema(v2)
    events, _ = TransactionGenerator(seed=99).generate(3_000)
    messages: list[tuple[bytes | None, bytes | None]] = []
    valid: list[dict[str, Any]] = []
    bad: dict[bytes, str] = {}
    for i, event in enumerate(events):
        key = event["card_id"].encode()
        good = encoder.encode(event)
        if i % 100 == 1:
            value = b"\x07garbage, not avro at all " + str(i).encode()
            bad[value] = "decode"
        elif i % 100 == 2:
            value = good[: len(good) // 2]
            bad[value] = "decode"
        elif i % 100 == 3:
            value = struct.pack(">bI", 0, 987_654) + good[5:]
            bad[value] = "decode"
        elif i % 100 == 4:
            value = encoder.encode({**event, "amount": math.nan})
            bad[value] = "featurize"
        elif i % 100 == 5:
            body = io.BytesIO()
            fastavro.schemaless_writer(body, v2_parsed, {**event, "loyalty_tier": "gold"})
            value = frame_body("confluent", body.getvalue(), schema_id=v2_id)
            valid.append({**event, "is_new_device": False})  # the reader's default
        else:
            value = good
            valid.append(event)
        messages.append((key, value))
    produce_values(kafka_bootstrap, topics["input"], messages)
    expected = offline_reference(settings, valid)

    scorer = RunningScorer(settings)
    scorer.wait_caught_up(topics["input"])
    assert scorer.thread.is_alive(), "bad input never stops the loop"
    assert scorer.stop() == 0

    alerts = {
        a["event_id"]: a for a in map(decode_alert, read_topic(kafka_bootstrap, topics["alerts"]))
    }
    flagged = {i: r["score"] for i, r in expected.items() if r["flagged"]}
    assert {i: a["score"] for i, a in alerts.items()} == flagged
    dead = read_topic(kafka_bootstrap, topics["dead_letter"])
    assert len(dead) == len(bad)
    for message in dead:
        headers = dict(message.headers() or [])
        assert message.value() in bad, "dead letters keep the original bytes"
        assert headers["error.stage"].decode() == bad[message.value()]
        assert headers["error.message"], "every dead letter says why"
        assert headers["source.topic"].decode() == topics["input"]
        assert int(headers["source.offset"]) >= 0
    reasons = b" ".join(dict(m.headers() or [])["error.message"] for m in dead)
    assert b"unknown schema id 987654" in reasons
    assert b"is not finite" in reasons
    assert committed_offsets(
        kafka_bootstrap, settings.kafka.group_id, topics["input"]
    ) == end_offsets(kafka_bootstrap, topics["input"])
