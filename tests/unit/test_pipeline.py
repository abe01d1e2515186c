"""The pipeline: stages 2–6 on one batch with a real decoder and fake scorers; it returns
what to publish and never publishes."""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import pytest
from confluent_kafka import Message
from numpy.typing import NDArray
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from stream_scorer.consume import MessageBatch
from stream_scorer.decode import AvroDecoder, ColumnarAvroDecoder, Decoder, Framing
from stream_scorer.encode import AlertEncoder, EventFields
from stream_scorer.errors import FatalError, ModelError
from stream_scorer.featurize import FeatureBuilder
from stream_scorer.metrics import ScorerMetrics
from stream_scorer.model_card import ModelCard
from stream_scorer.model_set import LiveModels, LoadedModel, ModelSet
from stream_scorer.pipeline import Pipeline
from stream_scorer.records import BatchResult, Header, SourceRecord
from stream_scorer.registry import RegistryError

MakeRecord = Callable[..., SourceRecord]
MakeTransaction = Callable[..., dict[str, Any]]
AvroBytes = Callable[[Any, Any], bytes]
WriteCard = Callable[..., Path]

ALERTS, DLQ = "alerts", "transactions-dlq"
#: The amount that makes BombScorer's model run fail for the whole batch it is in.
POISON = 13.37
NOW_MS = 1_767_225_700_000

CARD: dict[str, Any] = {
    "name": "fake",
    "version": "1",
    "input_layout": "per_field",
    "inputs": [
        {"name": "amount", "dtype": "float64"},
        {"name": "distance_from_home_km", "dtype": "float64", "missing": "reject"},
    ],
    "threshold": 0.5,
}


class AmountScorer:
    """A fake Scorer: the score is amount / 100, so tests choose which events are flagged."""

    def __init__(self, card: ModelCard) -> None:
        """Score for ``card``; count calls and rows."""
        self.card = card
        self.calls: list[int] = []

    def score(self, inputs: Mapping[str, NDArray[Any]]) -> NDArray[np.float64]:
        """amount / 100 per row."""
        amounts = np.asarray(inputs["amount"][:, 0], dtype=np.float64)
        self.calls.append(len(amounts))
        return amounts / 100.0


class BombScorer(AmountScorer):
    """Fails the whole run whenever one row has the POISON amount, like a model crashing."""

    def score(self, inputs: Mapping[str, NDArray[Any]]) -> NDArray[np.float64]:
        """amount / 100, or ModelError if any row holds POISON."""
        if np.any(inputs["amount"][:, 0] == POISON):
            self.calls.append(-len(inputs["amount"]))
            msg = f"model fake/1 failed on a batch of {len(inputs['amount'])}: poison"
            raise ModelError(msg)
        return super().score(inputs)


class DownScorer(AmountScorer):
    """A model that is down: every run fails, the canary too."""

    def score(self, inputs: Mapping[str, NDArray[Any]]) -> NDArray[np.float64]:
        """Always ModelError."""
        self.calls.append(-len(inputs["amount"]))
        msg = "model fake/1 failed: session lost"
        raise ModelError(msg)


class PickyScorer(AmountScorer):
    """A model that is up (the canary, amount 0, scores) but fails on any positive amount."""

    def score(self, inputs: Mapping[str, NDArray[Any]]) -> NDArray[np.float64]:
        """amount / 100 when every amount is 0, else ModelError."""
        if np.any(inputs["amount"][:, 0] > 0):
            msg = "model fake/1 cannot take positive amounts"
            raise ModelError(msg)
        return super().score(inputs)


Message_ = tuple[str, bytes | None, bytes | None, list[Header]]


class Outputs:
    """Every message the pipeline returned, across batches, in order."""

    def __init__(self) -> None:
        """Start empty."""
        self.messages: list[Message_] = []

    def on(self, topic: str) -> list[Message_]:
        """Messages returned for ``topic``."""
        return [m for m in self.messages if m[0] == topic]


class Processing:
    """A pipeline whose outputs are collected, called like the old ``process``."""

    def __init__(self, pipeline: Pipeline, outputs: Outputs) -> None:
        """Wrap ``pipeline``."""
        self.pipeline = pipeline
        self.outputs = outputs

    def process(self, records: Sequence[SourceRecord] | MessageBatch) -> BatchResult:
        """Run one batch (records become a MessageBatch, as the consumer hands them on)."""
        batch = records if isinstance(records, MessageBatch) else MessageBatch.from_records(records)
        output = self.pipeline.process(batch)
        self.outputs.messages.extend(output.messages)
        return output.result


Build = Callable[..., tuple[Processing, Outputs]]


@pytest.fixture
def card(write_card: WriteCard) -> ModelCard:
    """The fake model's card: amount and distance (reject nulls), threshold 0.5."""
    return ModelCard.load(write_card(CARD, "fake"))


