"""Stage 2, decode: every Avro type through every wire format, evolution, rejects, fatal errors."""

from __future__ import annotations

import copy
import datetime as dt
import socket
import struct
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import fastavro
import pytest

from stream_scorer.decode import (
    CONFLUENT_MAGIC,
    SINGLE_OBJECT_MAGIC,
    AvroDecoder,
    Framing,
    WireFormat,
    fingerprint,
    frame_body,
)
from stream_scorer.devtools.devregistry import DevSchemaRegistry
from stream_scorer.errors import DecodeError, FatalError
from stream_scorer.records import Event, Rejected, SourceRecord
from stream_scorer.registry import RegistryError, SchemaNotFoundError, SchemaRegistryClient

UTC = dt.UTC
MakeRecord = Callable[..., SourceRecord]
MakeTransaction = Callable[..., dict[str, Any]]
AvroBytes = Callable[[Any, Any], bytes]
WIRE_FORMATS: tuple[WireFormat, ...] = ("confluent", "plain", "single-object")


def _record_schema(field_type: Any, name: str = "Probe") -> dict[str, Any]:
    """A record schema with an ``id`` string and one field ``f`` of ``field_type``."""
    return {
        "type": "record",
        "name": name,
        "namespace": "test.decode",
        "fields": [{"name": "id", "type": "string"}, {"name": "f", "type": field_type}],
    }


# (case id, Avro type of field "f", value written, value the decoder must return)
ROUND_TRIPS: list[tuple[str, Any, Any, Any]] = [
    ("null", "null", None, None),
    ("boolean-true", "boolean", True, True),
    ("boolean-false", "boolean", False, False),
    ("int-min", "int", -(2**31), -(2**31)),
    ("int-max", "int", 2**31 - 1, 2**31 - 1),
    ("long-max", "long", 2**63 - 1, 2**63 - 1),
    ("long-negative", "long", -(2**40), -(2**40)),
    ("float", "float", 1.5, 1.5),
    ("double", "double", 0.1, 0.1),
    ("double-negative-zero", "double", -0.0, -0.0),
    ("bytes", "bytes", b"\x00\xff\x10", b"\x00\xff\x10"),
    ("bytes-empty", "bytes", b"", b""),
    ("string-unicode", "string", "h\u00e9llo \u2713 \U0001f600", "h\u00e9llo \u2713 \U0001f600"),
    ("string-empty", "string", "", ""),
    ("fixed", {"type": "fixed", "name": "Four", "size": 4}, b"abcd", b"abcd"),
    (
        "enum",
        {"type": "enum", "name": "Colour", "symbols": ["RED", "GREEN", "BLUE"]},
        "BLUE",
        "BLUE",
    ),
    ("array", {"type": "array", "items": "int"}, [1, -2, 3], [1, -2, 3]),
    ("array-empty", {"type": "array", "items": "string"}, [], []),
    ("map", {"type": "map", "values": "double"}, {"a": 1.0, "b": -2.5}, {"a": 1.0, "b": -2.5}),
    (
        "nested-record",
        {
            "type": "record",
            "name": "Inner",
            "fields": [
                {"name": "x", "type": "int"},
                {"name": "tags", "type": {"type": "array", "items": "string"}},
                {
                    "name": "deep",
                    "type": {
                        "type": "record",
                        "name": "Deep",
                        "fields": [{"name": "ok", "type": "boolean"}],
                    },
                },
            ],
        },
        {"x": 7, "tags": ["a", "b"], "deep": {"ok": True}},
        {"x": 7, "tags": ["a", "b"], "deep": {"ok": True}},
    ),
    ("nullable-union-null", ["null", "string"], None, None),
    ("nullable-union-value", ["null", "string"], "x", "x"),
    ("nullable-union-value-first", ["long", "null"], 5, 5),
    (
        "timestamp-millis",
        {"type": "long", "logicalType": "timestamp-millis"},
        dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
        dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
    ),
    (
        "timestamp-millis-from-int",
        {"type": "long", "logicalType": "timestamp-millis"},
        1_767_225_600_000,
        dt.datetime(2026, 1, 1, tzinfo=UTC),
    ),
    (
        "timestamp-micros",
        {"type": "long", "logicalType": "timestamp-micros"},
        dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
    ),
    ("date", {"type": "int", "logicalType": "date"}, dt.date(2026, 2, 28), dt.date(2026, 2, 28)),
    (
        "decimal-bytes",
        {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2},
        Decimal("-1234.56"),
        Decimal("-1234.56"),
    ),
    (
        "decimal-fixed",
        {
            "type": "fixed",
            "name": "Money",
            "size": 8,
            "logicalType": "decimal",
            "precision": 12,
            "scale": 3,
        },
        Decimal("98765.432"),
        Decimal("98765.432"),
    ),
    (
        "nullable-timestamp",
        ["null", {"type": "long", "logicalType": "timestamp-millis"}],
        dt.datetime(2026, 1, 1, tzinfo=UTC),
        dt.datetime(2026, 1, 1, tzinfo=UTC),
    ),
]


