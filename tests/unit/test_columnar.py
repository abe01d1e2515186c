"""Tests of the columnar Avro decoder against fastavro: generated schemas, resolution, fuzzing."""

from __future__ import annotations

import copy
import io
import itertools
import json
import math
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_scorer.decode import columnar
from stream_scorer.decode.columnar import (
    MAX_RECORD_ITEMS,
    UNIQUE_MIN_ROWS,
    BytesColumn,
    ColumnarDecoder,
    ColumnBatch,
    DecimalColumn,
    EnumColumn,
    NumericColumn,
    ObjectColumn,
)

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "transaction.avsc"
TRANSACTION = json.loads(SCHEMA_PATH.read_text())
FAST = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SLOW = settings(
    max_examples=3000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
_NAMES = itertools.count()


# --------------------------------------------------------------------------- helpers


def encode(schema: Mapping[str, Any], records: list[Any]) -> list[bytes]:
    """Serialise records with fastavro.schemaless_writer."""
    parsed = fastavro.parse_schema(copy.deepcopy(dict(schema)))
    out = []
    for rec in records:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed, rec)
        out.append(buf.getvalue())
    return out


def strip_logical(schema: Any) -> Any:
    """Drop logicalType annotations so fastavro returns the raw values this decoder keeps."""
    if isinstance(schema, list):
        return [strip_logical(s) for s in schema]
    if isinstance(schema, dict):
        return {k: strip_logical(v) for k, v in schema.items() if k != "logicalType"}
    return schema


def oracle(
    writer: Mapping[str, Any], payload: bytes, reader: Mapping[str, Any] | None = None
) -> tuple[bool, Any]:
    """Read one payload with fastavro (logical types stripped); (True, value) if all bytes used."""
    w = fastavro.parse_schema(strip_logical(copy.deepcopy(dict(writer))))
    r = (
        None
        if reader is None
        else fastavro.parse_schema(strip_logical(copy.deepcopy(dict(reader))))
    )
    bio = io.BytesIO(payload)
    try:
        value = fastavro.schemaless_reader(bio, w, r)
    except Exception:
        return False, None
    return bio.tell() == len(payload), value


def same(a: Any, b: Any) -> bool:
    """Deep equality treating NaN as equal to NaN and int/float numerically."""
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None or isinstance(a, (bytes, str)) or isinstance(b, (bytes, str)):
            return False
        fa, fb = float(a), float(b)
        return (math.isnan(fa) and math.isnan(fb)) or fa == fb
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(type(a) is type(b) and a == b)


def dig(record: Any, path: str) -> Any:
    """Follow a dotted column name into a fastavro record dict (None through a null)."""
    for part in path.split("."):
        if record is None:
            return None
        record = record[part]
    return record


def column_value(objects: list[Any], i: int, reader_leaf: Any) -> Any:
    """Row ``i`` of a column as a raw Python value comparable to fastavro's stripped output."""
    value = objects[i]
    if isinstance(value, float) and _is_float32(reader_leaf):
        return float(np.float32(value))
    return value


def _is_float32(schema: Any) -> bool:
    if isinstance(schema, list):
        return any(_is_float32(b) for b in schema)
    return schema == "float" or (isinstance(schema, dict) and schema.get("type") == "float")


