"""Fuzzing the decoder and the pipeline with random and mutated Avro: never an exception, every
input accounted for as scored (alert or unflagged) or dead-lettered with its original bytes.

Inputs are valid transactions framed in each wire format (Confluent, plain, single-object),
then truncated, bit-flipped, spliced with another message, extended, or replaced by random
bytes. The pipeline runs with the shipped model; what it returns to publish is recorded.
"""

from __future__ import annotations

import io
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_scorer.app import build_alert_encoder, build_decoder, load_model, load_schema
from stream_scorer.consume import MessageBatch
from stream_scorer.decode import AvroDecoder, Framing, frame_body
from stream_scorer.devtools.generate import TransactionGenerator
from stream_scorer.model_set import LiveModels, ModelSet
from stream_scorer.pipeline import Pipeline
from stream_scorer.records import Header, SourceRecord
from stream_scorer.registry import SchemaNotFoundError
from stream_scorer.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[2]
READER = load_schema(REPO / "schemas/transaction.avsc", "reader")
PARSED = fastavro.parse_schema(READER)
#: Registry id of the reader schema in the fake registry.
SCHEMA_ID = 1
WIRE_FORMATS = ("confluent", "plain", "single-object")
#: Valid events the mutations start from.
BASE_EVENTS, _ = TransactionGenerator(seed=81).generate(200)
ALERTS, DLQ = "alerts", "dlq"
#: Inputs of the long (slow) fuzz run, per wire format.
LONG_RUN_INPUTS = 50_000


class FakeRegistry:
    """Knows the reader schema under id 1 and nothing else."""

    def schema_by_id(self, schema_id: int) -> dict[str, Any]:
        """The reader schema, or SchemaNotFoundError."""
        if schema_id == SCHEMA_ID:
            return dict(READER)
        msg = f"schema {schema_id} not found"
        raise SchemaNotFoundError(msg)


class RecordingSink:
    """Keeps every message the pipeline returned to publish."""

    def __init__(self) -> None:
        """Empty."""
        self.messages: list[tuple[str, bytes | None, bytes | None, Sequence[Header]]] = []


def fuzz_settings(wire_format: str) -> Settings:
    """Settings of one wire format with the shipped model."""
    return load_settings(
        None,
        {
            "schema": {
                "wire_format": wire_format,
                "registry_url": "http://registry.invalid" if wire_format == "confluent" else None,
                "reader": str(REPO / "schemas/transaction.avsc"),
                "alert": str(REPO / "schemas/alert.avsc"),
            },
            "model": {"path": str(REPO / "models/fraud/1")},
        },
        environ={},
    )


def encode(event: dict[str, Any], wire_format: str) -> bytes:
    """A valid framed message."""
    body = io.BytesIO()
    fastavro.schemaless_writer(body, PARSED, event)
    return frame_body(wire_format, body.getvalue(), schema_id=SCHEMA_ID, schema=READER)  # type: ignore[arg-type]


def mutate(value: bytes, other: bytes, rng: random.Random) -> bytes:
    """One random mutation of ``value`` (or ``value`` itself)."""
    kind = rng.randrange(7)
    if kind == 0 or not value:
        return value
    if kind == 1:
        return value[: rng.randrange(len(value))]
    if kind == 2:
        data = bytearray(value)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        return bytes(data)
    if kind == 3:
        return value[: rng.randrange(len(value))] + other[rng.randrange(len(other)) :]
    if kind == 4:
        return value + rng.randbytes(rng.randint(1, 8))
    if kind == 5:
        data = bytearray(value)
        data[rng.randrange(len(data))] = rng.choice((0x00, 0x7F, 0x80, 0xFF))
        return bytes(data)
    return rng.randbytes(rng.randint(0, 64))


def records_for(values: Sequence[bytes | None]) -> MessageBatch:
    """A batch of records at consecutive offsets of partition 0."""
    return MessageBatch.from_records(
        [
            SourceRecord("transactions", 0, offset, b"key", value, (), 1_767_225_600_000)
            for offset, value in enumerate(values)
        ]
    )


_PIPELINES: dict[str, tuple[AvroDecoder, Pipeline, RecordingSink]] = {}


