"""The optional shadow topic: each shadow's flagged events as alerts marked shadow, after (and
never instead of) what the champion publishes."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import fastavro
import pytest
from prometheus_client import CollectorRegistry

from stream_scorer.consume import MessageBatch
from stream_scorer.decode import ColumnarAvroDecoder, Framing
from stream_scorer.devtools.generate import TransactionGenerator
from stream_scorer.encode import AlertEncoder, EventFields
from stream_scorer.errors import ConfigurationError, ModelError
from stream_scorer.model_set import LiveModels, LoadedModel, ModelSet, load_model
from stream_scorer.monitoring.monitor import Monitor
from stream_scorer.monitoring.shadow import ShadowBudget
from stream_scorer.offline import score_events
from stream_scorer.pipeline import SHADOW_HEADER, Pipeline, score_and_flag
from stream_scorer.records import SourceRecord
from stream_scorer.settings import load_settings

REPO_ROOT = Path(__file__).resolve().parents[2]
FRAUD_MODEL = REPO_ROOT / "models" / "fraud" / "1"
READER = json.loads((REPO_ROOT / "schemas" / "transaction.avsc").read_text(encoding="utf-8"))
ALERT = json.loads((REPO_ROOT / "schemas" / "alert.avsc").read_text(encoding="utf-8"))
SCORED_AT_MS = 1_767_225_600_000
N = 2000


def _variant(tmp: Path, version: str, threshold: float) -> Path:
    folder = tmp / "fraud" / version
    folder.mkdir(parents=True)
    shutil.copy(FRAUD_MODEL / "model.onnx", folder / "model.onnx")
    card = json.loads((FRAUD_MODEL / "model.json").read_text(encoding="utf-8"))
    card.update(version=version, threshold=threshold)
    (folder / "model.json").write_text(json.dumps(card), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def champion() -> LoadedModel:
    """The shipped fraud model."""
    return load_model(FRAUD_MODEL, READER)


@pytest.fixture(scope="module")
def shadow(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """fraud/1's graph as version 2 at threshold 0.2: it flags far more."""
    return load_model(_variant(tmp_path_factory.mktemp("m"), "2", 0.2), READER)


@pytest.fixture(scope="module")
def events() -> list[dict[str, Any]]:
    """N generated transactions, fraud-rich so both models flag some."""
    return TransactionGenerator(seed=37, fraud_rate=0.1).generate(N)[0]


def _records(events: list[dict[str, Any]]) -> list[SourceRecord]:
    parsed = fastavro.parse_schema(READER)
    out = []
    for i, event in enumerate(events):
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed, event)
        out.append(SourceRecord("in", i % 3, i, event["card_id"].encode(), buf.getvalue()))
    return out


def _pipeline(models: ModelSet, monitor: Monitor | None, shadow_topic: str | None) -> Pipeline:
    return Pipeline(
        ColumnarAvroDecoder(Framing(READER, "plain")),
        LiveModels(models),
        AlertEncoder(ALERT, b"", "t", EventFields("transaction_id", "event_time")),
        "alerts",
        "dlq",
        "t",
        clock_ms=lambda: SCORED_AT_MS,
        monitor=monitor,
        shadow_topic=shadow_topic,
    )


def _decode(value: bytes) -> dict[str, Any]:
    return fastavro.schemaless_reader(io.BytesIO(value), fastavro.parse_schema(ALERT))  # type: ignore[no-any-return]


def test_shadow_topic_holds_the_shadows_alerts_marked_shadow(
    champion: LoadedModel, shadow: LoadedModel, events: list[dict[str, Any]]
) -> None:
    """The champion's messages are those of a run without shadow, first and in order; the
    shadow topic then holds exactly the events score-file flags with the shadow model, in
    the alert schema with the shadow's name/version and the shadow header."""
    batch = MessageBatch.from_records(_records(events))
    alone = _pipeline(ModelSet(champion), None, None).process(batch)
    monitor = Monitor(score_and_flag, CollectorRegistry(), drift_enabled=False,
                      budget=ShadowBudget(max_ratio=1e6))  # fmt: skip
    both = _pipeline(ModelSet(champion, (shadow,)), monitor, "shadow-alerts").process(batch)
    champion_part = [m for m in both.messages if m[0] != "shadow-alerts"]
    assert champion_part == alone.messages
    assert both.messages[: len(alone.messages)] == alone.messages  # shadows come after
    shadowed = [m for m in both.messages if m[0] == "shadow-alerts"]
    offline = [
        r
        for r in score_events(events, shadow, N, EventFields("transaction_id", "event_time"))
        if r["flagged"]
    ]
    assert len(shadowed) == len(offline) > len([m for m in alone.messages if m[0] == "alerts"])
    for (_, _, value, headers), expected in zip(shadowed, offline, strict=True):
        alert = _decode(value)
        assert SHADOW_HEADER in headers
        assert ("model.version", b"2") in headers
        assert (alert["model_name"], alert["model_version"]) == ("fraud", "2")
        assert alert["event_id"] == expected["event_id"]
        assert alert["score"] == pytest.approx(expected["score"], abs=1e-9)
        assert alert["threshold"] == pytest.approx(0.2)
    # The batch's accounting is the champion's alone: shadows publish no alert.
    assert both.result.flagged == alone.result.flagged