def leaf_paths(schema: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Expected flattened column names (records and [null, record] expanded) -> leaf schema."""
    out: dict[str, Any] = {}
    for f in schema["fields"]:
        path = f"{prefix}.{f['name']}" if prefix else f["name"]
        t = f["type"]
        inner = t
        if isinstance(t, list):
            non_null = [b for b in t if b != "null"]
            inner = non_null[0] if len(non_null) == 1 else t
        if isinstance(inner, dict) and inner.get("type") == "record":
            out.update(leaf_paths(inner, path))
        else:
            out[path] = t
    return out


def assert_matches_fastavro(
    batch: ColumnBatch,
    payloads: list[bytes],
    writer: Mapping[str, Any],
    reader: Mapping[str, Any] | None = None,
    *,
    allow_unicode_skip: bool = False,
) -> None:
    """Every ok record equals fastavro's reading of it, column by column; failures have reasons."""
    leaves = leaf_paths(reader if reader is not None else writer)
    assert len(batch.ok) == batch.n == len(payloads)
    objects = {name: col.to_objects().tolist() for name, col in batch.columns.items()}
    for i, payload in enumerate(payloads):
        if not batch.ok[i]:
            assert batch.errors[i]
            continue
        assert i not in batch.errors
        used_all, expected = oracle(writer, payload, reader)
        if not used_all and allow_unicode_skip:
            continue
        assert used_all, f"record {i} ok here but fastavro rejects it"
        for name, objs in objects.items():
            got = column_value(objs, i, leaves[name])
            want = dig(expected, name)
            if isinstance(want, (int, float)) and not isinstance(want, bool):
                want = (
                    column_value([float(want)], 0, leaves[name]) if isinstance(got, float) else want
                )
            assert same(got, want), (i, name, got, want)


# --------------------------------------------------------------------------- generated schemas

_PRIMS = ["boolean", "int", "long", "float", "double", "string", "bytes"]


def _name(kind: str) -> str:
    return f"{kind}{next(_NAMES)}"


@st.composite
def avro_type(draw: st.DrawFn, depth: int = 0) -> Any:  # noqa: PLR0912
    """A random Avro type (JSON) of the supported kinds."""
    kinds = [*_PRIMS, "enum", "fixed", "ts_ms", "ts_us", "date", "decimal", "dec_fixed", "null"]
    if depth < 2:
        kinds += ["nullable", "nullable", "union", "record", "array", "map", "nullable_record"]
    kind = draw(st.sampled_from(kinds))
    if kind in _PRIMS or kind == "null":
        return kind
    if kind == "enum":
        n = draw(st.integers(1, 5))
        return {"type": "enum", "name": _name("E"), "symbols": [f"S{i}" for i in range(n)]}
    if kind == "fixed":
        return {"type": "fixed", "name": _name("F"), "size": draw(st.integers(0, 12))}
    if kind == "ts_ms":
        return {"type": "long", "logicalType": "timestamp-millis"}
    if kind == "ts_us":
        return {"type": "long", "logicalType": "timestamp-micros"}
    if kind == "date":
        return {"type": "int", "logicalType": "date"}
    if kind == "decimal":
        return {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 3}
    if kind == "dec_fixed":
        return {
            "type": "fixed",
            "name": _name("D"),
            "size": 8,
            "logicalType": "decimal",
            "precision": 15,
            "scale": 2,
        }
    if kind == "nullable":
        inner = draw(avro_type(depth + 1).filter(lambda t: t != "null" and not isinstance(t, list)))
        return ["null", inner] if draw(st.booleans()) else [inner, "null"]
    if kind == "union":
        picks = draw(
            st.lists(
                st.sampled_from(["null", "int", "string", "double", "rec", "arr"]),
                min_size=2,
                max_size=4,
                unique=True,
            )
        )
        return [
            record_type(draw, depth + 1)
            if p == "rec"
            else {"type": "array", "items": "long"}
            if p == "arr"
            else p
            for p in picks
        ]
    if kind == "record":
        return record_type(draw, depth + 1)
    if kind == "nullable_record":
        return ["null", record_type(draw, depth + 1)]
    if kind == "array":
        return {"type": "array", "items": draw(avro_type(depth + 1))}
    return {"type": "map", "values": draw(avro_type(depth + 1))}


def record_type(draw: st.DrawFn, depth: int) -> dict[str, Any]:
    """A random record type with 1-6 fields."""
    n = draw(st.integers(1, 6))
    fields = [{"name": f"f{i}", "type": draw(avro_type(depth))} for i in range(n)]
    return {"type": "record", "name": _name("R"), "fields": fields}


def values_for(schema: Any) -> st.SearchStrategy[Any]:  # noqa: PLR0912
    """A strategy of Python values fastavro can write for ``schema``."""
    if isinstance(schema, list):
        return st.one_of(*[values_for(b) for b in schema])
    if isinstance(schema, str):
        schema = {"type": schema}
    t = schema["type"]
    lt = schema.get("logicalType")
    if lt == "decimal":
        prec, scale = schema["precision"], schema["scale"]
        return st.integers(-(10**prec) + 1, 10**prec - 1).map(lambda u: Decimal(u).scaleb(-scale))
    if t == "null":
        return st.none()
    if t == "boolean":
        return st.booleans()
    if t == "int":
        return st.integers(-(2**31), 2**31 - 1)
    if t == "long":
        return st.integers(-(2**63), 2**63 - 1)
    if t == "float":
        return st.floats(width=32)
    if t == "double":
        return st.floats()
    if t == "string":
        return st.text(max_size=12)
    if t == "bytes":
        return st.binary(max_size=12)
    if t == "fixed":
        return st.binary(min_size=schema["size"], max_size=schema["size"])
    if t == "enum":
        return st.sampled_from(schema["symbols"])
    if t == "array":
        return st.lists(values_for(schema["items"]), max_size=4)
    if t == "map":
        return st.dictionaries(st.text(max_size=5), values_for(schema["values"]), max_size=3)
    return st.fixed_dictionaries({f["name"]: values_for(f["type"]) for f in schema["fields"]})


@st.composite
def schema_and_records(draw: st.DrawFn, max_records: int = 12) -> tuple[dict[str, Any], list[Any]]:
    """A random record schema and some records of it."""
    schema = record_type(draw, 0)
    records = draw(st.lists(values_for(schema), max_size=max_records))
    return schema, records


@FAST
@given(schema_and_records())
def test_generated_schemas_match_fastavro(case: tuple[dict[str, Any], list[Any]]) -> None:
    """Every flattened column of every generated schema equals fastavro's output."""
    schema, records = case
    payloads = encode(schema, records)
    batch = ColumnarDecoder(schema).decode(payloads)
    assert batch.ok.all(), batch.errors
    assert set(batch.columns) == set(leaf_paths(schema))
    assert_matches_fastavro(batch, payloads, schema)


@FAST
@given(schema_and_records(), st.data())
def test_generated_field_subsets_match_fastavro(
    case: tuple[dict[str, Any], list[Any]], data: st.DataObject
) -> None:
    """Requesting a subset of top-level fields skips the rest and still matches fastavro."""
    schema, records = case
    names = [f["name"] for f in schema["fields"]]
    subset = data.draw(st.lists(st.sampled_from(names), unique=True, max_size=len(names)))
    payloads = encode(schema, records)
    batch = ColumnarDecoder(schema, fields=subset).decode(payloads)
    assert batch.ok.all(), batch.errors
    expected = {p for p in leaf_paths(schema) if p.split(".")[0] in subset}
    assert set(batch.columns) == expected
    assert_matches_fastavro(batch, payloads, schema)


# --------------------------------------------------------------------------- transaction.avsc


def transaction_records(n: int, seed: int = 3) -> list[dict[str, Any]]:
    """Varied transaction records (the project generator plus hand-made edge values)."""
    from stream_scorer.devtools.generate import TransactionGenerator  # noqa: PLC0415

    records, _ = TransactionGenerator(seed).generate(n)
    rng = np.random.default_rng(seed)
    for i, rec in enumerate(records):
        if i % 7 == 0:
            rec["merchant_name"] = "Café Zürich ☕ " * int(rng.integers(0, 20))
        if i % 11 == 0:
            rec["distance_from_home_km"] = None
            rec["seconds_since_last_txn"] = None
        if i % 13 == 0:
            rec["amount"] = float(rng.choice([0.0, -1.5, 1e300, float("inf")]))
            rec["mcc"] = int(rng.choice([-(2**31), 2**31 - 1, 0]))
            rec["seconds_since_last_txn"] = int(rng.choice([-(2**63), 2**63 - 1]))
        if i % 17 == 0:
            rec["device_id"] = "d" * int(rng.integers(60, 300))
    return records


def test_transaction_schema_matches_fastavro() -> None:
    """A few thousand varied transactions decode to fastavro's values in every column."""
    records = transaction_records(3000)
    payloads = encode(TRANSACTION, records)
    batch = ColumnarDecoder(TRANSACTION).decode(payloads)
    assert batch.ok.all(), batch.errors
    assert list(batch.columns) == [f["name"] for f in TRANSACTION["fields"]]
    for name, col in batch.columns.items():
        assert col.to_objects().tolist() == [r[name] for r in records] or name == "amount", name
    amount = batch.columns["amount"]
    assert isinstance(amount, NumericColumn)
    np.testing.assert_array_equal(amount.values, [r["amount"] for r in records])
    assert_matches_fastavro(batch, payloads, TRANSACTION)


def test_transaction_column_types_and_conversions() -> None:
    """Columns have the documented kinds and convert to ONNX-ready arrays."""
    records = transaction_records(50)
    batch = ColumnarDecoder(TRANSACTION).decode(encode(TRANSACTION, records))
    cols = batch.columns
    dist = cols["distance_from_home_km"]
    assert isinstance(dist, NumericColumn)
    assert dist.null is not None
    f32 = dist.to_numpy(np.float32)
    assert f32.dtype == np.float32
    for i, rec in enumerate(records):
        if rec["distance_from_home_km"] is None:
            assert np.isnan(f32[i])
        else:
            assert f32[i] == np.float32(rec["distance_from_home_km"])
    assert cols["mcc"].to_numpy(np.int64).tolist() == [r["mcc"] for r in records]
    with pytest.raises(ValueError, match="nulls"):
        cols["seconds_since_last_txn"].to_numpy(np.int64)
    channel = cols["channel"]
    assert isinstance(channel, EnumColumn)
    assert channel.to_symbols().tolist() == [r["channel"] for r in records]
    assert channel.to_numpy(np.float32).tolist() == [
        float(channel.symbols.index(r["channel"])) for r in records
    ]
    country = cols["country"]
    assert isinstance(country, BytesColumn)
    assert country.to_numpy(str).tolist() == [r["country"] for r in records]
    event_time = cols["event_time"]
    assert isinstance(event_time, NumericColumn)
    assert event_time.logical == "timestamp-millis"
    assert event_time.unit == "ms"
    assert event_time.values.dtype == np.int64
    full = fastavro.schemaless_reader(
        io.BytesIO(encode(TRANSACTION, records[:1])[0]), fastavro.parse_schema(TRANSACTION)
    )
    got = event_time.to_datetime64()[0].astype("datetime64[ms]").item()
    assert got == full["event_time"].replace(tzinfo=None)


def test_logical_types_match_fastavro_conversions() -> None:
    """Decimal, date and timestamp helpers agree with fastavro's logical conversions."""
    schema = {
        "type": "record",
        "name": "L",
        "fields": [
            {
                "name": "d",
                "type": {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2},
            },
            {
                "name": "fd",
                "type": [
                    "null",
                    {
                        "type": "fixed",
                        "name": "FD",
                        "size": 6,
                        "logicalType": "decimal",
                        "precision": 12,
                        "scale": 4,
                    },
                ],
            },
            {"name": "day", "type": {"type": "int", "logicalType": "date"}},
            {"name": "us", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        ],
    }
    records = [
        {
            "d": Decimal("-12.34"),
            "fd": Decimal("3.1415"),
            "day": 19000,
            "us": 1_700_000_000_123_456,
        },
        {"d": Decimal("0.00"), "fd": None, "day": -5, "us": 0},
    ]
    payloads = encode(schema, records)
    batch = ColumnarDecoder(schema).decode(payloads)
    assert batch.ok.all()
    parsed = fastavro.parse_schema(copy.deepcopy(schema))
    full = [fastavro.schemaless_reader(io.BytesIO(p), parsed) for p in payloads]
    d, fd = batch.columns["d"], batch.columns["fd"]
    assert isinstance(d, DecimalColumn)
    assert isinstance(fd, DecimalColumn)
    assert (d.precision, d.scale) == (9, 2)
    assert d.to_decimal().tolist() == [r["d"] for r in full]
    assert fd.to_decimal().tolist() == [r["fd"] for r in full]
    assert fd.to_numpy(np.float64)[1] != fd.to_numpy(np.float64)[1]  # NaN for null
    day = batch.columns["day"]
    assert isinstance(day, NumericColumn)
    assert [x.item() for x in day.to_datetime64()] == [r["day"] for r in full]
    us = batch.columns["us"]
    assert isinstance(us, NumericColumn)
    assert us.to_datetime64()[0].item() == full[0]["us"].replace(tzinfo=None)


# --------------------------------------------------------------------------- resolution

BASE = {
    "type": "record",
    "name": "Rec",
    "fields": [
        {"name": "a", "type": "int"},
        {"name": "b", "type": "long"},
        {"name": "c", "type": "float"},
        {"name": "s", "type": "string"},
        {"name": "y", "type": "bytes"},
        {"name": "e", "type": {"type": "enum", "name": "Col", "symbols": ["R", "G", "B"]}},
        {"name": "gone", "type": {"type": "array", "items": "string"}},
        {"name": "n", "type": ["null", "int"]},
    ],
}
BASE_RECORDS = [
    {
        "a": i * 37 - 50,
        "b": -(i**7),
        "c": i / 3,
        "s": f"s{i}é",
        "y": f"y{i}ü".encode(),
        "e": "RGB"[i % 3],
        "gone": ["x"] * (i % 4),
        "n": None if i % 2 else i,
    }
    for i in range(40)
]


def _reader(**changes: Any) -> dict[str, Any]:
    reader = copy.deepcopy(BASE)
    fields = {f["name"]: f for f in reader["fields"]}
    for name, new in changes.items():
        if new is None:
            del fields[name]
        else:
            fields[name] = {"name": name, **new}
    reader["fields"] = list(fields.values())
    return reader


RESOLUTION_CASES: dict[str, dict[str, Any]] = {
    "added_with_default": _reader(
        z={"type": "double", "default": 2.5},
        zs={"type": "string", "default": "dflt"},
        zn={"type": ["null", "long"], "default": None},
        ze={"type": {"type": "enum", "name": "K", "symbols": ["P", "Q"]}, "default": "Q"},
        zr={
            "type": {"type": "record", "name": "Z", "fields": [{"name": "q", "type": "int"}]},
            "default": {"q": 7},
        },
    ),
    "removed": _reader(gone=None, b=None),
    "promotions": _reader(
        a={"type": "double"},
        b={"type": "float"},
        c={"type": "double"},
        s={"type": "bytes"},
        y={"type": "string"},
        n={"type": ["null", "double"]},
    ),
    "int_to_long_and_float": _reader(a={"type": "long"}, n={"type": ["null", "float"]}),
    "enum_reordered": _reader(
        e={"type": {"type": "enum", "name": "Col", "symbols": ["B", "G", "R", "X"]}}
    ),
    "enum_default": _reader(
        e={"type": {"type": "enum", "name": "Col", "symbols": ["G", "U"], "default": "U"}}
    ),
    "to_union": _reader(a={"type": ["null", "int"]}, s={"type": ["int", "string"]}),
}


@pytest.mark.parametrize("case", list(RESOLUTION_CASES))
def test_schema_resolution_matches_fastavro(case: str) -> None:
    """Resolved columns equal fastavro.schemaless_reader(buf, writer, reader)."""
    reader = RESOLUTION_CASES[case]
    payloads = encode(BASE, BASE_RECORDS)
    batch = ColumnarDecoder(BASE, reader).decode(payloads)
    assert batch.ok.all(), batch.errors
    assert set(batch.columns) == set(leaf_paths(reader))
    assert_matches_fastavro(batch, payloads, BASE, reader)


def test_enum_symbol_unknown_to_reader_fails_record() -> None:
    """A writer symbol the reader lacks (and no default) fails just those records."""
    reader = _reader(e={"type": {"type": "enum", "name": "Col", "symbols": ["R", "G"]}})
    batch = ColumnarDecoder(BASE, reader).decode(encode(BASE, BASE_RECORDS))
    for i, rec in enumerate(BASE_RECORDS):
        assert batch.ok[i] == (rec["e"] != "B")
        if rec["e"] == "B":
            assert "unknown to reader" in batch.errors[i]


def test_union_branch_unknown_to_reader_fails_record() -> None:
    """Reading [null, int] as int fails only the records that hold null."""
    reader = _reader(n={"type": "int"})
    batch = ColumnarDecoder(BASE, reader).decode(encode(BASE, BASE_RECORDS))
    assert batch.ok.tolist() == [r["n"] is not None for r in BASE_RECORDS]


@pytest.mark.parametrize(
    "reader",
    [
        _reader(a={"type": "string"}),
        _reader(z={"type": "int"}),
        _reader(c={"type": "int"}),
        _reader(e={"type": {"type": "enum", "name": "Other", "symbols": ["R"]}}),
        {"type": "array", "items": "int"},
    ],
    ids=["int_as_string", "added_without_default", "float_as_int", "enum_renamed", "not_record"],
)
def test_incompatible_schemas_raise(reader: dict[str, Any]) -> None:
    """Incompatible reader schemas are rejected at construction."""
    with pytest.raises(ValueError):
        ColumnarDecoder(BASE, reader)


def test_unknown_requested_field_raises() -> None:
    """Asking for a field the reader schema lacks is a construction error."""
    with pytest.raises(ValueError, match="no field"):
        ColumnarDecoder(BASE, fields=["nope"])


def test_nested_flattening_and_requests() -> None:
    """Nested fields are requested as outer.inner; a record field expands to its leaves."""
    schema = {
        "type": "record",
        "name": "O",
        "fields": [
            {"name": "x", "type": "int"},
            {
                "name": "geo",
                "type": [
                    "null",
                    {
                        "type": "record",
                        "name": "G",
                        "fields": [
                            {"name": "lat", "type": "double"},
                            {"name": "tags", "type": {"type": "map", "values": "long"}},
                            {
                                "name": "inner",
                                "type": {
                                    "type": "record",
                                    "name": "I",
                                    "fields": [{"name": "k", "type": "string"}],
                                },
                            },
                        ],
                    },
                ],
            },
        ],
    }
    records = [
        {"x": 1, "geo": None},
        {"x": 2, "geo": {"lat": 1.5, "tags": {"a": 3}, "inner": {"k": "v"}}},
    ]
    payloads = encode(schema, records)
    one = ColumnarDecoder(schema, fields=["geo.lat"]).decode(payloads)
    assert list(one.columns) == ["geo.lat"]
    assert one.columns["geo.lat"].to_objects().tolist() == [None, 1.5]
    allgeo = ColumnarDecoder(schema, fields=["geo"]).decode(payloads)
    assert list(allgeo.columns) == ["geo.lat", "geo.tags", "geo.inner.k"]
    assert isinstance(allgeo.columns["geo.tags"], ObjectColumn)
    assert allgeo.columns["geo.tags"].to_objects().tolist() == [None, {"a": 3}]
    assert allgeo.columns["geo.inner.k"].to_objects().tolist() == [None, "v"]
    assert_matches_fastavro(allgeo, payloads, schema)


def test_recursive_schema_falls_back() -> None:
    """A recursive record decodes through the per-record fallback and skips vectorised."""
    schema = {
        "type": "record",
        "name": "Node",
        "fields": [
            {"name": "v", "type": "int"},
            {"name": "next", "type": ["null", "Node"]},
            {"name": "w", "type": "string"},
        ],
    }
    records = [
        {"v": 1, "next": None, "w": "a"},
        {"v": 2, "next": {"v": 3, "next": {"v": 4, "next": None, "w": "c"}, "w": "b"}, "w": "d"},
    ]
    payloads = encode(schema, records)
    batch = ColumnarDecoder(schema).decode(payloads)
    assert batch.ok.all()
    assert_matches_fastavro(batch, payloads, schema)
    skip = ColumnarDecoder(schema, fields=["w"]).decode(payloads)
    assert skip.columns["w"].to_objects().tolist() == ["a", "d"]


# --------------------------------------------------------------------------- malformed input

BLOCKS = {
    "type": "record",
    "name": "B",
    "fields": [
        {"name": "xs", "type": {"type": "array", "items": "int"}},
        {"name": "m", "type": {"type": "map", "values": ["null", "string"]}},
        {"name": "u", "type": ["null", "int", "string", {"type": "array", "items": "double"}]},
        {"name": "k", "type": "long"},
    ],
}


def _block_payload(xs: list[int], k: int) -> bytes:
    """An array encoded as one negative-count block (with byte size) followed by m, u, k."""
    body = b"".join(_zz(x) for x in xs)
    arr = (_zz(-len(xs)) + _zz(len(body)) + body + b"\x00") if xs else b"\x00"
    return arr + b"\x00" + b"\x00" + _zz(k)


def _zz(v: int) -> bytes:
    u = (v << 1) ^ (v >> 63)
    out = bytearray()
    while True:
        if u < 0x80:
            out.append(u)
            return bytes(out)
        out.append((u & 0x7F) | 0x80)
        u >>= 7


@pytest.mark.parametrize("fields", [None, ["k"]])
def test_negative_block_counts(fields: list[str] | None) -> None:
    """Blocks with negative counts and byte sizes decode and skip; a wrong size is rejected."""
    good = [_block_payload([1, -2, 300], 9), _block_payload([], 4)]
    bad = bytearray(_block_payload([1, 2], 5))
    bad[1] = 6  # wrong byte size
    batch = ColumnarDecoder(BLOCKS, fields=fields).decode([*good, bytes(bad)])
    assert batch.ok.tolist() == [True, True, False]
    assert "size" in batch.errors[2]
    assert batch.columns["k"].to_objects().tolist()[:2] == [9, 4]
    if fields is None:
        assert batch.columns["xs"].to_objects().tolist()[:2] == [[1, -2, 300], []]
        assert_matches_fastavro(batch, [*good, bytes(bad)], BLOCKS)


def test_zero_byte_item_bomb_is_rejected() -> None:
    """An array of nulls claiming more items than allowed fails instead of spinning."""
    schema = {
        "type": "record",
        "name": "Z",
        "fields": [{"name": "xs", "type": {"type": "array", "items": "null"}}],
    }
    payload = _zz(MAX_RECORD_ITEMS + 1) + b"\x00"
    for fields in (None, []):
        batch = ColumnarDecoder(schema, fields=fields).decode([payload, _zz(3) + b"\x00"])
        assert batch.ok.tolist() == [False, True]


def _check_fuzzed(
    decoder: ColumnarDecoder,
    writer: Mapping[str, Any],
    payloads: list[bytes],
    *,
    subset: bool = False,
) -> None:
    batch = decoder.decode(payloads)
    assert set(batch.errors) == set(np.flatnonzero(~batch.ok).tolist())
    assert_matches_fastavro(batch, payloads, writer, allow_unicode_skip=subset)


SUBSET = [
    "amount",
    "merchant_category",
    "mcc",
    "channel",
    "card_present",
    "country",
    "home_country",
    "distance_from_home_km",
    "txn_count_1h",
    "seconds_since_last_txn",
    "is_new_device",
]
FUZZ_BASE = encode(TRANSACTION, transaction_records(40, seed=11))
FUZZ_BLOCKS = [
    *encode(
        BLOCKS,
        [
            {"xs": [1, 2, 3], "m": {"a": "b", "c": None}, "u": "str", "k": 5},
            {"xs": [], "m": {}, "u": [1.5, 2.5], "k": -1},
            {"xs": [2**31 - 1], "m": {"é": "ü"}, "u": 7, "k": 2**40},
        ],
    ),
    _block_payload([5, 6], 3),
]
DECODERS: list[tuple[Mapping[str, Any], ColumnarDecoder, bool]] = [
    (TRANSACTION, ColumnarDecoder(TRANSACTION), False),
    (TRANSACTION, ColumnarDecoder(TRANSACTION, fields=SUBSET), True),
    (BLOCKS, ColumnarDecoder(BLOCKS), False),
    (BLOCKS, ColumnarDecoder(BLOCKS, fields=["k"]), True),
]


def test_every_truncation_fails_cleanly() -> None:
    """Every proper prefix of a record is rejected with a reason and never raises."""
    for writer, decoder, subset in DECODERS:
        base = FUZZ_BASE[:4] if writer is TRANSACTION else FUZZ_BLOCKS
        prefixes = [p[:n] for p in base for n in range(len(p))]
        batch = decoder.decode([*prefixes, *base])
        assert not batch.ok[: len(prefixes)].any()
        assert batch.ok[len(prefixes) :].all()
        _check_fuzzed(decoder, writer, [*prefixes, *base], subset=subset)


def test_empty_and_single_batches() -> None:
    """A batch of zero records and a batch of one record both work."""
    decoder = ColumnarDecoder(TRANSACTION)
    empty = decoder.decode([])
    assert empty.n == 0
    assert empty.ok.shape == (0,)
    assert all(len(c) == 0 for c in empty.columns.values())
    assert empty.columns["country"].to_objects().tolist() == []
    one = decoder.decode([memoryview(FUZZ_BASE[0])])
    assert one.n == 1
    assert one.ok.tolist() == [True]
    assert_matches_fastavro(one, FUZZ_BASE[:1], TRANSACTION)
    assert decoder.decode([b""]).ok.tolist() == [False]


def test_specific_malformations_have_reasons() -> None:
    """Trailing bytes, long varints, bad union/enum indexes and bad UTF-8 are named."""
    decoder = ColumnarDecoder(BASE)
    good = encode(BASE, BASE_RECORDS[:1])[0]
    bad_utf8 = encode(BASE, [{**BASE_RECORDS[0], "s": "ab"}])[0].replace(b"ab", b"\xff\xfe")
    cases = {
        "trailing": good + b"\x00",
        "varint too long": b"\xff" * 11,
        "overflow": b"\x80\x80\x80\x80\x7f" + good[1:],
        "union": good[:-2] + b"\x08\x00",
        "UTF-8": bad_utf8,
    }
    batch = decoder.decode(list(cases.values()))
    assert not batch.ok.any()
    for i, word in enumerate(cases):
        assert word.split()[0] in batch.errors[i], (word, batch.errors[i])
    enum_bad = bytearray(good)
    enum_at = len(good) - len(b"\x02\x00\x00") - 1
    enum_bad[enum_at] = 0x08
    assert not decoder.decode([bytes(enum_bad)]).ok[0]


def _flip(payloads: list[bytes], data: st.DataObject) -> list[bytes]:
    out = []
    for p in payloads:
        b = bytearray(p)
        for _ in range(data.draw(st.integers(0, 3))):
            if b:
                b[data.draw(st.integers(0, len(b) - 1))] = data.draw(st.integers(0, 255))
        out.append(bytes(b))
    return out


def _fuzz(data: st.DataObject) -> None:
    writer, decoder, subset = data.draw(st.sampled_from(DECODERS))
    base = FUZZ_BASE if writer is TRANSACTION else FUZZ_BLOCKS
    picked = data.draw(st.lists(st.sampled_from(base), min_size=1, max_size=8))
    payloads = _flip(picked, data)
    payloads += data.draw(st.lists(st.binary(max_size=60), max_size=3))
    _check_fuzzed(decoder, writer, payloads, subset=subset)


@FAST
@given(st.data())
def test_fuzz_flips_and_garbage(data: st.DataObject) -> None:
    """Random byte flips and garbage never raise; ok records equal fastavro's reading."""
    _fuzz(data)


@pytest.mark.slow
@SLOW
@given(st.data())
def test_fuzz_flips_and_garbage_long(data: st.DataObject) -> None:
    """The byte-flip/garbage fuzz with many more examples."""
    _fuzz(data)


@pytest.mark.slow
@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(schema_and_records(max_records=20))
def test_generated_schemas_match_fastavro_long(case: tuple[dict[str, Any], list[Any]]) -> None:
    """The generated-schema equivalence with many more examples."""
    schema, records = case
    payloads = encode(schema, records)
    batch = ColumnarDecoder(schema).decode(payloads)
    assert batch.ok.all(), batch.errors
    assert_matches_fastavro(batch, payloads, schema)


@FAST
@given(schema_and_records(max_records=4), st.data())
def test_generated_schemas_truncated(
    case: tuple[dict[str, Any], list[Any]], data: st.DataObject
) -> None:
    """Truncated and flipped payloads of generated schemas never raise and never disagree."""
    schema, records = case
    payloads = encode(schema, records)
    if not payloads:
        return
    cut = [p[: data.draw(st.integers(0, len(p)))] for p in payloads]
    decoder = ColumnarDecoder(schema)
    _check_fuzzed(decoder, schema, cut + _flip(payloads, data))


@pytest.mark.parametrize("multiplier", [0x100000001B3, 0])
def test_strings_by_distinct_value_survive_hash_collisions(
    monkeypatch: pytest.MonkeyPatch, multiplier: int
) -> None:
    """Long batches materialise strings by distinct value, grouped by a hash of their words;
    with a hash that collides (multiplier 0 drops all but the last word and the length) the
    check against each group's first row falls back to the exact sort, never merging values."""
    monkeypatch.setattr(columnar.columns, "_HASH_MULTIPLIER", np.uint64(multiplier))
    values = ["a", "a\x00", "", "entertainment", "entertainmenT", "Zürich-Zentrum-Nord-7"]
    rows = [values[i % len(values)] for i in range(UNIQUE_MIN_ROWS * 2)]
    raw = [v.encode() for v in rows]
    column = BytesColumn(
        name="merchant_category",
        buffer=np.frombuffer(b"".join(raw), dtype=np.uint8),
        start=np.cumsum([0, *map(len, raw)])[:-1].astype(np.int64),
        length=np.array([len(r) for r in raw], dtype=np.int64),
    )

    assert column.to_objects().tolist() == rows