def _loaded(scorer: AmountScorer, threshold: float = 0.5) -> LoadedModel:
    canary = {
        "amount": np.zeros((4, 1), dtype=np.float64),
        "distance_from_home_km": np.zeros((4, 1), dtype=np.float64),
    }
    return LoadedModel(scorer, FeatureBuilder(scorer.card), threshold, canary)


@pytest.fixture
def build(
    card: ModelCard,
    reader_schema: dict[str, Any],
    alert_schema: dict[str, Any],
    registry: CollectorRegistry,
) -> Build:
    """``build(scorer_cls=AmountScorer, decoder=None)`` → a plain-Avro pipeline (record decoder
    unless ``decoder`` is given) and what it returned to publish."""

    def make(
        scorer_cls: type[AmountScorer] = AmountScorer, decoder: Decoder | None = None
    ) -> tuple[Processing, Outputs]:
        sink = Outputs()
        pipeline = Pipeline(
            decoder=decoder or AvroDecoder(Framing(reader_schema, "plain")),
            models=LiveModels(ModelSet(_loaded(scorer_cls(card)))),
            encoder=AlertEncoder(
                alert_schema, b"", "test-version", EventFields("transaction_id", "event_time")
            ),
            alert_topic=ALERTS,
            dead_letter_topic=DLQ,
            scorer_version="test-version",
            metrics=ScorerMetrics(registry),
            clock_ms=lambda: NOW_MS,
        )
        return Processing(pipeline, sink), sink

    return make


@pytest.fixture
def records(
    make_record: MakeRecord,
    make_transaction: MakeTransaction,
    avro_bytes: AvroBytes,
    reader_schema: dict[str, Any],
) -> Callable[..., list[SourceRecord]]:
    """``records(amount_or_value, ...)`` → records at offsets 0.. from amounts or raw values.

    A float is a transaction with that amount; ``None`` a transaction with a null distance;
    bytes are used as the value as they are.
    """

    def build(*items: float | bytes | None) -> list[SourceRecord]:
        out = []
        for i, item in enumerate(items):
            if isinstance(item, bytes):
                value = item
            elif item is None:
                value = avro_bytes(reader_schema, make_transaction(distance_from_home_km=None))
            else:
                event = make_transaction(transaction_id=f"txn-{i}", amount=float(item))
                value = avro_bytes(reader_schema, event)
            out.append(
                make_record(value, offset=i, key=f"card-{i}".encode(), timestamp_ms=NOW_MS - 250)
            )
        return out

    return build


def _header(headers: list[Header], name: str) -> bytes | None:
    return dict(headers)[name]


def _alert(alert_schema: dict[str, Any], value: bytes | None) -> dict[str, Any]:
    assert value is not None
    decoded: dict[str, Any] = fastavro.schemaless_reader(
        io.BytesIO(value), fastavro.parse_schema(alert_schema), None
    )
    return decoded


def test_every_record_is_accounted_for(
    build: Build, records: Callable[..., list[SourceRecord]], alert_schema: dict[str, Any]
) -> None:
    """Alerts + unflagged + dead letters equal the records consumed, each where it belongs."""
    pipeline, sink = build()
    batch = records(90.0, 10.0, b"\x00garbage", None, 50.0, 150.0, 49.99)

    result = pipeline.process(batch)

    assert result.consumed == 7
    assert (result.flagged, result.unflagged, result.dead_lettered) == (2, 2, 3)
    assert result.flagged + result.unflagged + result.dead_lettered == result.consumed
    assert result.scored == 4
    alerts = sink.on(ALERTS)
    assert [_alert(alert_schema, m[2])["source_offset"] for m in alerts] == [0, 4]
    assert [m[1] for m in alerts] == [b"card-0", b"card-4"]
    dead = sink.on(DLQ)
    assert [(_header(m[3], "error.stage"), _header(m[3], "source.offset")) for m in dead] == [
        (b"decode", b"2"),
        (b"featurize", b"3"),
        (b"score", b"5"),
    ]
    assert dead[0][2] == b"\x00garbage"
    assert len(sink.messages) == 5


def test_poison_event_is_isolated_by_bisection(
    build: Build,
    records: Callable[..., list[SourceRecord]],
    registry: CollectorRegistry,
) -> None:
    """A row that makes the model fail is dead-lettered with stage score; the rest are scored."""
    pipeline, sink = build(BombScorer)
    amounts = [10.0, 60.0, 20.0, POISON, 70.0, 30.0, 80.0, 5.0]

    with capture_logs() as logs:
        result = pipeline.process(records(*amounts))

    assert (result.flagged, result.unflagged, result.dead_lettered) == (3, 4, 1)
    (dead,) = sink.on(DLQ)
    assert _header(dead[3], "error.stage") == b"score"
    assert _header(dead[3], "error.type") == b"ModelError"
    assert _header(dead[3], "source.offset") == b"3"
    assert b"poison" in (_header(dead[3], "error.message") or b"")
    assert [_header(m[3], "source.offset") for m in sink.on(ALERTS)] == [b"1", b"4", b"6"]
    assert registry.get_sample_value("stream_scorer_model_bisections_total") == 1
    warnings = [e for e in logs if e["event"] == "model_failed_on_events"]
    assert [(w["bad_events"], w["batch_size"], w["log_level"]) for w in warnings] == [
        (1, 8, "warning")
    ]


