"""The recommender (multiclass, top-k) and expected-loss (regression, bands) examples end to
end on the real broker, by configuration alone, with the scores topic on.

Events are Confluent-framed against the development registry and scored by a scorer built from
``examples/<name>.toml`` (only the cluster, registry, group and topic names changed for the
test). The alerts are exactly the events ``score-file`` publishes, with its bands and top
classes, and the scores topic holds one record per event, equal to ``score-file``'s, keyed
like the alerts, in both delivery modes.
"""

from __future__ import annotations

import importlib.util
import io
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import fastavro
import pytest
from confluent_kafka import Message

from stream_scorer.app import load_model, load_schema
from stream_scorer.decode import frame_body
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

ALERT_SCHEMA = fastavro.parse_schema(load_schema(REPO / "schemas/alert.avsc", "alert"))
SCORE_SCHEMA = fastavro.parse_schema(load_schema(REPO / "schemas/score.avsc", "scores"))
#: Events produced per example.
N_EVENTS = 3_000


@dataclass(frozen=True)
class _Env:
    """The broker, registry and scratch space one example runs in."""

    kafka_bootstrap: str
    topics: dict[str, str]
    make_topic: Any
    dev_registry: DevSchemaRegistry
    tmp_path: Path
    monkeypatch: pytest.MonkeyPatch


@pytest.fixture
def env(
    kafka_bootstrap: str,
    topics: dict[str, str],
    make_topic: Any,
    dev_registry: DevSchemaRegistry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> _Env:
    """The session broker and registry, fresh topics, a temporary folder."""
    return _Env(kafka_bootstrap, topics, make_topic, dev_registry, tmp_path, monkeypatch)


def _events_module() -> ModuleType:
    """A seeded event generator of ``models/example_events.py`` (numpy only, no sklearn)."""
    spec = importlib.util.spec_from_file_location(
        "example_events", REPO / "models" / "example_events.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _settings(
    example: str, bootstrap: str, topics: dict[str, str], registry_url: str, mode: str
) -> Settings:
    overrides: dict[str, Any] = {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "group_id": f"it-{example}-{uuid.uuid4().hex[:10]}",
            # Tests: join a group fast; production keeps librdkafka's defaults.
            "consumer": {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500},
        },
        "topics": topics,
        "schema": {"registry_url": registry_url},
        "delivery": {"mode": mode},
        "metrics": {"port": 0, "host": "127.0.0.1"},
        "log": {"level": "warning"},
    }
    return load_settings(REPO / "examples" / f"{example}.toml", overrides, environ={})


def _decode(message: Message, schema: Any) -> dict[str, Any]:
    value = message.value()
    assert value is not None and value[0] == 0, "Confluent-framed"
    return fastavro.schemaless_reader(io.BytesIO(value[5:]), schema, None)  # type: ignore[return-value]


def _run_example(
    example: str,
    generator: str,
    id_field: str,
    key_field: str,
    mode: str,
    env: _Env,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[Message], list[Message]]:
    """Produce the generator's events, score them offline and on the stream; return the events,
    the offline results, and the alert and score messages."""
    kafka_bootstrap, dev_registry, tmp_path = env.kafka_bootstrap, env.dev_registry, env.tmp_path
    env.monkeypatch.chdir(REPO)  # as a user would run it (paths resolve against the config file)
    topics = {**env.topics, "scores": env.make_topic("scores", partitions=4)}
    settings = _settings(example, kafka_bootstrap, topics, dev_registry.url, mode)
    reader = load_schema(settings.schema_.reader, "schema.reader")
    events, _ = getattr(_events_module(), generator)(N_EVENTS, 4242)
    schema_id = SchemaRegistryClient(dev_registry.url).register(f"{topics['input']}-value", reader)
    parsed = fastavro.parse_schema(reader)
    messages = []
    for event in events:
        body = io.BytesIO()
        fastavro.schemaless_writer(body, parsed, event)
        messages.append(
            (
                event[key_field].encode(),
                frame_body("confluent", body.getvalue(), schema_id=schema_id),
            )
        )
    produce_values(kafka_bootstrap, topics["input"], messages)
    container = tmp_path / "events.avro"
    with container.open("wb") as fh:
        fastavro.writer(fh, parsed, events)
    out = tmp_path / "offline.jsonl"
    counts = score_file(container, load_model(settings, reader), settings.batch.max_size, out)
    offline = [json.loads(line) for line in out.read_text().splitlines()]
    assert counts["events"] == N_EVENTS and counts["errors"] == 0
    assert [r["event_id"] for r in offline] == [e[id_field] for e in events]

    scorer = RunningScorer(settings)
    scorer.wait_caught_up(topics["input"])
    assert scorer.stop() == 0
    isolation = "read_committed" if mode == "exactly-once" else "read_uncommitted"
    alerts = read_topic(kafka_bootstrap, topics["alerts"], isolation)
    scores = read_topic(kafka_bootstrap, topics["scores"], isolation)
    assert read_topic(kafka_bootstrap, topics["dead_letter"], isolation) == []
    assert committed_offsets(
        kafka_bootstrap, settings.kafka.group_id, topics["input"]
    ) == end_offsets(kafka_bootstrap, topics["input"])
    return events, offline, alerts, scores


