"""The pipeline with decision policies: bands name the alert's decision, a counter per band,
one score record per scored event on the scores topic, multiclass top-k on alerts."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import pytest
from confluent_kafka import Message
from numpy.typing import NDArray
from prometheus_client import CollectorRegistry

from stream_scorer.consume import MessageBatch
from stream_scorer.decode import ColumnarAvroDecoder, Framing
from stream_scorer.encode import AlertEncoder, EventFields, ScoreEncoder
from stream_scorer.featurize import FeatureBuilder
from stream_scorer.metrics import ScorerMetrics
from stream_scorer.model_card import ModelCard
from stream_scorer.model_set import LiveModels, LoadedModel, ModelSet
from stream_scorer.pipeline import Pipeline
from stream_scorer.records import Outgoing

ALERTS, DLQ, SCORES = "alerts", "dlq", "scores"
NOW_MS = 1_767_225_700_000
SCORE_SCHEMA: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parents[2] / "schemas" / "score.avsc").read_text(encoding="utf-8")
)
BANDS = [
    {"name": "APPROVE", "publish": False},
    {"name": "REVIEW", "from": 0.4, "publish": True},
    {"name": "DECLINE", "from": 0.8, "publish": True},
]
LABELS = ["shoes", "hats", "bags"]


def _card(**policy: Any) -> dict[str, Any]:
    return {
        "name": "fake",
        "version": "3",
        "input_layout": "per_field",
        "inputs": [
            {"name": "amount", "dtype": "float64"},
            {"name": "distance_from_home_km", "dtype": "float64"},
        ],
        **policy,
    }


class AmountScorer:
    """A fake Scorer: amount / 100 (binary); for a multiclass card, class probabilities where
    class ``amount % 3`` gets amount / 100 and the others share the rest."""

    def __init__(self, card: ModelCard) -> None:
        """Score for ``card``."""
        self.card = card

    def score(self, inputs: Mapping[str, NDArray[Any]]) -> NDArray[np.float64]:
        """amount / 100 per row, or [N, 3] probabilities."""
        amounts = np.asarray(inputs["amount"][:, 0], dtype=np.float64)
        top = amounts / 100.0
        if self.card.policy.output != "multiclass":
            return top
        out = np.repeat(((1 - top) / 2)[:, None], 3, axis=1)
        out[np.arange(len(amounts)), amounts.astype(int) % 3] = top
        return out


Build = Callable[..., Pipeline]


@pytest.fixture
def build(
    write_card: Callable[..., Path],
    reader_schema: dict[str, Any],
    alert_schema: dict[str, Any],
    registry: CollectorRegistry,
) -> Build:
    """``build(card, scores=True)`` → a pipeline over the columnar decoder, fake scorer."""

    def make(card: dict[str, Any], scores: bool = True) -> Pipeline:
        loaded_card = ModelCard.load(write_card(card, "fake"))
        scorer = AmountScorer(loaded_card)
        canary = {name: np.zeros((4, 1)) for name in ("amount", "distance_from_home_km")}
        model = LoadedModel(scorer, FeatureBuilder(loaded_card), loaded_card.threshold, canary)
        fields = EventFields("transaction_id", "event_time")
        return Pipeline(
            ColumnarAvroDecoder(Framing(reader_schema, "plain")),
            LiveModels(ModelSet(model)),
            AlertEncoder(alert_schema, b"", "v", fields),
            ALERTS,
            DLQ,
            "v",
            ScorerMetrics(registry),
            clock_ms=lambda: NOW_MS,
            scores_topic=SCORES if scores else None,
            score_encoder=ScoreEncoder(SCORE_SCHEMA, b"", fields) if scores else None,
        )

    return make


@pytest.fixture
def batch(
    make_transaction: Callable[..., dict[str, Any]],
    avro_bytes: Callable[[Any, Any], bytes],
    reader_schema: dict[str, Any],
) -> Callable[..., MessageBatch]:
    """``batch(amount_or_bytes, ...)`` → a consumed batch, keys ``card-i``, offsets 0.."""

    def make(*items: float | bytes) -> MessageBatch:
        messages = []
        for i, item in enumerate(items):
            value = (
                item
                if isinstance(item, bytes)
                else avro_bytes(
                    reader_schema, make_transaction(transaction_id=f"t{i}", amount=float(item))
                )
            )
            messages.append(
                Message(topic="in", partition=1, offset=i, key=f"card-{i}".encode(), value=value)
            )
        return MessageBatch(messages)

    return make


def _read(schema: dict[str, Any], message: Outgoing) -> dict[str, Any]:
    assert message[2] is not None
    record: dict[str, Any] = fastavro.schemaless_reader(
        io.BytesIO(message[2]), fastavro.parse_schema(schema), None
    )
    return record


def test_bands_name_the_alert_decision_and_edge(
    build: Build, batch: Callable[..., MessageBatch], alert_schema: dict[str, Any]
) -> None:
    """Published bands become alerts carrying the band name and its lower edge; the rest
    are counted as unflagged; nothing else changes in the accounting."""
    pipeline = build(_card(decision={"bands": BANDS}), scores=False)

    output = pipeline.process(batch(10.0, 45.0, 85.0, 39.0, 80.0))

    alerts = [_read(alert_schema, m) for m in output.messages if m[0] == ALERTS]
    assert [(a["event_id"], a["decision"], a["threshold"]) for a in alerts] == [
        ("t1", "REVIEW", 0.4),
        ("t2", "DECLINE", 0.8),
        ("t4", "DECLINE", 0.8),
    ]
    assert (output.result.flagged, output.result.unflagged) == (3, 2)
    assert not [m for m in output.messages if m[0] == SCORES]


def test_plain_card_alerts_stay_flag_at_the_threshold(
    build: Build, batch: Callable[..., MessageBatch], alert_schema: dict[str, Any]
) -> None:
    """A card with only a threshold keeps today's alerts: decision FLAG, threshold as set."""
    pipeline = build(_card(threshold=0.5), scores=False)

    output = pipeline.process(batch(10.0, 50.0, 99.0))

    alerts = [_read(alert_schema, m) for m in output.messages if m[0] == ALERTS]
    assert [(a["event_id"], a["decision"], a["threshold"]) for a in alerts] == [
        ("t1", "FLAG", 0.5),
        ("t2", "FLAG", 0.5),
    ]