def pipeline_for(wire_format: str) -> tuple[AvroDecoder, Pipeline, RecordingSink]:
    """A reference decoder and a pipeline with the shipped model (built once per format)."""
    if wire_format not in _PIPELINES:
        config = fuzz_settings(wire_format)
        registry = FakeRegistry() if wire_format == "confluent" else None
        reference = AvroDecoder(Framing(READER, wire_format, (), registry))  # type: ignore[arg-type]
        sink = RecordingSink()
        pipeline = Pipeline(
            build_decoder(config, READER, registry),  # type: ignore[arg-type]
            LiveModels(ModelSet(load_model(config, READER))),
            build_alert_encoder(config, None) if wire_format != "confluent" else _encoder(),
            ALERTS,
            DLQ,
            "fuzz",
        )
        _PIPELINES[wire_format] = (reference, pipeline, sink)
    return _PIPELINES[wire_format]


def _encoder() -> Any:
    # Alerts of the confluent format need a registered schema id; plain framing is enough here.
    return build_alert_encoder(fuzz_settings("plain"), None)


def check_batch(wire_format: str, values: list[bytes | None], parity: bool = False) -> None:
    """Decode and score ``values``: no exception, and every input accounted for exactly once.

    With ``parity``, also: whatever the reference decoder rejects the pipeline dead-letters.
    """
    decoder, pipeline, sink = pipeline_for(wire_format)
    records = records_for(values)
    events, rejected = decoder.decode_batch(records)
    assert len(events) + len(rejected) == len(records)
    assert {e.source.offset for e in events}.isdisjoint(r.source.offset for r in rejected)
    for reject in rejected:
        assert reject.source.value == values[reject.source.offset]
        assert reject.stage == "decode" and reject.message

    sink.messages.clear()
    output = pipeline.process(records)
    sink.messages.extend(output.messages)
    result = output.result
    assert result.consumed == len(records)
    assert result.flagged + result.unflagged + result.dead_lettered == len(records)
    dead = [m for m in sink.messages if m[0] == DLQ]
    alerts = [m for m in sink.messages if m[0] == ALERTS]
    assert len(dead) == result.dead_lettered and len(alerts) == result.flagged
    originals = {record.value for record in records}
    for _, _, value, headers in dead:
        assert value in originals, "a dead letter carries the original bytes"
        names = {name for name, _ in headers}
        assert {"error.type", "error.message", "source.offset"} <= names
    offsets = [int(dict(h)["source.offset"]) for *_, h in dead]
    assert len(offsets) == len(set(offsets)), "one dead letter per bad input"
    if parity:
        # The columnar decoder walks over fields the model does not bind without validating
        # their contents (UTF-8 of a string, say), so such an event may be scored; but it never
        # alerts: its whole-record decode, done only when flagged, dead-letters it instead.
        bad_offsets = {r.source.offset for r in rejected}
        alerted = {int(dict(h)["source.offset"]) for *_, h in alerts}
        assert not alerted & bad_offsets, "an event the reference decoder rejects alerted"
        missed = bad_offsets - set(offsets)
        if missed:
            scored = {r.source.offset for r in result.alerts}
            assert not missed & scored
            assert result.unflagged >= len(missed)


#: Which base event to mutate, and the seed of its mutation; 1 to 40 per batch.
PICKS = st.lists(
    st.tuples(st.integers(0, len(BASE_EVENTS) - 1), st.integers(0, 2**32 - 1)),
    min_size=1,
    max_size=40,
)


def mutated(wire_format: str, picks: list[tuple[int, int]]) -> list[bytes | None]:
    """One mutated message per pick: the picked base event, framed and mutated by its seed."""
    values: list[bytes | None] = []
    for index, seed in picks:
        rng = random.Random(seed)
        other = encode(BASE_EVENTS[rng.randrange(len(BASE_EVENTS))], wire_format)
        values.append(mutate(encode(BASE_EVENTS[index], wire_format), other, rng))
    return values


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    wire_format=st.sampled_from(WIRE_FORMATS),
    picks=PICKS,
    junk=st.lists(st.binary(max_size=80), max_size=5),
)
def test_mutated_avro_is_scored_or_dead_lettered(
    wire_format: str, picks: list[tuple[int, int]], junk: list[bytes]
) -> None:
    """Any mix of valid, mutated and random messages is decoded and scored without an
    exception, each input ending as an alert, unflagged or a dead letter with its bytes."""
    values: list[bytes | None] = [*mutated(wire_format, picks), *junk]
    check_batch(wire_format, values)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    wire_format=st.sampled_from(WIRE_FORMATS),
    picks=PICKS,
)
def test_pipeline_dead_letters_what_the_reference_decoder_rejects(
    wire_format: str, picks: list[tuple[int, int]]
) -> None:
    """A message the reference AvroDecoder rejects is never an alert: it is dead-lettered, or (only
    when what is malformed is a field the model does not read) counted as unflagged."""
    check_batch(wire_format, mutated(wire_format, picks), parity=True)