def test_two_poison_events_are_both_isolated(
    build: Build, records: Callable[..., list[SourceRecord]]
) -> None:
    """Bisection finds every failing row, not just the first."""
    pipeline, sink = build(BombScorer)

    result = pipeline.process(records(POISON, 60.0, 20.0, 70.0, 30.0, POISON))

    assert result.dead_lettered == 2
    assert sorted(_header(m[3], "source.offset") for m in sink.on(DLQ)) == [b"0", b"5"]
    assert result.flagged + result.unflagged == 4


def test_model_down_is_fatal_and_produces_nothing(
    build: Build, records: Callable[..., list[SourceRecord]]
) -> None:
    """When the canary fails too, ModelError propagates and nothing is returned to publish."""
    pipeline, sink = build(DownScorer)

    with pytest.raises(ModelError, match="session lost") as caught:
        pipeline.process(records(10.0, 90.0, 30.0))

    assert isinstance(caught.value, FatalError)
    assert sink.messages == []


def test_model_up_but_failing_on_every_event_dead_letters_them(
    build: Build, records: Callable[..., list[SourceRecord]]
) -> None:
    """When every event fails alone but the canary scores, each event is a score dead letter."""
    pipeline, sink = build(PickyScorer)

    result = pipeline.process(records(10.0, 90.0, 30.0))

    assert (result.flagged, result.unflagged, result.dead_lettered) == (0, 0, 3)
    assert [_header(m[3], "error.stage") for m in sink.on(DLQ)] == [b"score"] * 3


def test_swap_model_takes_effect_at_the_next_batch(
    build: Build,
    records: Callable[..., list[SourceRecord]],
    card: ModelCard,
    write_card: WriteCard,
    alert_schema: dict[str, Any],
) -> None:
    """A model set replaced during a batch serves from the next batch; the current batch is
    scored wholly by the set it started with."""
    processing, sink = build()
    live = processing.pipeline.models
    new_card = ModelCard.load(write_card({**CARD, "name": "fake", "version": "2"}, "fake2"))
    new_set = ModelSet(_loaded(AmountScorer(new_card), threshold=0.05))

    class SwappingScorer(AmountScorer):
        def score(self, inputs: Mapping[str, NDArray[Any]]) -> NDArray[np.float64]:
            live.replace(new_set)  # a promotion lands mid-batch
            return super().score(inputs)

    live.replace(ModelSet(_loaded(SwappingScorer(card))))
    first = processing.process(records(90.0, 10.0))
    second = processing.process(records(90.0, 10.0))

    assert [(a.model_version, a.threshold) for a in first.alerts] == [("1", 0.5)]
    assert [(a.model_version, a.threshold) for a in second.alerts] == [("2", 0.05)] * 2
    assert live.current is new_set
    assert (first.scored_by, second.scored_by) == ({"fake/1": 2}, {"fake/2": 2})
    versions = [_alert(alert_schema, m[2])["model_version"] for m in sink.on(ALERTS)]
    assert versions == ["1", "2", "2"]


def test_metrics_are_updated(
    build: Build, records: Callable[..., list[SourceRecord]], registry: CollectorRegistry
) -> None:
    """Scored, flagged and dead-letter counters and the batch size move; stage times are
    returned with the result (the runner observes them with the delivery's own)."""
    pipeline, _ = build()

    first = pipeline.process(records(90.0, 10.0, b"", None, 150.0))
    pipeline.process(records(70.0))

    labels = {"model_name": "fake", "model_version": "1"}
    value = registry.get_sample_value
    assert value("stream_scorer_records_scored_total", labels) == 3
    assert value("stream_scorer_records_flagged_total", labels) == 2
    for stage, error_type in (
        ("decode", "DecodeError"),
        ("featurize", "FeatureError"),
        ("score", "ModelError"),
    ):
        assert (
            value(
                "stream_scorer_records_dead_lettered_total",
                {"stage": stage, "error_type": error_type},
            )
            == 1
        )
    assert value("stream_scorer_batch_size_count") == 2
    assert value("stream_scorer_batch_size_sum") == 6
    assert set(first.stage_s) == {"decode", "featurize", "score", "flag", "materialise", "encode"}
    assert all(seconds >= 0 for seconds in first.stage_s.values())


