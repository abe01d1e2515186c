"""Hostile messages and schemas (issue 12, findings 1, 2 and 5) through both decoders.

Each test names, in its docstring, the fix it fails without.
"""

from __future__ import annotations

import copy
import io
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import pytest

from stream_scorer.consume import MessageBatch
from stream_scorer.decode import AvroDecoder, ColumnarAvroDecoder, Framing, frame_body
from stream_scorer.decode.columnar import ColumnarDecoder, nodes
from stream_scorer.decode.limits import (
    MAX_BATCH_ITEMS,
    MAX_RECORD_ITEMS,
    MAX_SCHEMA_DEPTH,
    MAX_SCHEMA_NODES,
    SchemaLimitError,
    check_schema,
)
from stream_scorer.devtools.generate import TransactionGenerator
from stream_scorer.records import DecodedBatch, SourceRecord
from stream_scorer.registry import SchemaNotFoundError

READER = json.loads(
    (Path(__file__).resolve().parents[2] / "schemas" / "transaction.avsc").read_text()
)
EVENTS, _ = TransactionGenerator(seed=12).generate(8)
#: Registry id of the reader schema in :class:`Source`; 7 is the hostile writer.
GOOD_ID, HOSTILE_ID = 1, 7
DECODERS: list[type[ColumnarAvroDecoder] | type[AvroDecoder]] = [ColumnarAvroDecoder, AvroDecoder]
Kind = type[ColumnarAvroDecoder] | type[AvroDecoder]


def zz(n: int) -> bytes:
    """Zigzag varint of ``n`` (Avro's int/long encoding)."""
    u = (n << 1) ^ (n >> 63)
    out = bytearray()
    while u >= 0x80:
        out.append((u & 0x7F) | 0x80)
        u >>= 7
    out.append(u)
    return bytes(out)


def body(schema: Mapping[str, Any], record: Mapping[str, Any]) -> bytes:
    """fastavro's Avro body of ``record``."""
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(copy.deepcopy(dict(schema))), record)
    return buf.getvalue()


def with_field(field_type: Any, name: str = "pad") -> dict[str, Any]:
    """The reader schema plus one field the reader does not know (appended last)."""
    writer = copy.deepcopy(READER)
    writer["fields"].append({"name": name, "type": field_type})
    return writer


class Source:
    """A schema source: the reader under GOOD_ID, ``hostile`` (or what it raises) under 7."""

    def __init__(self, hostile: Any = None, raises: BaseException | None = None) -> None:
        """Serve ``hostile`` under HOSTILE_ID, or raise ``raises`` for it."""
        self.hostile, self.raises = hostile, raises

    def schema_by_id(self, schema_id: int) -> dict[str, Any]:
        """The schema of ``schema_id``."""
        if schema_id == GOOD_ID:
            return copy.deepcopy(READER)
        if schema_id == HOSTILE_ID and self.raises is not None:
            raise self.raises
        if schema_id == HOSTILE_ID and self.hostile is not None:
            return self.hostile  # type: ignore[no-any-return]
        msg = f"schema {schema_id} not found"
        raise SchemaNotFoundError(msg)


def decode(kind: Kind, source: Source, values: list[bytes]) -> DecodedBatch:
    """Decode Confluent-framed ``values`` with ``kind``, asking for two fields."""
    records = [SourceRecord("t", 0, i, None, v) for i, v in enumerate(values)]
    decoder = kind(Framing(READER, "confluent", registry=source))
    return decoder.decode(MessageBatch.from_records(records), ("amount", "channel"))


def good_value(i: int = 0) -> bytes:
    """A valid event under GOOD_ID."""
    return frame_body("confluent", body(READER, EVENTS[i]), GOOD_ID)


def hostile_value(tail: bytes, event: int = 0) -> bytes:
    """A valid event's fields under HOSTILE_ID, then ``tail`` as the extra field's bytes."""
    return frame_body("confluent", body(READER, EVENTS[event]) + tail, HOSTILE_ID)


def accounted(batch: DecodedBatch, n: int) -> None:
    """Every input is decoded or rejected, once."""
    offsets = sorted([r.offset for r in batch.records] + [r.source.offset for r in batch.rejected])
    assert offsets == list(range(n))


NULLS = with_field({"type": "array", "items": "null"})


