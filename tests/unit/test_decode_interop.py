"""Events written by another Avro implementation (Apache ``avro``), through both decoders.

A team's events need not come from fastavro (issue 9: "written by another Avro
implementation"). Events are written with the ``avro`` package from PyPI, as is and with a
blocking writer that splits arrays and maps into several blocks with negative counts and byte
sizes, as Java's ``BlockingBinaryEncoder`` may; both decoders must give the values written.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Mapping, Sequence
from typing import Any

import avro.io
import avro.schema
import numpy as np
import pytest

from stream_scorer.consume import MessageBatch
from stream_scorer.decode import AvroDecoder, ColumnarAvroDecoder, Framing, frame_body
from stream_scorer.records import DecodedBatch, SourceRecord

#: A churn-style team schema: every kind of field the issue lists.
TEAM = {
    "type": "record",
    "name": "Subscriber",
    "namespace": "com.example.telecom",
    "fields": [
        {"name": "customer_id", "type": "string"},
        {"name": "nickname", "type": ["null", "string"], "default": None},
        {
            "name": "plan",
            "type": {"type": "enum", "name": "Plan", "symbols": ["BASIC", "PLUS", "PRO"]},
        },
        {"name": "roaming", "type": "boolean"},
        {"name": "tenure_months", "type": "int"},
        {"name": "bytes_used", "type": "long"},
        {"name": "monthly_fee", "type": "float"},
        {"name": "balance", "type": ["null", "double"], "default": None},
        {"name": "recent_calls", "type": {"type": "array", "items": "int"}},
        {"name": "addons", "type": {"type": "map", "values": "double"}},
        {"name": "tags", "type": {"type": "array", "items": ["null", "string"]}},
        {"name": "last_seen", "type": "long"},
    ],
}
#: The reader the model binds: without the arrays and maps, so they are skipped.
SKIPPED = frozenset({"recent_calls", "addons", "tags"})
SCALARS = {**TEAM, "fields": [f for f in TEAM["fields"] if f["name"] not in SKIPPED]}
SCHEMA_ID = 42


class BlockingDatumWriter(avro.io.DatumWriter):  # type: ignore[misc]
    """Writes arrays and maps as blocks of ``block`` items, each with a negative count and
    its size in bytes (the Avro specification's optional form, used by Java's blocking
    encoder)."""

    def __init__(self, schema: avro.schema.Schema, block: int) -> None:
        """Write with ``schema``, ``block`` items per block."""
        super().__init__(schema)
        self.block = block

    def _blocks(self, items: Sequence[Any], write_item: Any, encoder: Any) -> None:
        for start in range(0, len(items), self.block):
            chunk = items[start : start + self.block]
            buf = io.BytesIO()
            inner = avro.io.BinaryEncoder(buf)
            for item in chunk:
                write_item(item, inner)
            encoder.write_long(-len(chunk))
            encoder.write_long(len(buf.getvalue()))
            encoder.write(buf.getvalue())
        encoder.write_long(0)

    def write_array(self, writers_schema: Any, datum: Sequence[object], encoder: Any) -> None:
        """Blocks of array items."""
        self._blocks(
            list(datum), lambda v, enc: self.write_data(writers_schema.items, v, enc), encoder
        )

    def write_map(self, writers_schema: Any, datum: Mapping[str, object], encoder: Any) -> None:
        """Blocks of map entries."""

        def entry(kv: tuple[str, object], enc: Any) -> None:
            enc.write_utf8(kv[0])
            self.write_data(writers_schema.values, kv[1], enc)

        self._blocks(list(datum.items()), entry, encoder)


def events(n: int, seed: int) -> list[dict[str, Any]]:
    """Varied subscriber events: nulls, extremes, empty and long arrays and maps."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        out.append(
            {
                "customer_id": f"cust-{rng.randrange(10**9):09d}-é",
                "nickname": None if i % 3 == 0 else rng.choice(["", "bob", "ça va", "日本"]),
                "plan": rng.choice(["BASIC", "PLUS", "PRO"]),
                "roaming": bool(i % 2),
                "tenure_months": rng.choice([0, 1, -1, 2**31 - 1, -(2**31), rng.randrange(600)]),
                "bytes_used": rng.choice([0, 2**63 - 1, -(2**63), rng.randrange(10**12)]),
                "monthly_fee": rng.choice([0.0, 9.5, -1.25, 1e30]),
                "balance": None if i % 4 == 1 else rng.uniform(-1e6, 1e6),
                "recent_calls": [
                    rng.randrange(-500, 500) for _ in range(rng.choice([0, 1, 7, 40]))
                ],
                "addons": {f"a{k}": rng.uniform(0, 100) for k in range(rng.choice([0, 1, 5, 23]))},
                "tags": [rng.choice([None, "x", "vip"]) for _ in range(rng.choice([0, 3, 11]))],
                "last_seen": 1_767_225_600_000 + rng.randrange(10**9),
            }
        )
    return out