class CountingSource:
    """A fake ``SchemaSource`` that serves fixed schemas and counts lookups per id."""

    def __init__(self, schemas: dict[int, dict[str, Any]]) -> None:
        """Serve ``schemas`` by id."""
        self.schemas = schemas
        self.calls: list[int] = []

    def schema_by_id(self, schema_id: int) -> dict[str, Any]:
        """The schema under ``schema_id``, or SchemaNotFoundError like the real client."""
        self.calls.append(schema_id)
        if schema_id not in self.schemas:
            msg = f"schema {schema_id} not found"
            raise SchemaNotFoundError(msg)
        return copy.deepcopy(self.schemas[schema_id])


class BrokenSource:
    """A fake ``SchemaSource`` whose registry is down."""

    def schema_by_id(self, schema_id: int) -> dict[str, Any]:
        """Always fail like an unreachable registry."""
        msg = f"GET /schemas/ids/{schema_id}: registry unreachable"
        raise RegistryError(msg)


Framer = Callable[[dict[str, Any], dict[str, Any]], tuple[AvroDecoder, bytes]]


@pytest.fixture
def framer(
    dev_registry: DevSchemaRegistry, avro_bytes: AvroBytes
) -> Iterator[Callable[[WireFormat], Framer]]:
    """``framer(fmt)(writer, record)`` → a decoder for ``fmt`` and the framed value.

    The returned decoder reads with the writer schema as reader; tests that need a different
    reader build their own decoder.
    """

    def for_format(wire_format: WireFormat) -> Framer:
        def frame(writer: dict[str, Any], record: dict[str, Any]) -> tuple[AvroDecoder, bytes]:
            body = avro_bytes(writer, record)
            if wire_format == "confluent":
                client = SchemaRegistryClient(dev_registry.url)
                schema_id = client.register("probe-value", writer)
                decoder = AvroDecoder(Framing(writer, "confluent", registry=SchemaRegistryClient(
                    dev_registry.url)))  # fmt: skip
                return decoder, frame_body("confluent", body, schema_id=schema_id)
            if wire_format == "single-object":
                return AvroDecoder(Framing(writer, "single-object")), frame_body(
                    "single-object", body, schema=writer
                )
            return AvroDecoder(Framing(writer, "plain")), body

        return frame

    yield for_format


def _framed(
    avro_bytes: AvroBytes,
    wire_format: WireFormat,
    writer: dict[str, Any],
    reader: dict[str, Any],
    record: dict[str, Any],
    registry_url: str,
) -> tuple[AvroDecoder, bytes]:
    """A decoder reading ``reader`` and ``record`` written with ``writer`` in ``wire_format``."""
    body = avro_bytes(writer, record)
    if wire_format == "confluent":
        schema_id = SchemaRegistryClient(registry_url).register("evolve-value", writer)
        decoder = AvroDecoder(
            Framing(reader, "confluent", registry=SchemaRegistryClient(registry_url))
        )
        return decoder, frame_body("confluent", body, schema_id=schema_id)
    if wire_format == "single-object":
        decoder = AvroDecoder(Framing(reader, "single-object", writer_schemas=[writer]))
        return decoder, frame_body("single-object", body, schema=writer)
    return AvroDecoder(Framing(reader, "plain", writer_schemas=[writer])), body


@pytest.mark.parametrize("wire_format", WIRE_FORMATS)
@pytest.mark.parametrize(
    ("field_type", "written", "expected"),
    [pytest.param(t, w, e, id=case) for case, t, w, e in ROUND_TRIPS],
)
def test_round_trip_of_every_avro_type(
    wire_format: WireFormat,
    field_type: Any,
    written: Any,
    expected: Any,
    framer: Callable[[WireFormat], Framer],
    make_record: MakeRecord,
) -> None:
    """A value of each supported Avro type decodes back to the same value in each wire format."""
    schema = _record_schema(field_type)
    decoder, value = framer(wire_format)(schema, {"id": "e1", "f": written})

    events, rejected = decoder.decode_batch([make_record(value)])

    assert rejected == []
    assert len(events) == 1
    assert events[0].fields == {"id": "e1", "f": expected}
    assert type(events[0].fields["f"]) is type(expected)