# --------------------------------------------------------------------------- finding 1


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", DECODERS, ids=["columnar", "record"])
def test_two_to_the_31_nulls_are_rejected_not_walked(kind: Kind) -> None:
    """A 2**31-null array in one block is rejected at once (fails without the item budget:
    47 s in fastavro, and the old columnar per-block cap let 2**16 per block through)."""
    values = [good_value(), hostile_value(zz(2**31) + b"\x00"), good_value(1)]
    batch = decode(kind, Source(NULLS), values)
    accounted(batch, 3)
    assert [r.offset for r in batch.records] == [0, 2]
    (reject,) = batch.rejected
    assert "MAX_RECORD_ITEMS" in reject.message
    assert f"more than {MAX_RECORD_ITEMS} array/map items in one record" in reject.message


@pytest.mark.parametrize("kind", DECODERS, ids=["columnar", "record"])
def test_item_budget_counts_every_block_of_a_record(kind: Kind) -> None:
    """Many blocks each under the old per-block cap are over the per-record budget together
    (fails without a budget across blocks: the 355-byte, 32 s message of the review)."""
    blocks = 60
    values = [hostile_value(zz(65_536) * blocks + b"\x00"), good_value()]
    assert len(values[0]) < 400
    batch = decode(kind, Source(NULLS), values)
    accounted(batch, 2)
    assert [r.offset for r in batch.records] == [1]
    assert "MAX_RECORD_ITEMS" in batch.rejected[0].message


@pytest.mark.parametrize("kind", DECODERS, ids=["columnar", "record"])
def test_batch_item_budget_rejects_what_comes_after_it_is_spent(kind: Kind) -> None:
    """Records each within the per-record budget are rejected once the batch has spent
    MAX_BATCH_ITEMS; the ones before decode (fails without the per-batch budget)."""
    per_record = MAX_RECORD_ITEMS
    fit = MAX_BATCH_ITEMS // per_record
    values = [hostile_value(zz(per_record) + b"\x00") for _ in range(fit + 2)]
    batch = decode(kind, Source(NULLS), values)
    accounted(batch, fit + 2)
    assert [r.offset for r in batch.records] == list(range(fit))
    assert [r.source.offset for r in batch.rejected] == [fit, fit + 1]
    assert all("MAX_BATCH_ITEMS" in r.message for r in batch.rejected)


@pytest.mark.parametrize(
    "item",
    [
        "null",
        {"type": "fixed", "name": "Empty", "size": 0},
        {"type": "record", "name": "Nulls", "fields": [{"name": "a", "type": "null"}]},
        {
            "type": "record",
            "name": "Outer",
            "fields": [
                {"name": "a", "type": {"type": "record", "name": "In", "fields": []}},
                {"name": "b", "type": "null"},
            ],
        },
    ],
    ids=["null", "fixed0", "record-of-nulls", "nested-empty-records"],
)
def test_zero_byte_items_are_skipped_per_block_not_per_item(item: Any) -> None:
    """Skipping blocks of 30,000 zero-byte items reads no item at all (fails without the
    per-block skip: one vectorised pass per item)."""
    writer = with_field({"type": "array", "items": item})
    values = [hostile_value(zz(30_000) * 2 + b"\x00", i) for i in range(8)]
    decoder = ColumnarDecoder(writer, READER, ["amount"])
    block = _find_block(decoder)
    assert block.min_item == 0
    counter = _Counting(block.item)
    block.item = counter
    batch = decoder.decode(values, skip=5)
    assert batch.ok.all(), batch.errors
    assert counter.calls == 0
    assert batch.items == 8 * 60_000


class _Counting(nodes._Node):
    """Wraps a node and counts its read calls."""

    __slots__ = ("calls", "inner")

    def __init__(self, inner: nodes._Node) -> None:
        self.inner, self.calls = inner, 0

    def read(self, st: Any, idx: Any) -> Any:
        self.calls += 1
        return self.inner.read(st, idx)


def _find_block(decoder: ColumnarDecoder) -> Any:
    """The first _BlockNode of a compiled plan (depth first)."""
    stack: list[Any] = [decoder._root]
    while stack:
        node = stack.pop()
        if isinstance(node, nodes._BlockNode):
            return node
        stack.extend(getattr(node, "fields", ()) or ())
        stack.extend(getattr(node, "branches", ()) or ())
    msg = "no block node"
    raise AssertionError(msg)


def test_long_array_among_short_ones_is_finished_per_record() -> None:
    """One record with 5,000 booleans among 500 with none costs a handful of vectorised
    passes, the rest walked in Python (fails without the per-record finish: 5,000 passes)."""
    writer = with_field({"type": "array", "items": "boolean"})
    long = hostile_value(zz(5_000) + b"\x01" * 5_000 + b"\x00")
    values = [hostile_value(b"\x00", i % 8) for i in range(500)]
    values[250] = long
    decoder = ColumnarDecoder(writer, READER, ["amount"])
    block = _find_block(decoder)
    counter = _Counting(block.item)
    block.item = counter
    batch = decoder.decode(values, skip=5)
    assert batch.ok.all(), batch.errors
    assert counter.calls <= 1
    assert batch.items == 5_000


