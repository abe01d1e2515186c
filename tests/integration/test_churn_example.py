"""The churn example end to end on the real broker, by configuration alone.

A second team's schema and model with no code change: churn events written by another Avro
implementation (the ``avro`` package), Confluent-framed against the development registry, are
scored by a scorer built from ``examples/churn.toml`` (only the cluster, registry, group and
topic names changed for the test); the alerts are exactly the events ``score-file`` flags.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import uuid
from pathlib import Path
from typing import Any

import avro.io
import avro.schema
import fastavro
import pytest
from confluent_kafka import Message

from stream_scorer.app import load_model, load_schema
from stream_scorer.decode import frame_body
from stream_scorer.devtools.churn import ChurnGenerator
from stream_scorer.devtools.devregistry import DevSchemaRegistry
from stream_scorer.offline import score_file
from stream_scorer.registry import SchemaRegistryClient
from stream_scorer.settings import Settings, load_settings

from .helpers import (
    REPO,
    RunningScorer,
    committed_offsets,
    end_offsets,
    produce_values,
    read_topic,
)

CONFIG = REPO / "examples" / "churn.toml"
SCHEMA_PATH = REPO / "schemas" / "churn_event.avsc"
ALERT_SCHEMA = fastavro.parse_schema(load_schema(REPO / "schemas/alert.avsc", "alert"))
#: Events produced: at the card's ~3 % flagged rate, about 150 alerts.
N_EVENTS = 5_000


def churn_settings(bootstrap: str, topics: dict[str, str], registry_url: str) -> Settings:
    """examples/churn.toml with the test's cluster, registry, a fresh group and its topics."""
    overrides: dict[str, Any] = {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "group_id": f"it-churn-{uuid.uuid4().hex[:10]}",
            # Tests: join a group fast; production keeps librdkafka's defaults.
            "consumer": {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500},
        },
        "topics": topics,
        "schema": {"registry_url": registry_url},
        "metrics": {"port": 0, "host": "127.0.0.1"},
        "log": {"level": "warning"},
    }
    return load_settings(CONFIG, overrides, environ={})


def avro_package_messages(
    events: list[dict[str, Any]], schema_id: int
) -> list[tuple[bytes, bytes]]:
    """(customer_id key, Confluent-framed value) per event, bodies written by ``avro``."""
    schema = avro.schema.parse(SCHEMA_PATH.read_text(encoding="utf-8"))
    writer = avro.io.DatumWriter(schema)
    messages = []
    for event in events:
        body = io.BytesIO()
        # The avro package takes timestamp-millis as an aware datetime only.
        when = dt.datetime.fromtimestamp(event["event_time"] / 1000, tz=dt.UTC)
        writer.write({**event, "event_time": when}, avro.io.BinaryEncoder(body))
        value = frame_body("confluent", body.getvalue(), schema_id=schema_id)
        messages.append((event["customer_id"].encode(), value))
    return messages


def decode_alert(message: Message) -> dict[str, Any]:
    """The alert record of a Confluent-framed alert message."""
    value = message.value()
    assert value is not None
    assert value[0] == 0, "alerts are framed in the Confluent wire format"
    return fastavro.schemaless_reader(io.BytesIO(value[5:]), ALERT_SCHEMA, None)  # type: ignore[return-value]


def test_churn_example_alerts_equal_offline_scores(
    kafka_bootstrap: str,
    topics: dict[str, str],
    dev_registry: DevSchemaRegistry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Churn events in, via examples/churn.toml: the alerts are exactly score-file's flagged
    events (ids and scores), keyed by customer, no dead letters, every offset committed."""
    monkeypatch.chdir(REPO)  # the example's paths are relative to the repository root
    settings = churn_settings(kafka_bootstrap, topics, dev_registry.url)
    reader = load_schema(settings.schema_.reader, "schema.reader")
    events, _ = ChurnGenerator(seed=4242).generate(N_EVENTS)
    schema_id = SchemaRegistryClient(dev_registry.url).register(f"{topics['input']}-value", reader)
    produce_values(kafka_bootstrap, topics["input"], avro_package_messages(events, schema_id))
    container = tmp_path / "usage.avro"
    with container.open("wb") as fh:
        fastavro.writer(fh, fastavro.parse_schema(reader), events)
    scores_path = tmp_path / "scores.jsonl"
    counts = score_file(
        container, load_model(settings, reader), settings.batch.max_size, scores_path
    )
    offline = [json.loads(line) for line in scores_path.read_text().splitlines()]
    # The card's event.id_field (event_id) names results and alerts; no constant does.
    assert [r["event_id"] for r in offline] == [e["event_id"] for e in events]
    expected = {r["event_id"]: r["score"] for r in offline if r["flagged"]}
    assert counts == {"events": N_EVENTS, "flagged": len(expected), "errors": 0}
    assert 20 < len(expected) < N_EVENTS // 5, "the fixed seed gives a realistic alert rate"

    scorer = RunningScorer(settings)
    scorer.wait_caught_up(topics["input"])
    assert scorer.stop() == 0

    alerts = read_topic(kafka_bootstrap, topics["alerts"])
    decoded = [decode_alert(m) for m in alerts]
    assert sorted(a["event_id"] for a in decoded) == sorted(expected)
    customer = {e["event_id"]: e["customer_id"] for e in events}
    plan = {e["event_id"]: e["plan"] for e in events}
    for message, alert in zip(alerts, decoded, strict=True):
        # The example's alerts.projection: the alerting service needs no second lookup.
        assert alert["projection"] == {
            "customer_id": customer[alert["event_id"]],
            "plan": plan[alert["event_id"]],
        }
        # Equal up to float32 summation order: the stream's batches differ from score-file's.
        assert alert["score"] == pytest.approx(expected[alert["event_id"]], abs=1e-6)
        assert alert["score"] >= alert["threshold"]
        assert message.key() == customer[alert["event_id"]].encode()
        assert (alert["model_name"], alert["model_version"]) == ("churn", "1")
        assert alert["source_topic"] == topics["input"]
    assert read_topic(kafka_bootstrap, topics["dead_letter"]) == []
    assert committed_offsets(
        kafka_bootstrap, settings.kafka.group_id, topics["input"]
    ) == end_offsets(kafka_bootstrap, topics["input"])