def test_no_shadow_topic_no_shadow_messages(
    champion: LoadedModel, shadow: LoadedModel, events: list[dict[str, Any]]
) -> None:
    """Off by default: with shadows but no shadow topic, only the champion's messages go out."""
    batch = MessageBatch.from_records(_records(events[:500]))
    monitor = Monitor(score_and_flag, None, drift_enabled=False,
                      budget=ShadowBudget(max_ratio=1e6))  # fmt: skip
    out = _pipeline(ModelSet(champion, (shadow,)), monitor, None).process(batch)
    alone = _pipeline(ModelSet(champion), None, None).process(batch)
    assert out.messages == alone.messages
    assert load_settings(None, environ={}).monitoring.shadow_topic is None


def test_a_dropped_shadow_stops_publishing(
    champion: LoadedModel, shadow: LoadedModel, events: list[dict[str, Any]]
) -> None:
    """A shadow over its time budget for its strikes is dropped, and publishes nothing from
    the batch after on; the champion's messages never change."""
    ticks = iter(range(10**6))
    # Each shadow run takes one "second" on this clock: far over a 0-ratio, 0-ms budget.
    budget = ShadowBudget(max_ratio=1e-9, min_budget_ms=0.0, strikes=2)
    monitor = Monitor(score_and_flag, None, drift_enabled=False, budget=budget)
    monitor.shadows._clock_s = lambda: float(next(ticks))
    pipeline = _pipeline(ModelSet(champion, (shadow,)), monitor, "shadow-alerts")
    alone = _pipeline(ModelSet(champion), None, None)
    counts = []
    for start in range(0, 2000, 500):
        batch = MessageBatch.from_records(_records(events[start : start + 500]))
        out = pipeline.process(batch)
        assert [m for m in out.messages if m[0] != "shadow-alerts"] == alone.process(batch).messages
        counts.append(sum(m[0] == "shadow-alerts" for m in out.messages))
    assert counts[0] > 0 and counts[1] > 0  # over budget, not yet dropped: still published
    assert counts[2:] == [0, 0]
    assert monitor.shadows.dropped() == {"fraud/2": "slow"}


def test_a_failing_shadow_topic_encode_never_reaches_the_champion(
    champion: LoadedModel, shadow: LoadedModel, events: list[dict[str, Any]]
) -> None:
    """When the shadow's alerts cannot be encoded, the batch goes out with the champion's
    messages only, and the failure is counted as a monitoring error."""
    registry = CollectorRegistry()
    monitor = Monitor(score_and_flag, registry, drift_enabled=False,
                      budget=ShadowBudget(max_ratio=1e6))  # fmt: skip
    pipeline = _pipeline(ModelSet(champion, (shadow,)), monitor, "shadow-alerts")
    batch = MessageBatch.from_records(_records(events[:500]))
    real_encode = pipeline._encoder.encode_all
    calls = {"n": 0}

    def encode_all(alerts: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:  # the first call is the champion's, the second the shadow's
            msg = "cannot encode"
            raise ModelError(msg)
        return real_encode(alerts)

    pipeline._encoder.encode_all = encode_all  # type: ignore[method-assign]
    out = pipeline.process(batch)
    assert out.messages == _pipeline(ModelSet(champion), None, None).process(batch).messages
    assert registry.get_sample_value("stream_scorer_monitoring_errors_total") == 1


def test_shadow_topic_setting_is_checked() -> None:
    """An empty shadow topic is a configuration error naming the key."""
    with pytest.raises(ConfigurationError, match=r"monitoring\.shadow_topic"):
        load_settings(None, overrides={"monitoring": {"shadow_topic": ""}}, environ={})