def test_requested_array_of_nulls_is_materialised_per_block() -> None:
    """A requested array of zero-byte items keeps every item (values equal fastavro's) and
    spends the budget like a skipped one."""
    schema = {
        "type": "record",
        "name": "Z",
        "fields": [{"name": "xs", "type": {"type": "array", "items": "null"}}],
    }
    payloads = [zz(3) + zz(2) + b"\x00", zz(MAX_RECORD_ITEMS) + zz(1) + b"\x00"]
    batch = ColumnarDecoder(schema).decode(payloads)
    assert batch.ok.tolist() == [True, False]
    assert batch.columns["xs"].to_objects().tolist()[0] == [None] * 5
    assert "MAX_RECORD_ITEMS" in batch.errors[1]


# --------------------------------------------------------------------------- finding 2


def nested(depth: int) -> dict[str, Any]:
    """A record schema nested ``depth`` records deep (the review's was 2,000)."""
    schema: dict[str, Any] = {"type": "record", "name": "L0", "fields": []}
    for level in range(1, depth):
        schema = {"type": "record", "name": f"L{level}", "fields": [{"name": "x", "type": schema}]}
    return schema


@pytest.mark.parametrize("kind", DECODERS, ids=["columnar", "record"])
def test_writer_schema_2000_deep_rejects_its_records_only(kind: Kind) -> None:
    """Records naming a 2,000-deep writer schema are rejected, the others decode (fails without
    the depth limit: RecursionError out of fastavro's parse and _parse_schema)."""
    hostile = with_field(nested(2_000))
    values = [good_value(), hostile_value(b""), good_value(1), hostile_value(b"")]
    batch = decode(kind, Source(hostile), values)
    accounted(batch, 4)
    assert [r.offset for r in batch.records] == [0, 2]
    assert all("MAX_SCHEMA_DEPTH" in r.message for r in batch.rejected)


@pytest.mark.parametrize("kind", DECODERS, ids=["columnar", "record"])
@pytest.mark.parametrize(
    "error",
    [RecursionError("maximum recursion depth"), MemoryError(), RuntimeError("client bug")],
    ids=["recursion", "memory", "other"],
)
def test_any_failure_of_the_schema_source_for_one_id_rejects_its_records(
    kind: Kind, error: BaseException
) -> None:
    """Whatever the source raises for one id (its JSON parse of a deep schema raises
    RecursionError) rejects that id's records (fails without it: the error escapes)."""
    values = [good_value(), hostile_value(b""), good_value(1)]
    batch = decode(kind, Source(raises=error), values)
    accounted(batch, 3)
    (reject,) = batch.rejected
    assert reject.source.offset == 1
    assert f"cannot obtain writer schema {HOSTILE_ID}: {type(error).__name__}" in reject.message


@pytest.mark.parametrize("kind", DECODERS, ids=["columnar", "record"])
def test_huge_enum_schema_is_rejected_by_size(kind: Kind) -> None:
    """A writer schema of 100,000 enum symbols is refused by MAX_SCHEMA_NODES (fails without
    the size limit; the columnar enum table was also quadratic in the symbols)."""
    symbols = [f"S{i}" for i in range(100_000)]
    hostile = with_field({"type": "enum", "name": "Huge", "symbols": symbols})
    batch = decode(kind, Source(hostile), [hostile_value(b"\x00"), good_value()])
    accounted(batch, 2)
    assert "MAX_SCHEMA_NODES" in batch.rejected[0].message


@pytest.mark.parametrize("kind", DECODERS, ids=["columnar", "record"])
def test_record_containing_itself_directly_is_rejected(kind: Kind) -> None:
    """A record whose field is itself (no union between: no finite value) rejects its events
    instead of recursing until the stack gives out."""
    selfish = {"type": "record", "name": "Me", "fields": [{"name": "me", "type": "Me"}]}
    batch = decode(kind, Source(with_field(selfish)), [hostile_value(b""), good_value()])
    accounted(batch, 2)
    assert [r.offset for r in batch.records] == [1]