@pytest.mark.parametrize("wire_format", WIRE_FORMATS)
def test_transaction_round_trip_keeps_source_and_writer_id(
    wire_format: WireFormat,
    reader_schema: dict[str, Any],
    framer: Callable[[WireFormat], Framer],
    make_record: MakeRecord,
    make_transaction: MakeTransaction,
) -> None:
    """A full Transaction decodes to its fields and points back at its record and writer."""
    decoder, value = framer(wire_format)(reader_schema, make_transaction(device_id="dev-1"))
    record = make_record(value, offset=41, partition=3)

    (event,), rejected = decoder.decode_batch([record])

    assert rejected == []
    assert event.source is record
    expected = make_transaction(device_id="dev-1")
    expected["event_time"] = dt.datetime(2026, 1, 1, tzinfo=UTC)
    assert event.fields == expected
    if wire_format == "plain":
        assert event.writer_id == 0
    elif wire_format == "single-object":
        assert event.writer_id == fingerprint(reader_schema)
    else:
        assert event.writer_id == struct.unpack(">I", value[1:5])[0]


# (case id, writer type of "f" or None for absent, reader field spec or None, written, expected)
EVOLUTIONS: list[tuple[str, Any, Any, dict[str, Any], dict[str, Any]]] = [
    (
        "reader-adds-field-with-default",
        None,
        {"name": "f", "type": "int", "default": 7},
        {"id": "a"},
        {"id": "a", "f": 7},
    ),
    (
        "reader-adds-nullable-field",
        None,
        {"name": "f", "type": ["null", "string"], "default": None},
        {"id": "a"},
        {"id": "a", "f": None},
    ),
    ("writer-field-removed-by-reader", "string", None, {"id": "a", "f": "gone"}, {"id": "a"}),
    ("int-to-long", "int", {"name": "f", "type": "long"}, {"id": "a", "f": 5}, {"id": "a", "f": 5}),
    (
        "float-to-double",
        "float",
        {"name": "f", "type": "double"},
        {"id": "a", "f": 0.5},
        {"id": "a", "f": 0.5},
    ),
    (
        "int-to-double",
        "int",
        {"name": "f", "type": "double"},
        {"id": "a", "f": 3},
        {"id": "a", "f": 3.0},
    ),
    (
        "long-to-float",
        "long",
        {"name": "f", "type": "float"},
        {"id": "a", "f": 4},
        {"id": "a", "f": 4.0},
    ),
    (
        "plain-to-nullable",
        "double",
        {"name": "f", "type": ["null", "double"], "default": None},
        {"id": "a", "f": 2.5},
        {"id": "a", "f": 2.5},
    ),
    (
        "string-to-bytes",
        "string",
        {"name": "f", "type": "bytes"},
        {"id": "a", "f": "hi"},
        {"id": "a", "f": b"hi"},
    ),
]


def _evolution_schema(extra: dict[str, Any] | None) -> dict[str, Any]:
    fields: list[dict[str, Any]] = [{"name": "id", "type": "string"}]
    if extra is not None:
        fields.append(extra)
    return {"type": "record", "name": "Probe", "namespace": "test.decode", "fields": fields}


@pytest.mark.parametrize("wire_format", WIRE_FORMATS)
@pytest.mark.parametrize(
    ("writer_type", "reader_field", "written", "expected"),
    [pytest.param(w, r, x, e, id=case) for case, w, r, x, e in EVOLUTIONS],
)
def test_evolved_writer_decodes_to_the_reader_shape(
    wire_format: WireFormat,
    writer_type: Any,
    reader_field: dict[str, Any] | None,
    written: dict[str, Any],
    expected: dict[str, Any],
    dev_registry: DevSchemaRegistry,
    make_record: MakeRecord,
    avro_bytes: AvroBytes,
) -> None:
    """An event written with a compatible writer schema decodes to the reader schema's fields."""
    writer = _evolution_schema(None if writer_type is None else {"name": "f", "type": writer_type})
    reader = _evolution_schema(reader_field)
    decoder, value = _framed(avro_bytes, wire_format, writer, reader, written, dev_registry.url)

    events, rejected = decoder.decode_batch([make_record(value)])

    assert rejected == []
    assert [e.fields for e in events] == [expected]
    assert type(events[0].fields.get("f")) is type(expected.get("f"))


