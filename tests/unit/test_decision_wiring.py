"""Composition of decision policies: settings, the alert schema's enum and the scores topic."""

from __future__ import annotations

import copy
import io
from pathlib import Path
from typing import Any

import fastavro
import pytest

from stream_scorer.app import build_score_encoder, load_model, load_schema
from stream_scorer.decision import parse_policy
from stream_scorer.encode import AlertEncoder
from stream_scorer.errors import ConfigurationError
from stream_scorer.settings import load_settings

REPO = Path(__file__).resolve().parents[2]


def _settings(**sections: Any) -> Any:
    base: dict[str, Any] = {"schema": {"wire_format": "plain"}}
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return load_settings(None, base, environ={})


def test_scores_topic_is_off_unless_configured() -> None:
    """No topics.scores: no score encoder, so the pipeline publishes alerts only."""
    assert build_score_encoder(_settings(), None) is None
    encoder = build_score_encoder(_settings(topics={"scores": "transaction-scores"}), None)
    assert encoder is not None


def test_scores_topic_must_differ_from_the_others() -> None:
    """topics.scores may not be the alert topic (named in the error)."""
    with pytest.raises(ConfigurationError, match=r"topics\.scores"):
        _settings(topics={"alerts": "out", "scores": "out"})


def test_published_band_missing_from_the_alert_enum_is_refused(
    alert_schema: dict[str, Any],
) -> None:
    """A card whose published band the alert schema cannot write is refused at start-up;
    unpublished bands need no symbol (they never reach an alert)."""
    encoder = AlertEncoder(alert_schema, b"", "v")
    policy = parse_policy(
        {
            "decision": {
                "bands": [
                    {"name": "ignore_me", "publish": False},
                    {"name": "ESCALATE", "from": 0.9, "publish": True},
                ]
            }
        }
    )

    with pytest.raises(ConfigurationError, match=r"\['ESCALATE'\]"):
        encoder.check_policy(policy, "m/1")

    widened = copy.deepcopy(alert_schema)
    decision = next(f for f in widened["fields"] if f["name"] == "decision")
    decision["type"]["symbols"].append("ESCALATE")
    AlertEncoder(widened, b"", "v").check_policy(policy, "m/1")


def test_alert_schema_only_widens_for_old_readers(alert_schema: dict[str, Any]) -> None:
    """The Decision enum keeps its old symbols and FLAG default; classes is optional."""
    decision = next(f for f in alert_schema["fields"] if f["name"] == "decision")
    assert decision["type"]["symbols"][:2] == ["FLAG", "REVIEW"]
    assert decision["type"]["default"] == "FLAG"
    classes = next(f for f in alert_schema["fields"] if f["name"] == "classes")
    assert classes["default"] is None


def test_old_reader_reads_a_new_band_as_flag(alert_schema: dict[str, Any]) -> None:
    """An alert written with a new symbol resolves against the old two-symbol schema as FLAG."""
    old = copy.deepcopy(alert_schema)
    old["fields"] = [f for f in old["fields"] if f["name"] != "classes"]
    next(f for f in old["fields"] if f["name"] == "decision")["type"]["symbols"] = [
        "FLAG",
        "REVIEW",
    ]
    record = {
        "event_id": "e",
        "key": None,
        "score": 0.9,
        "decision": "DECLINE",
        "threshold": 0.8,
        "model_name": "m",
        "model_version": "1",
        "event_time": 0,
        "scored_time": 0,
        "source_topic": "t",
        "source_partition": 0,
        "source_offset": 1,
        "projection": None,
        "classes": None,
    }
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(alert_schema), record)
    buffer.seek(0)

    read = fastavro.schemaless_reader(
        buffer, fastavro.parse_schema(alert_schema), fastavro.parse_schema(old)
    )

    assert read["decision"] == "FLAG"  # type: ignore[call-overload,index]


def test_threshold_override_of_a_banded_card_is_refused() -> None:
    """model.threshold cannot replace a card's bands: refused, naming the key."""
    settings = _settings(
        schema={"reader": str(REPO / "schemas" / "claim_event.avsc")},
        model={"path": str(REPO / "models" / "expected_loss" / "1"), "threshold": 0.5},
    )
    reader = load_schema(settings.schema_.reader, "schema.reader")

    with pytest.raises(ConfigurationError, match=r"model\.threshold"):
        load_model(settings, reader)
