"""The columnar batch decoder gives what the fastavro record decoder gives, batch for batch."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pytest

from stream_scorer.consume import MessageBatch
from stream_scorer.decode import AvroDecoder, ColumnarAvroDecoder, Framing, WireFormat, frame_body
from stream_scorer.devtools.devregistry import DevSchemaRegistry
from stream_scorer.devtools.generate import TransactionGenerator
from stream_scorer.records import DecodedBatch, SourceRecord
from stream_scorer.registry import SchemaRegistryClient

FIELDS = (
    "amount", "merchant_category", "channel", "card_present", "country",
    "distance_from_home_km", "txn_count_1h", "seconds_since_last_txn", "event_time",
)  # fmt: skip

AvroBytes = Callable[[Mapping[str, Any], Any], bytes]


def _records(values: list[bytes | None]) -> MessageBatch:
    return MessageBatch.from_records(
        [SourceRecord("in", i % 3, i, b"k%d" % i, v, (), 1) for i, v in enumerate(values)]
    )


def _column_values(batch: DecodedBatch, name: str) -> list[Any]:
    values = batch.columns[name].to_objects().tolist()
    return [None if isinstance(v, float) and math.isnan(v) else v for v in values]


def _assert_same(columnar: DecodedBatch, reference: DecodedBatch) -> None:
    assert [r.offset for r in columnar.records] == [r.offset for r in reference.records]
    assert [(r.source.offset, r.stage) for r in columnar.rejected] == [
        (r.source.offset, r.stage) for r in reference.rejected
    ]
    for name in FIELDS:
        assert _column_values(columnar, name) == _column_values(reference, name), name
    for i in range(len(columnar.records)):
        assert columnar.event_at(i).fields == reference.event_at(i).fields


@pytest.mark.parametrize("wire_format", ["plain", "confluent", "single-object"])
def test_columnar_equals_record_decoder_on_generated_events(
    wire_format: WireFormat,
    reader_schema: dict[str, Any],
    avro_bytes: AvroBytes,
    dev_registry: DevSchemaRegistry,
) -> None:
    """On 2,000 generated events with bad values mixed in, both decoders keep and reject the
    same records and give the same bound fields and whole events."""
    client = SchemaRegistryClient(dev_registry.url) if wire_format == "confluent" else None
    schema_id = client.register("batch-test-value", reader_schema) if client else 0
    events, _ = TransactionGenerator(seed=5).generate(2_000)
    values: list[bytes | None] = []
    for i, event in enumerate(events):
        framed = frame_body(wire_format, avro_bytes(reader_schema, event), schema_id, reader_schema)
        if i % 97 == 3:
            framed = framed[: len(framed) - 7]  # truncated
        elif i % 97 == 5:
            framed = framed + b"\x00"  # trailing byte
        elif i % 97 == 7:
            framed = None  # tombstone
        values.append(framed)
    records = _records(values)
    columnar = ColumnarAvroDecoder(Framing(reader_schema, wire_format, (), client))
    reference = AvroDecoder(Framing(reader_schema, wire_format, (), client))
    result = columnar.decode(records, FIELDS)
    _assert_same(result, reference.decode(records, FIELDS))
    assert len(result.rejected) == len([i for i in range(2_000) if i % 97 in (3, 5, 7)])


def test_schema_change_mid_batch_keeps_batch_order(
    reader_schema: dict[str, Any], avro_bytes: AvroBytes, dev_registry: DevSchemaRegistry
) -> None:
    """Events of two writer schemas interleaved in one batch come back in batch order, each
    resolved against the reader schema (a dropped field takes the reader's default)."""
    client = SchemaRegistryClient(dev_registry.url)
    v1 = client.register("mid-batch-value", reader_schema)
    evolved = json.loads(json.dumps(reader_schema))
    evolved["fields"] = [f for f in evolved["fields"] if f["name"] != "is_new_device"]
    evolved["fields"].append({"name": "loyalty_tier", "type": "string", "default": "none"})
    v2 = client.register("mid-batch-value", evolved)
    events, _ = TransactionGenerator(seed=8).generate(300)
    values: list[bytes | None] = []
    for i, event in enumerate(events):
        if i % 3 == 0:
            values.append(
                frame_body("confluent", avro_bytes(evolved, {**event, "loyalty_tier": "x"}), v2)
            )
        else:
            values.append(frame_body("confluent", avro_bytes(reader_schema, event), v1))
    records = _records(values)
    result = ColumnarAvroDecoder(Framing(reader_schema, "confluent", (), client)).decode(
        records, FIELDS
    )
    _assert_same(
        result, AvroDecoder(Framing(reader_schema, "confluent", (), client)).decode(records, FIELDS)
    )
    assert result.event_at(0).fields["is_new_device"] is False


def test_unknown_schema_id_between_good_values_is_rejected_alone(
    reader_schema: dict[str, Any], avro_bytes: AvroBytes, dev_registry: DevSchemaRegistry
) -> None:
    """A value naming an unknown schema id is rejected even when its neighbours share a header
    (the header fast path compares bytes, it does not trust position)."""
    client = SchemaRegistryClient(dev_registry.url)
    schema_id = client.register("fast-path-value", reader_schema)
    events, _ = TransactionGenerator(seed=9).generate(10)
    values: list[bytes | None] = [
        frame_body("confluent", avro_bytes(reader_schema, e), schema_id) for e in events
    ]
    values[4] = frame_body("confluent", avro_bytes(reader_schema, events[4]), 424_242)
    result = ColumnarAvroDecoder(Framing(reader_schema, "confluent", (), client)).decode(
        _records(values), FIELDS
    )
    assert [r.source.offset for r in result.rejected] == [4]
    assert "unknown schema id 424242" in result.rejected[0].message
    assert len(result.records) == 9


def test_only_requested_fields_become_columns(
    reader_schema: dict[str, Any], avro_bytes: AvroBytes
) -> None:
    """Decode returns exactly the requested fields as columns; whole events only on demand."""
    events, _ = TransactionGenerator(seed=10).generate(100)
    records = _records([avro_bytes(reader_schema, e) for e in events])
    result = ColumnarAvroDecoder(Framing(reader_schema, "plain")).decode(
        records, ("amount", "channel")
    )
    assert set(result.columns) == {"amount", "channel"}
    assert np.allclose(result.columns["amount"].to_numpy(np.float64), [e["amount"] for e in events])
    assert result.columns["channel"].to_objects().tolist() == [e["channel"] for e in events]
    assert result.event_at(42).fields["transaction_id"] == events[42]["transaction_id"]


def test_writer_that_cannot_be_resolved_rejects_its_records(
    reader_schema: dict[str, Any], avro_bytes: AvroBytes
) -> None:
    """A plain-format writer the reader cannot resolve (a bound field changes type) rejects every
    record with the reason instead of raising."""
    writer = json.loads(json.dumps(reader_schema))
    for field in writer["fields"]:
        if field["name"] == "amount":
            field["type"] = "string"
    events, _ = TransactionGenerator(seed=11).generate(5)
    values: list[bytes | None] = [avro_bytes(writer, {**e, "amount": "12.5"}) for e in events]
    result = ColumnarAvroDecoder(Framing(reader_schema, "plain", [writer])).decode(
        _records(values), FIELDS
    )
    assert len(result.records) == 0
    assert len(result.rejected) == 5
    assert all("cannot be read as the reader schema" in r.message for r in result.rejected)


class _ThresholdScorer:
    """Scores 1.0 when amount is over 500, else 0.0: a fake :class:`Scorer`."""

    def __init__(self, card: Any) -> None:
        self.card = card

    def score(self, inputs: Mapping[str, Any]) -> np.ndarray[Any, Any]:
        return (inputs["amount"][:, 0] > 500).astype(np.float64)


def test_pipeline_decodes_whole_events_only_for_alerts(
    reader_schema: dict[str, Any], avro_bytes: AvroBytes, alert_schema: dict[str, Any]
) -> None:
    """Only the flagged events are decoded whole; the rest exist only as model columns."""
    from pathlib import Path  # noqa: PLC0415

    from stream_scorer.encode import AlertEncoder  # noqa: PLC0415
    from stream_scorer.featurize import FeatureBuilder  # noqa: PLC0415
    from stream_scorer.model_card import ModelCard  # noqa: PLC0415
    from stream_scorer.model_set import LiveModels, LoadedModel, ModelSet  # noqa: PLC0415
    from stream_scorer.pipeline import Pipeline  # noqa: PLC0415

    card = ModelCard.load(Path(__file__).resolve().parents[2] / "models/fraud/1")
    model = LoadedModel(_ThresholdScorer(card), FeatureBuilder(card), 0.5, {})
    decoder = ColumnarAvroDecoder(Framing(reader_schema, "plain"))
    whole: list[int] = []
    original = decoder.decode

    def counting(records: Any, fields: Any) -> DecodedBatch:
        batch = original(records, fields)

        def event_at(i: int) -> Any:
            whole.append(i)
            return batch.event_at(i)

        return DecodedBatch(batch.records, batch.columns, batch.rejected, event_at)

    decoder.decode = counting  # type: ignore[method-assign]  # count whole-event decodes
    events, _ = TransactionGenerator(seed=12).generate(1_000)
    records = _records([avro_bytes(reader_schema, e) for e in events])
    pipeline = Pipeline(
        decoder, LiveModels(ModelSet(model)), AlertEncoder(alert_schema, b"", "t"), "a", "d", "t"
    )
    result = pipeline.process(records).result
    flagged = sum(e["amount"] > 500 for e in events)
    assert 0 < result.flagged == flagged < 1_000
    assert len(whole) == flagged