@pytest.mark.parametrize("wire_format", WIRE_FORMATS)
def test_older_transaction_writer_decodes_to_current_reader(
    wire_format: WireFormat,
    reader_schema: dict[str, Any],
    dev_registry: DevSchemaRegistry,
    make_record: MakeRecord,
    avro_bytes: AvroBytes,
    make_transaction: MakeTransaction,
) -> None:
    """A v0 Transaction (int amount-free count, no is_new_device, an extra field) reads as v1."""
    writer = copy.deepcopy(reader_schema)
    writer["fields"] = [f for f in writer["fields"] if f["name"] != "is_new_device"]
    for field in writer["fields"]:
        if field["name"] == "amount":
            field["type"] = "float"
    writer["fields"].append({"name": "legacy_flag", "type": "string"})
    written = make_transaction(amount=12.25, legacy_flag="x")
    del written["is_new_device"]
    decoder, value = _framed(
        avro_bytes, wire_format, writer, reader_schema, written, dev_registry.url
    )

    (event,), rejected = decoder.decode_batch([make_record(value)])

    assert rejected == []
    assert set(event.fields) == {f["name"] for f in reader_schema["fields"]}
    assert event.fields["is_new_device"] is False
    assert event.fields["amount"] == 12.25
    assert isinstance(event.fields["amount"], float)
    assert "legacy_flag" not in event.fields


# (case id, wire format, bad value from (good framed value, framed body), message fragment)
REJECTS: list[tuple[str, WireFormat, Callable[[bytes], bytes | None], str]] = [
    (
        "confluent-garbage",
        "confluent",
        lambda good: b"hello, not avro",
        "not Confluent wire format",
    ),
    ("confluent-wrong-magic", "confluent", lambda good: b"\x01" + good[1:], "magic byte 0"),
    ("confluent-empty", "confluent", lambda good: b"", "got 0 bytes"),
    ("confluent-header-only-short", "confluent", lambda good: good[:3], "4-byte schema id"),
    ("confluent-tombstone", "confluent", lambda good: None, "tombstone"),
    ("confluent-truncated", "confluent", lambda good: good[:-4], "invalid Avro body"),
    ("confluent-header-no-body", "confluent", lambda good: good[:5], "invalid Avro body"),
    ("confluent-trailing", "confluent", lambda good: good + b"\x00\x01", "2 trailing bytes"),
    (
        "confluent-unknown-id",
        "confluent",
        lambda good: struct.pack(">bI", 0, 999) + good[5:],
        "unknown schema id 999",
    ),
    ("plain-empty", "plain", lambda good: b"", "invalid Avro body"),
    ("plain-tombstone", "plain", lambda good: None, "tombstone"),
    ("plain-garbage", "plain", lambda good: b"\x02\xff\xfe\xfd", "invalid Avro body"),
    ("plain-truncated", "plain", lambda good: good[:-4], "invalid Avro body"),
    ("plain-trailing", "plain", lambda good: good + b"\x00", "1 trailing bytes"),
    (
        "single-object-wrong-magic",
        "single-object",
        lambda good: b"\xc3\x02" + good[2:],
        "not Avro single-object encoding",
    ),
    ("single-object-empty", "single-object", lambda good: b"", "got 0 bytes"),
    ("single-object-garbage", "single-object", lambda good: b"garbage!!!!!", "expected C3 01"),
    ("single-object-tombstone", "single-object", lambda good: None, "tombstone"),
    ("single-object-truncated", "single-object", lambda good: good[:-4], "invalid Avro body"),
    ("single-object-trailing", "single-object", lambda good: good + b"\xaa" * 3, "3 trailing"),
    (
        "single-object-unknown-fingerprint",
        "single-object",
        lambda good: SINGLE_OBJECT_MAGIC + struct.pack("<Q", 0x1234) + good[10:],
        "unknown writer schema fingerprint 0000000000001234",
    ),
]