def _check_scores(
    events: list[dict[str, Any]],
    offline: list[dict[str, Any]],
    scores: list[Message],
    id_field: str,
    key_field: str,
) -> None:
    """One score record per event, equal to score-file's, keyed like the event."""
    key = {e[id_field]: e[key_field] for e in events}
    by_id = {r["event_id"]: r for r in offline}
    records = [_decode(m, SCORE_SCHEMA) for m in scores]
    assert sorted(r["event_id"] for r in records) == sorted(by_id)
    for message, record in zip(scores, records, strict=True):
        expected = by_id[record["event_id"]]
        assert message.key() == key[record["event_id"]].encode()
        assert record["key"] == key[record["event_id"]]
        # Equal up to float32 summation order: the stream's batches differ from score-file's.
        assert record["score"] == pytest.approx(expected["score"], rel=1e-6, abs=1e-6)
        assert record["band"] == expected["band"]
        assert record["published"] == expected["flagged"]
        assert [c["label"] for c in record["classes"]] == [c["label"] for c in expected["classes"]]


@pytest.mark.parametrize("mode", ["at-least-once", "exactly-once"])
def test_recommender_example_publishes_score_file_top_k(mode: str, env: _Env) -> None:
    """Product views in, via examples/recommender.toml: recommendations are exactly
    score-file's RECOMMEND events with its top-3 labels and probabilities; every view has a
    score record equal to score-file's, keyed by user."""
    events, offline, alerts, scores = _run_example(
        "recommender",
        "product_views",
        "event_id",
        "user_id",
        mode,
        env,
    )
    expected = {r["event_id"]: r for r in offline if r["flagged"]}
    assert N_EVENTS // 20 < len(expected) < N_EVENTS // 2, "the card's edge publishes a fifth"
    decoded = [_decode(m, ALERT_SCHEMA) for m in alerts]
    assert sorted(a["event_id"] for a in decoded) == sorted(expected)
    for alert in decoded:
        reference = expected[alert["event_id"]]
        assert alert["decision"] == "RECOMMEND"
        assert alert["score"] == pytest.approx(reference["score"], abs=1e-6)
        assert [c["label"] for c in alert["classes"]] == [c["label"] for c in reference["classes"]]
        assert [c["probability"] for c in alert["classes"]] == pytest.approx(
            [c["probability"] for c in reference["classes"]], abs=1e-6
        )
    _check_scores(events, offline, scores, "event_id", "user_id")


def test_expected_loss_example_publishes_score_file_bands(env: _Env) -> None:
    """Claims in, via examples/expected_loss.toml: alerts are exactly score-file's MEDIUM and
    HIGH claims, decision the band, score the expected cost; every claim has a score record."""
    events, offline, alerts, scores = _run_example(
        "expected_loss",
        "claims",
        "claim_id",
        "policy_id",
        "at-least-once",
        env,
    )
    expected = {r["event_id"]: r for r in offline if r["flagged"]}
    decoded = [_decode(m, ALERT_SCHEMA) for m in alerts]
    assert sorted(a["event_id"] for a in decoded) == sorted(expected)
    assert {a["decision"] for a in decoded} == {"MEDIUM", "HIGH"}
    for alert in decoded:
        reference = expected[alert["event_id"]]
        assert alert["decision"] == reference["band"]
        assert alert["score"] == pytest.approx(reference["score"], rel=1e-6)
        assert alert["score"] >= alert["threshold"]  # the band's lower edge
        assert alert["classes"] is None
    _check_scores(events, offline, scores, "claim_id", "policy_id")