def test_decisions_are_counted_per_band_and_model_version(
    build: Build, batch: Callable[..., MessageBatch], registry: CollectorRegistry
) -> None:
    """stream_scorer_decisions_total moves per band; a row that does not score counts nowhere."""
    pipeline = build(_card(decision={"bands": BANDS}))

    pipeline.process(batch(10.0, 45.0, 85.0, b"\x00junk", 20.0))

    def count(band: str) -> float | None:
        return registry.get_sample_value(
            "stream_scorer_decisions_total",
            {"model_name": "fake", "model_version": "3", "band": band},
        )

    assert (count("APPROVE"), count("REVIEW"), count("DECLINE")) == (2, 1, 1)


def test_every_scored_event_gets_one_score_record_keyed_like_its_alert(
    build: Build, batch: Callable[..., MessageBatch]
) -> None:
    """One score record per scored event (published or not, never a dead letter), in batch
    order, with the same key as the event's alert, its band and lineage."""
    pipeline = build(_card(decision={"bands": BANDS}))

    output = pipeline.process(batch(10.0, 45.0, b"\x00junk", 85.0))

    scores = [m for m in output.messages if m[0] == SCORES]
    alerts = {m[1]: m for m in output.messages if m[0] == ALERTS}
    records = [_read(SCORE_SCHEMA, m) for m in scores]
    assert [(r["event_id"], r["band"], r["published"]) for r in records] == [
        ("t0", "APPROVE", False),
        ("t1", "REVIEW", True),
        ("t3", "DECLINE", True),
    ]
    assert [r["score"] for r in records] == [0.1, 0.45, 0.85]
    assert [m[1] for m in scores] == [b"card-0", b"card-1", b"card-3"]
    assert set(alerts) == {b"card-1", b"card-3"}
    assert [(r["source_topic"], r["source_partition"], r["source_offset"]) for r in records] == [
        ("in", 1, 0),
        ("in", 1, 1),
        ("in", 1, 3),
    ]
    assert {(r["model_name"], r["model_version"]) for r in records} == {("fake", "3")}
    assert "scores" in output.result.stage_s
    # Accounting is unchanged by the extra messages: records on one topic, events counted once.
    result = output.result
    assert result.flagged + result.unflagged + result.dead_lettered == result.consumed == 4


def test_multiclass_alerts_and_score_records_carry_the_top_classes(
    build: Build, batch: Callable[..., MessageBatch], alert_schema: dict[str, Any]
) -> None:
    """A multiclass card publishes the top-k labels with their probabilities, most likely
    first, on the alert and on the score record; the band is over the top probability."""
    card = _card(
        output={"type": "multiclass", "labels": LABELS},
        decision={
            "top_k": 2,
            "bands": [
                {"name": "LOW", "publish": False},
                {"name": "RECOMMEND", "from": 0.5, "publish": True},
            ],
        },
    )
    pipeline = build(card)

    output = pipeline.process(batch(20.0, 61.0))  # t1: class 61 % 3 = 1 (hats) at 0.61

    (alert,) = [_read(alert_schema, m) for m in output.messages if m[0] == ALERTS]
    assert (alert["event_id"], alert["decision"]) == ("t1", "RECOMMEND")
    assert [c["label"] for c in alert["classes"]] == ["hats", "shoes"]
    assert [c["probability"] for c in alert["classes"]] == pytest.approx([0.61, 0.195])
    records = [_read(SCORE_SCHEMA, m) for m in output.messages if m[0] == SCORES]
    assert [r["band"] for r in records] == ["LOW", "RECOMMEND"]
    assert records[1]["classes"] == alert["classes"]
    assert records[0]["score"] == pytest.approx(0.4)  # the top class: (1 - 0.2) / 2


def test_published_event_that_does_not_decode_whole_gets_no_score_record(
    build: Build,
    make_transaction: Callable[..., dict[str, Any]],
    avro_bytes: Callable[[Any, Any], bytes],
    reader_schema: dict[str, Any],
    registry: CollectorRegistry,
) -> None:
    """A published row whose whole record is malformed (invalid UTF-8 in a field no model
    reads) is a dead letter: no alert, no score record, not counted in its band."""
    pipeline = build(_card(decision={"bands": BANDS}))
    good = avro_bytes(reader_schema, make_transaction(transaction_id="t0", amount=90.0))
    body = avro_bytes(
        reader_schema, make_transaction(transaction_id="t1", amount=95.0, merchant_name="QQ")
    )
    broken = body.replace(b"QQ", b"\xff\xfe")
    messages = [
        Message(topic="in", partition=0, offset=i, key=b"k", value=value)
        for i, value in enumerate([good, broken])
    ]

    output = pipeline.process(MessageBatch(messages))

    records = [_read(SCORE_SCHEMA, m) for m in output.messages if m[0] == SCORES]
    assert [r["event_id"] for r in records] == ["t0"]
    assert [m[0] for m in output.messages].count(DLQ) == 1
    assert (output.result.flagged, output.result.dead_lettered) == (1, 1)
    value = registry.get_sample_value(
        "stream_scorer_decisions_total",
        {"model_name": "fake", "model_version": "3", "band": "DECLINE"},
    )
    assert value == 1