@pytest.mark.parametrize(
    ("wire_format", "corrupt", "fragment"),
    [pytest.param(f, c, m, id=case) for case, f, c, m in REJECTS],
)
def test_bad_value_is_rejected_and_batch_goes_on(
    wire_format: WireFormat,
    corrupt: Callable[[bytes], bytes | None],
    fragment: str,
    reader_schema: dict[str, Any],
    make_record: MakeRecord,
    avro_bytes: AvroBytes,
    make_transaction: MakeTransaction,
) -> None:
    """A bad value becomes a decode-stage Rejected with a useful reason; its neighbours decode."""
    source = CountingSource({1: reader_schema})
    decoder = AvroDecoder(Framing(reader_schema, wire_format, registry=source))
    body = avro_bytes(reader_schema, make_transaction())
    good = frame_body(wire_format, body, schema_id=1, schema=reader_schema)
    records = [
        make_record(good, offset=0),
        make_record(corrupt(good), offset=1),
        make_record(good, offset=2),
    ]

    events, rejected = decoder.decode_batch(records)

    assert [e.source.offset for e in events] == [0, 2]
    assert len(rejected) == 1
    reject = rejected[0]
    assert reject.source is records[1]
    assert reject.stage == "decode"
    assert reject.error_type == "DecodeError"
    assert fragment in reject.message


def test_registry_404_is_a_reject_via_the_real_client(
    dev_registry: DevSchemaRegistry,
    reader_schema: dict[str, Any],
    make_record: MakeRecord,
    avro_bytes: AvroBytes,
    make_transaction: MakeTransaction,
) -> None:
    """A schema id the real registry does not know (HTTP 404) rejects only that record."""
    client = SchemaRegistryClient(dev_registry.url)
    known = client.register("transactions-value", reader_schema)
    decoder = AvroDecoder(Framing(reader_schema, "confluent", registry=client))
    body = avro_bytes(reader_schema, make_transaction())

    events, rejected = decoder.decode_batch(
        [
            make_record(frame_body("confluent", body, known), offset=0),
            make_record(frame_body("confluent", body, known + 10_000), offset=1),
        ]
    )

    assert [e.source.offset for e in events] == [0]
    assert [(r.source.offset, r.stage) for r in rejected] == [(1, "decode")]
    assert f"unknown schema id {known + 10_000}" in rejected[0].message


def test_incompatible_writer_schema_is_a_reject(
    reader_schema: dict[str, Any],
    make_record: MakeRecord,
    avro_bytes: AvroBytes,
    make_transaction: MakeTransaction,
) -> None:
    """A writer schema that cannot be resolved against the reader rejects the record."""
    writer = copy.deepcopy(reader_schema)
    for field in writer["fields"]:
        if field["name"] == "amount":
            field["type"] = "string"
    decoder = AvroDecoder(Framing(reader_schema, "confluent", registry=CountingSource({5: writer})))
    value = frame_body("confluent", avro_bytes(writer, make_transaction(amount="12")), 5)

    events, rejected = decoder.decode_batch([make_record(value)])

    assert events == []
    assert [(r.stage, r.error_type) for r in rejected] == [("decode", "DecodeError")]
    assert "writer schema 5" in rejected[0].message


def test_registry_schema_that_is_not_avro_is_a_reject(
    reader_schema: dict[str, Any],
    make_record: MakeRecord,
    avro_bytes: AvroBytes,
    make_transaction: MakeTransaction,
) -> None:
    """A registry entry that is not a valid Avro schema rejects the record, naming the id."""
    decoder = AvroDecoder(
        Framing(reader_schema, "confluent", registry=CountingSource({9: {"type": "nonsense"}}))
    )
    value = frame_body("confluent", avro_bytes(reader_schema, make_transaction()), 9)

    events, rejected = decoder.decode_batch([make_record(value)])

    assert events == []
    assert len(rejected) == 1
    assert "schema id 9 is not a valid Avro schema" in rejected[0].message


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_unreachable_registry_is_fatal_not_a_reject(
    reader_schema: dict[str, Any],
    make_record: MakeRecord,
    avro_bytes: AvroBytes,
    make_transaction: MakeTransaction,
) -> None:
    """A registry nobody answers raises FatalError from the batch instead of rejecting records."""
    client = SchemaRegistryClient(f"http://127.0.0.1:{_closed_port()}", timeout_s=2.0)
    decoder = AvroDecoder(Framing(reader_schema, "confluent", registry=client))
    value = frame_body("confluent", avro_bytes(reader_schema, make_transaction()), 1)

    with pytest.raises(FatalError, match="cannot fetch writer schema 1"):
        decoder.decode_batch([make_record(value)])