@pytest.mark.parametrize("kind", DECODERS, ids=["columnar", "record"])
def test_data_nested_deeper_than_the_stack_is_rejected(kind: Kind) -> None:
    """A linked list 20,000 deep in the data (valid schema, hostile bytes) is a reject, not a
    RecursionError out of decode (fails without catching it in fastavro's read)."""
    node = {
        "type": "record",
        "name": "Node",
        "fields": [{"name": "next", "type": ["null", "Node"]}],
    }
    tail = b"\x02" * 20_000 + b"\x00"
    batch = decode(kind, Source(with_field(node)), [hostile_value(tail), good_value()])
    accounted(batch, 2)
    assert [r.offset for r in batch.records] == [1]


def test_recursion_error_inside_the_columnar_decode_fails_only_its_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Should the vectorised decode ever raise RecursionError, the records are retried one by
    one and only the one that raises is rejected (fails without the per-record retry)."""
    poison = good_value(3)
    original = ColumnarDecoder.decode

    def flaky(self: ColumnarDecoder, payloads: Any, *args: Any, **kwargs: Any) -> Any:
        if any(bytes(p) == poison for p in payloads):
            raise RecursionError
        return original(self, payloads, *args, **kwargs)

    monkeypatch.setattr(ColumnarDecoder, "decode", flaky)
    values = [good_value(0), poison, good_value(1)]
    batch = decode(ColumnarAvroDecoder, Source(), values)
    accounted(batch, 3)
    assert [r.offset for r in batch.records] == [0, 2]
    assert "RecursionError" in batch.rejected[0].message
    assert batch.columns["amount"].to_objects().tolist() == [
        EVENTS[0]["amount"],
        EVENTS[1]["amount"],
    ]


def test_check_schema_limits_depth_and_size_without_recursing() -> None:
    """check_schema measures 100,000-deep JSON iteratively and names the limit it hit."""
    deep: Any = "null"
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(SchemaLimitError, match="MAX_SCHEMA_DEPTH"):
        check_schema(deep)
    with pytest.raises(SchemaLimitError, match="MAX_SCHEMA_NODES"):
        check_schema({"type": "enum", "name": "E", "symbols": ["a"] * MAX_SCHEMA_NODES})
    check_schema(READER)
    shallow: Any = "null"
    for _ in range(MAX_SCHEMA_DEPTH - 1):
        shallow = [shallow]
    check_schema(shallow)


# --------------------------------------------------------------------------- finding 5


MARKER = b"card-4111111111111111"


def _hostile_inputs() -> list[bytes]:
    good = body(READER, EVENTS[0])
    return [
        MARKER,  # no header at all
        b"\x01" + MARKER,  # wrong magic
        b"\xc3\x02" + MARKER,  # wrong single-object marker
        frame_body("confluent", MARKER, GOOD_ID),  # garbage body
        frame_body("confluent", good[:20] + MARKER, GOOD_ID),  # truncated, then garbage
        frame_body("confluent", good + MARKER, GOOD_ID),  # trailing bytes
        frame_body("confluent", b"\x2a" + b"\xff" * 12 + MARKER, GOOD_ID),  # bad varints
    ]


@pytest.mark.parametrize("kind", DECODERS, ids=["columnar", "record"])
def test_reject_reasons_never_quote_payload_bytes(kind: Kind) -> None:
    """No reason contains the payload's bytes, as text or hex (fails without the framing fix:
    the header error printed the first five bytes in hex)."""
    values = _hostile_inputs()
    batch = decode(kind, Source(), values)
    accounted(batch, len(values))
    assert len(batch.rejected) == len(values)
    forbidden: list[Callable[[bytes], str]] = [
        lambda b: b.decode("latin-1"),
        bytes.hex,
        lambda b: repr(b)[2:-1],
    ]
    for reject in batch.rejected:
        for show in forbidden:
            for piece in (MARKER[:5], MARKER[-6:], b"\xff" * 3):
                assert show(piece) not in reject.message, reject.message
    assert np.all([r.error_type == "DecodeError" for r in batch.rejected])


def test_a_failing_schema_id_is_not_asked_for_again_per_record() -> None:
    """Records naming an id the source failed on are rejected without a call each, until
    SCHEMA_RETRY_S has passed (fails without the retry memo: one call per record)."""
    calls: list[int] = []

    class Failing(Source):
        def schema_by_id(self, schema_id: int) -> dict[str, Any]:
            """Count, then fail, for the hostile id."""
            if schema_id == HOSTILE_ID:
                calls.append(schema_id)
                raise RecursionError
            return super().schema_by_id(schema_id)

    values = [hostile_value(b"", i % 8) for i in range(5)] + [good_value()]
    batch = decode(ColumnarAvroDecoder, Failing(), values)
    accounted(batch, 6)
    assert len(batch.rejected) == 5
    assert calls == [HOSTILE_ID]