@given(value=st.one_of(st.none(), st.binary(max_size=300)))
@settings(max_examples=300, deadline=None)
def test_random_bytes_never_raise(value: bytes | None) -> None:
    """Arbitrary bytes (or a tombstone) in every wire format become a decoded event or a reject."""
    for wire_format in WIRE_FORMATS:
        decoder, _, _ = pipeline_for(wire_format)
        events, rejected = decoder.decode_batch(records_for([value]))
        assert len(events) + len(rejected) == 1


@pytest.mark.slow
@pytest.mark.parametrize("wire_format", WIRE_FORMATS)
def test_long_fuzz_run(wire_format: str) -> None:
    """A seeded run of 50,000 mutated inputs per wire format, in batches of 500, through the
    decoder and the pipeline: no exception and every input accounted for."""
    rng = random.Random(f"long-fuzz-{wire_format}")
    encoded = [encode(event, wire_format) for event in BASE_EVENTS]
    for _ in range(LONG_RUN_INPUTS // 500):
        values: list[bytes | None] = [
            mutate(rng.choice(encoded), rng.choice(encoded), rng) for _ in range(500)
        ]
        check_batch(wire_format, values)


class PoisonRegistry(FakeRegistry):
    """Also knows, under id 7, the reader plus one array-of-null field."""

    def schema_by_id(self, schema_id: int) -> dict[str, Any]:
        """The reader (id 1), the poison writer (id 7), or SchemaNotFoundError."""
        if schema_id == 7:
            writer = dict(READER)
            pad = {"name": "pad", "type": {"type": "array", "items": "null"}}
            writer["fields"] = [*READER["fields"], pad]
            return writer
        return super().schema_by_id(schema_id)


@pytest.mark.parametrize("kind", ["columnar", "record"])
def test_poison_pills_among_good_events_are_dead_lettered_fast(kind: str) -> None:
    """The review's scenario without the broker: 20 ~360-byte messages declaring 60 blocks of
    65,536 nulls among 2,000 good events. Every good event is scored and each pill
    dead-lettered for the item budget (issue 12, finding 1; fails without it: the pills are
    walked, ~32 s each, and scored)."""
    config = load_settings(
        None,
        {
            "schema": {
                "wire_format": "confluent",
                "registry_url": "http://registry.invalid",
                "decoder": kind,
                "reader": str(REPO / "schemas/transaction.avsc"),
                "alert": str(REPO / "schemas/alert.avsc"),
            },
            "model": {"path": str(REPO / "models/fraud/1")},
        },
        environ={},
    )
    registry = PoisonRegistry()
    sink = RecordingSink()
    pipeline = Pipeline(
        build_decoder(config, READER, registry),  # type: ignore[arg-type]
        LiveModels(ModelSet(load_model(config, READER))),
        _encoder(),
        ALERTS,
        DLQ,
        "poison",
    )
    events, _ = TransactionGenerator(seed=12).generate(2_000)
    values: list[bytes | None] = [encode(e, "confluent") for e in events]
    pill_tail = b"\x80\x80\x08" * 60 + b"\x00"  # 60 blocks of 65,536 nulls, then the end
    for k in range(20):
        at = 50 + k * 97
        body = io.BytesIO()
        fastavro.schemaless_writer(body, PARSED, events[at])
        values[at] = frame_body("confluent", body.getvalue() + pill_tail, schema_id=7)
    pills = {50 + k * 97 for k in range(20)}
    output = pipeline.process(records_for(values))
    sink.messages.extend(output.messages)
    result = output.result
    assert result.consumed == 2_000
    assert result.dead_lettered == 20
    assert result.flagged + result.unflagged == 1_980
    dead = [dict(h) for topic, _, _, h in sink.messages if topic == DLQ]
    assert {int(h["source.offset"]) for h in dead} == pills
    # The first 16 spend the batch's budget (their first blocks fit the record's), so the
    # last ones are refused by it: either way, for the item budget.
    reasons = [h["error.message"] for h in dead]
    assert all(b"MAX_RECORD_ITEMS" in r or b"MAX_BATCH_ITEMS" in r for r in reasons), reasons
    assert sum(b"MAX_RECORD_ITEMS" in r for r in reasons) == 16