def test_registry_error_from_any_source_is_fatal(
    reader_schema: dict[str, Any],
    make_record: MakeRecord,
    avro_bytes: AvroBytes,
    make_transaction: MakeTransaction,
) -> None:
    """A RegistryError other than not-found (HTTP 5xx, timeouts) is fatal."""
    decoder = AvroDecoder(Framing(reader_schema, "confluent", registry=BrokenSource()))
    value = frame_body("confluent", avro_bytes(reader_schema, make_transaction()), 3)

    with pytest.raises(FatalError) as caught:
        decoder.decode_batch([make_record(value)])
    assert not isinstance(caught.value, DecodeError)


def test_writer_schemas_are_fetched_once_per_id(
    reader_schema: dict[str, Any],
    make_record: MakeRecord,
    avro_bytes: AvroBytes,
    make_transaction: MakeTransaction,
) -> None:
    """Each schema id is asked of the registry once, however many records and batches use it."""
    evolved = copy.deepcopy(reader_schema)
    evolved["fields"].append({"name": "extra", "type": "int", "default": 0})
    source = CountingSource({1: reader_schema, 2: evolved})
    decoder = AvroDecoder(Framing(reader_schema, "confluent", registry=source))
    v1 = frame_body("confluent", avro_bytes(reader_schema, make_transaction()), 1)
    v2 = frame_body("confluent", avro_bytes(evolved, make_transaction(extra=3)), 2)

    first, rejected_first = decoder.decode_batch([make_record(v) for v in (v1, v2, v1, v2, v1)])
    second, rejected_second = decoder.decode_batch([make_record(v) for v in (v2, v1)])

    assert (len(first), len(second), rejected_first, rejected_second) == (5, 2, [], [])
    assert sorted(source.calls) == [1, 2]
    assert [e.writer_id for e in first] == [1, 2, 1, 2, 1]


def test_confluent_without_registry_is_refused(reader_schema: dict[str, Any]) -> None:
    """Building a confluent decoder without a registry fails at construction."""
    with pytest.raises(ValueError, match="schema registry"):
        AvroDecoder(Framing(reader_schema, "confluent"))


def test_single_object_framing_needs_the_schema() -> None:
    """frame_body refuses single-object framing without the writer schema."""
    with pytest.raises(ValueError, match="writer schema"):
        frame_body("single-object", b"body")


@pytest.mark.parametrize(
    ("wire_format", "expected"),
    [
        ("confluent", bytes([CONFLUENT_MAGIC]) + b"\x00\x00\x01\x02BODY"),
        ("plain", b"BODY"),
    ],
)
def test_frame_body_headers(wire_format: WireFormat, expected: bytes) -> None:
    """Confluent framing is magic 0 + big-endian id; plain framing is the bare body."""
    assert frame_body(wire_format, b"BODY", schema_id=258) == expected


def test_single_object_header_is_marker_plus_little_endian_fingerprint(
    reader_schema: dict[str, Any],
) -> None:
    """Single-object framing is C3 01 + the CRC-64-AVRO fingerprint, little-endian."""
    framed = frame_body("single-object", b"BODY", schema=reader_schema)
    canonical = fastavro.schema.to_parsing_canonical_form(reader_schema)
    expected = int(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO"), 16)

    assert framed[:2] == b"\xc3\x01"
    assert struct.unpack("<Q", framed[2:10])[0] == expected == fingerprint(reader_schema)
    assert framed[10:] == b"BODY"


def test_decode_value_raises_decode_error_for_one_value(reader_schema: dict[str, Any]) -> None:
    """decode_value (one value) raises DecodeError where decode_batch would reject."""
    decoder = AvroDecoder(Framing(reader_schema, "plain"))

    with pytest.raises(DecodeError, match="tombstone"):
        decoder.decode_value(None)


def test_batch_keeps_order_of_events_and_rejects(
    reader_schema: dict[str, Any],
    make_record: MakeRecord,
    avro_bytes: AvroBytes,
    make_transaction: MakeTransaction,
) -> None:
    """Events and rejects each come back in the batch's order."""
    decoder = AvroDecoder(Framing(reader_schema, "plain"))
    good = avro_bytes(reader_schema, make_transaction())
    values = [good, None, good, b"", good, None]
    records = [make_record(v, offset=i) for i, v in enumerate(values)]

    events, rejected = decoder.decode_batch(records)

    assert all(isinstance(e, Event) for e in events)
    assert all(isinstance(r, Rejected) for r in rejected)
    assert [e.source.offset for e in events] == [0, 2, 4]
    assert [r.source.offset for r in rejected] == [1, 3, 5]