def test_consumed_batch_scores_like_its_records(
    build: Build, records: Callable[..., list[SourceRecord]], reader_schema: dict[str, Any]
) -> None:
    """A MessageBatch, as the consumer hands it on (read by column, records built only for
    alerts and dead letters), comes to the same alerts, rejects and latencies as its records."""
    batch = records(90.0, 10.0, b"\xff", 95.0)
    as_messages = MessageBatch(
        [
            Message(
                topic=r.topic, partition=r.partition, offset=r.offset, key=r.key, value=r.value,
                headers=list(r.headers) or None,
                timestamp=(1, r.timestamp_ms) if r.timestamp_ms else (0, -1),
            )
            for r in batch
        ]
    )  # fmt: skip
    pipeline, _ = build(decoder=ColumnarAvroDecoder(Framing(reader_schema, "plain")))

    expected = pipeline.process(batch)
    result = pipeline.process(as_messages)

    assert [a.source for a in result.alerts] == [a.source for a in expected.alerts]
    assert [a.score for a in result.alerts] == [a.score for a in expected.alerts]
    assert [r.source for r in result.rejected] == [r.source for r in expected.rejected]
    assert (result.flagged, result.dead_lettered) == (2, 1)


def test_empty_batch_does_nothing(build: Build) -> None:
    """An empty batch returns nothing to publish."""
    pipeline, sink = build()

    result = pipeline.process([])

    assert (result.consumed, result.dead_lettered, sink.messages) == (0, 0, [])


def test_dead_letters_are_logged(build: Build, records: Callable[..., list[SourceRecord]]) -> None:
    """Each dead letter logs a record_rejected warning naming the stage and offset."""
    pipeline, _ = build()

    with capture_logs() as logs:
        pipeline.process(records(10.0, b"\xff"))

    rejected = [e for e in logs if e["event"] == "record_rejected"]
    assert [(e["stage"], e["offset"], e["log_level"]) for e in rejected] == [
        ("decode", 1, "warning")
    ]


class DownRegistry:
    """A SchemaSource whose registry cannot be reached."""

    def schema_by_id(self, schema_id: int) -> dict[str, Any]:
        """Always fail like a connection refused."""
        msg = f"GET /schemas/ids/{schema_id}: unreachable"
        raise RegistryError(msg)


def test_unreachable_registry_is_fatal_and_produces_nothing(
    build: Build, reader_schema: dict[str, Any], make_record: MakeRecord
) -> None:
    """A registry outage during decode propagates as FatalError before anything is produced."""
    pipeline, sink = build(
        decoder=AvroDecoder(Framing(reader_schema, "confluent", registry=DownRegistry()))
    )

    with pytest.raises(FatalError, match="cannot fetch writer schema 7"):
        pipeline.process([make_record(b"\x00\x00\x00\x00\x07body")])

    assert sink.messages == []


def test_flagged_event_that_does_not_decode_whole_is_dead_lettered(
    build: Build,
    reader_schema: dict[str, Any],
    alert_schema: dict[str, Any],
    records: Callable[..., list[SourceRecord]],
    make_transaction: MakeTransaction,
    avro_bytes: AvroBytes,
) -> None:
    """The columnar decoder walks over strings the model does not bind without checking their
    UTF-8; an event with a broken one is scored, and when it is flagged its whole-record decode
    fails: it is dead-lettered at stage decode with its bytes, never published as an alert."""
    event = make_transaction(transaction_id="txn-bad", amount=95.0, merchant_name="Globex\u00e9")
    good = avro_bytes(reader_schema, event)
    broken = good.replace("Globex\u00e9".encode(), b"Globex\xff\xfe")
    assert broken != good and len(broken) == len(good)
    pipeline, sink = build(decoder=ColumnarAvroDecoder(Framing(reader_schema, "plain")))

    result = pipeline.process(records(90.0, broken, 10.0))

    assert (result.flagged, result.unflagged, result.dead_lettered) == (1, 1, 1)
    assert [_alert(alert_schema, m[2])["source_offset"] for m in sink.on(ALERTS)] == [0]
    [dead] = sink.on(DLQ)
    assert dead[2] == broken
    assert _header(dead[3], "error.stage") == b"decode"
    assert _header(dead[3], "source.offset") == b"1"


def test_dead_letters_name_the_model_version_live_for_their_batch(
    build: Build, records: Callable[..., list[SourceRecord]]
) -> None:
    """Every dead letter, whatever its stage, names the model version live for its batch."""
    pipeline, sink = build()

    pipeline.process(records(10.0, b"\xff", None, 150.0))

    dead = sink.on(DLQ)
    assert len(dead) == 3
    assert {(_header(m[3], "model.name"), _header(m[3], "model.version")) for m in dead} == {
        (b"fake", b"1")
    }