def avro_encode(records: list[dict[str, Any]], block: int | None) -> list[bytes]:
    """Bodies written by the ``avro`` package (blocking writer when ``block`` is set)."""
    schema = avro.schema.parse(json.dumps(TEAM))
    writer = avro.io.DatumWriter(schema) if block is None else BlockingDatumWriter(schema, block)
    out = []
    for record in records:
        buf = io.BytesIO()
        writer.write(record, avro.io.BinaryEncoder(buf))
        out.append(buf.getvalue())
    return out


class Registry:
    """Knows the team schema under SCHEMA_ID."""

    def schema_by_id(self, schema_id: int) -> dict[str, Any]:
        """The team schema."""
        assert schema_id == SCHEMA_ID
        return json.loads(json.dumps(TEAM))


def decode_both(reader: Mapping[str, Any], bodies: list[bytes]) -> list[DecodedBatch]:
    """Both decoders' result of the Confluent-framed bodies, every reader field requested."""
    values = [frame_body("confluent", b, SCHEMA_ID) for b in bodies]
    records = [SourceRecord("team", 0, i, None, v) for i, v in enumerate(values)]
    fields = [f["name"] for f in reader["fields"]]
    out = []
    for kind in (ColumnarAvroDecoder, AvroDecoder):
        decoder = kind(Framing(reader, "confluent", registry=Registry()))
        out.append(decoder.decode(MessageBatch.from_records(records), fields))
    return out


def same(a: Any, b: Any) -> bool:
    """Equal, with floats compared as float32 where the schema says float."""
    if isinstance(a, float) and isinstance(b, float):
        return bool(np.float32(a) == np.float32(b)) or a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@pytest.mark.parametrize("block", [None, 1, 3, 1000], ids=["one-block", "1", "3", "sized"])
@pytest.mark.parametrize("reader", [TEAM, SCALARS], ids=["all-fields", "arrays-skipped"])
def test_avro_package_events_decode_identically(block: int | None, reader: Any) -> None:
    """Every value written by Apache avro comes back as written from both decoders, whether
    its arrays and maps are one block or many, counted negative with byte sizes."""
    written = events(60, seed=block or 0)
    columnar, record = decode_both(reader, avro_encode(written, block))
    for batch in (columnar, record):
        assert batch.rejected == []
        assert len(batch.records) == len(written)
    for field in reader["fields"]:
        name = field["name"]
        expected = [e[name] for e in written]
        got_columnar = columnar.columns[name].to_objects().tolist()
        got_record = record.columns[name].to_objects().tolist()
        assert same(got_columnar, expected), name
        assert same(got_record, expected), name
    for batch in (columnar, record):
        whole = batch.event_at(7).fields
        assert same(whole, {f["name"]: written[7][f["name"]] for f in reader["fields"]})


def test_block_byte_size_that_lies_is_rejected_by_both() -> None:
    """A block whose declared byte size disagrees with its items is a reject in both."""
    written = events(4, seed=3)
    written[1]["recent_calls"] = [1, 2, 3, 4]
    bodies = avro_encode(written, 2)
    good = avro_encode([written[1]], 2)[0]
    # The first block of recent_calls: count -2 (0x03), size 2 (0x04): claim 3 bytes instead.
    marker = bytes([0x03, 0x04, 0x02, 0x04])
    at = good.index(marker)
    bodies[1] = good[:at] + bytes([0x03, 0x06]) + good[at + 2 :]
    for batch in decode_both(SCALARS, bodies):
        assert [r.source.offset for r in batch.rejected] == [1]
        assert len(batch.records) == 3
