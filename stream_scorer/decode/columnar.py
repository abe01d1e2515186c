"""Columnar Avro batch decoder: one field at a time across a whole micro-batch, in numpy.

fastavro decodes one record at a time into a dict (12-25 us per ~20-field transaction here).
A model only needs numpy columns, so this module decodes *field by field across the batch*:

* The payloads are concatenated into one ``uint8`` buffer (padded with zero bytes) with one
  read position ``pos`` and one end ``end`` per record.
* A varint is decoded for every active record at once: gather up to 10 bytes per record into a
  matrix, find the first byte without the continuation bit, OR the 7-bit groups, zigzag-decode.
  A one-byte fast path covers the common case.
* ``float``/``double`` are gathered by offset (``pos[:, None] + arange(8)``) and viewed as
  ``<f4``/``<f8``; ``boolean`` is one gathered byte.
* ``string``/``bytes``/``fixed`` are never copied while decoding: the column keeps the shared
  buffer plus ``start``/``length`` arrays and builds ``str``/``bytes`` objects only when asked.
* Unions read the branch index vectorised and decode each branch for its subset of records;
  ``["null", T]`` is therefore vectorised, and so is any union that is only skipped.
* Nested records are flattened: a leaf is requested as ``"outer.inner"``; requesting a record
  field materialises all of its leaves. Fields nobody asked for are skipped vectorised
  (arrays and maps too, block by block); nothing is materialised for them.
* Arrays, maps, unions with several non-null branches and recursive records that *are*
  requested fall back to a per-record pure-Python reader and become object columns.

Values are scattered into per-column arrays by record index, so a record that fails is simply
dropped from the active set (its position frozen) and later fields are not decoded for it.

Rejected (the record gets ``ok=False`` and a reason, never an exception or out-of-record read):
reads past the record's own end (every gather is checked against the record end, not the buffer
end), varints longer than 10 bytes (5 for ``int``) or overflowing 64 bits (32 for ``int``),
negative or out-of-range lengths and block sizes, union branch and enum indexes out of range,
enum symbols the reader does not know (unless the reader enum has a default), booleans other
than 0/1, array/map blocks whose declared byte size disagrees with their items, invalid UTF-8 in
a string that is materialised, and trailing bytes after the record.

Logical types are kept raw: ``timestamp-millis``/``timestamp-micros`` (and the ``local-``
variants, ``time-micros``) as int64 milli/microseconds since the epoch (or midnight), ``date``
and ``time-millis`` as int32 days/milliseconds, ``decimal`` as its two's-complement big-endian
bytes with precision and scale attached (see :meth:`DecimalColumn.to_decimal`). Object columns
from the fallback keep the same raw convention (decimals as bytes, timestamps as int).

Schema resolution follows the Avro specification (see :class:`ColumnarDecoder`).
"""

from __future__ import annotations

import copy
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

import numpy as np
from numpy.typing import DTypeLike, NDArray

__all__ = [
    "MAX_INT_VARINT_BYTES",
    "MAX_LONG_VARINT_BYTES",
    "MAX_ZERO_BYTE_ITEMS",
    "PAD_BYTES",
    "BytesColumn",
    "Column",
    "ColumnBatch",
    "ColumnarDecoder",
    "DecimalColumn",
    "EnumColumn",
    "NumericColumn",
    "ObjectColumn",
]

# Zero bytes appended after the concatenated payloads so that fixed-width gathers (at most 10
# bytes from any in-record position) stay inside the array; bytes at or after a record's end are
# still rejected by the per-record end check.
PAD_BYTES: Final = 16
# Longest legal varint encodings: 5 bytes for a 32-bit int, 10 bytes for a 64-bit long.
MAX_INT_VARINT_BYTES: Final = 5
MAX_LONG_VARINT_BYTES: Final = 10
# Most items one array/map block may claim when an item can occupy zero bytes (e.g. null items):
# otherwise a 3-byte payload could announce 2**62 items and keep the decoder busy for ever.
MAX_ZERO_BYTE_ITEMS: Final = 1 << 16

_I64 = NDArray[np.int64]
_PyRead = Callable[[bytes, int, int], tuple[Any, int]]

# Avro primitive type names.
_PRIMITIVES: Final = frozenset(
    {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
)
# Avro named complex types.
_NAMED: Final = frozenset({"record", "enum", "fixed"})
# Writer type -> reader type pairs the specification allows besides identity.
_PROMOTIONS: Final = frozenset(
    {
        ("int", "long"),
        ("int", "float"),
        ("int", "double"),
        ("long", "float"),
        ("long", "double"),
        ("float", "double"),
        ("string", "bytes"),
        ("bytes", "string"),
    }
)
# Logical types kept as raw int64 / int32 values in a NumericColumn.
_LONG_LOGICAL: Final = frozenset(
    {
        "timestamp-millis",
        "timestamp-micros",
        "local-timestamp-millis",
        "local-timestamp-micros",
        "time-micros",
    }
)
_INT_LOGICAL: Final = frozenset({"date", "time-millis"})
# numpy datetime64 unit of each timestamp-like logical type.
_DATETIME_UNIT: Final = {
    "timestamp-millis": "ms",
    "timestamp-micros": "us",
    "local-timestamp-millis": "ms",
    "local-timestamp-micros": "us",
    "date": "D",
}

_AR: Final = np.arange(MAX_LONG_VARINT_BYTES, dtype=np.int64)
#: Mask of the first k bytes of a little-endian 64-bit word, k = 0..8.
_WORD_MASKS: Final = np.array(
    [(1 << (8 * k)) - 1 for k in range(8)] + [(1 << 64) - 1], dtype=np.uint64
)
_HASH_MULTIPLIER: Final = np.uint64(0x100000001B3)  # FNV-1a 64-bit prime
_SHIFTS: Final = (7 * _AR).astype(np.uint64)


# --------------------------------------------------------------------------- columns

#: Batches at least this long materialise short strings by distinct value (one sort).
UNIQUE_MIN_ROWS = 64
#: Longest string (bytes) materialised by distinct value; longer ones are sliced per row.
UNIQUE_MAX_BYTES = 48
#: Byte offsets of the 64-bit words a string by distinct value is read as (all it can span).
_WORD_BYTES: Final = np.arange(8 * -(-UNIQUE_MAX_BYTES // 8), dtype=np.int64)


@dataclass(frozen=True, slots=True, kw_only=True)
class Column:
    """One decoded field across a batch.

    Rows whose record failed to decode (``ColumnBatch.ok`` False) hold zero/empty values and are
    null where the column is nullable.

    Attributes:
        name: Column name (dotted path for flattened nested fields).
        null: Per-row null mask for nullable columns (a ``null`` branch on the path), else None.
    """

    name: str
    null: NDArray[np.bool_] | None = None

    def __len__(self) -> int:
        """Return the number of rows."""
        raise NotImplementedError

    def to_numpy(self, dtype: DTypeLike = np.float32, fill: float | None = None) -> NDArray[Any]:
        """Return the column as a numpy array of ``dtype`` (e.g. to bind it to an ONNX input).

        Args:
            dtype: Target dtype; ``object`` gives Python objects (see :meth:`to_objects`).
            fill: Value for null rows; defaults to NaN for float dtypes.

        Returns:
            A new array of length ``len(self)``.

        Raises:
            TypeError: The column cannot be converted to ``dtype``.
            ValueError: The column has nulls, ``dtype`` cannot hold NaN and no ``fill`` is given.
        """
        raise NotImplementedError

    def to_objects(self) -> NDArray[np.object_]:
        """Return an object array of Python values, ``None`` for nulls."""
        raise NotImplementedError

    def _nullify(self, out: NDArray[Any], fill: float | None) -> NDArray[Any]:
        if self.null is None or not self.null.any():
            return out
        if fill is None:
            if out.dtype.kind != "f":
                msg = f"column {self.name!r} has nulls; pass fill= for dtype {out.dtype}"
                raise ValueError(msg)
            fill = float("nan")
        out[self.null] = fill
        return out

    def _objects_with_nulls(self, values: list[Any]) -> NDArray[np.object_]:
        out = np.empty(len(values), dtype=object)
        out[:] = values
        if self.null is not None:
            out[self.null] = None
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class NumericColumn(Column):
    """A boolean, int, long, float or double column (also raw date/time/timestamp values).

    Attributes:
        values: bool, int32, int64, float32 or float64 array.
        logical: Avro logical type of the reader field, if any; timestamps are int64 ms or us
            since the Unix epoch, ``date`` int32 days since the epoch (see :attr:`unit`).
    """

    values: NDArray[Any]
    logical: str | None = None

    def __len__(self) -> int:
        """Return the number of rows."""
        return len(self.values)

    @property
    def unit(self) -> str | None:
        """Return the numpy datetime64 unit of a timestamp/date column ("ms", "us", "D")."""
        return _DATETIME_UNIT.get(self.logical or "")

    def to_numpy(self, dtype: DTypeLike = np.float32, fill: float | None = None) -> NDArray[Any]:
        """Return the values as ``dtype``; nulls become ``fill`` (NaN for float dtypes)."""
        if np.dtype(dtype) == np.dtype(object):
            return self.to_objects()
        return self._nullify(self.values.astype(dtype), fill)

    def to_objects(self) -> NDArray[np.object_]:
        """Return an object array of Python bool/int/float values, ``None`` for nulls."""
        return self._objects_with_nulls(self.values.tolist())

    def to_datetime64(self) -> NDArray[np.datetime64]:
        """Return a timestamp/date column as ``datetime64`` (NaT for nulls).

        Raises:
            TypeError: The column has no timestamp or date logical type.
        """
        unit = self.unit
        if unit is None:
            msg = f"column {self.name!r} is not a timestamp or date"
            raise TypeError(msg)
        out = self.values.astype(np.int64).astype(f"datetime64[{unit}]")
        if self.null is not None:
            out[self.null] = np.datetime64("NaT")
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class BytesColumn(Column):
    """A string, bytes or fixed column kept as slices of one shared buffer.

    Attributes:
        buffer: The batch buffer (read-only uint8) the slices point into.
        start: int64 start offset of each row's value in ``buffer``.
        length: int64 length in bytes of each row's value.
        is_string: True for Avro ``string`` (objects are ``str``), False for bytes/fixed.
    """

    buffer: NDArray[np.uint8]
    start: NDArray[np.int64]
    length: NDArray[np.int64]
    is_string: bool = True

    def __len__(self) -> int:
        """Return the number of rows."""
        return len(self.start)

    def to_bytes(self) -> list[bytes]:
        """Return each row's raw bytes (empty for null rows)."""
        raw = self.buffer.tobytes()
        return [
            raw[s : s + n] for s, n in zip(self.start.tolist(), self.length.tolist(), strict=True)
        ]

    def to_objects(self) -> NDArray[np.object_]:
        """Return an object array of ``str`` (strings) or ``bytes``, ``None`` for nulls."""
        n = len(self.start)
        longest = int(self.length.max()) if n else 0
        if n >= UNIQUE_MIN_ROWS and longest <= UNIQUE_MAX_BYTES:
            return self._objects_by_value(longest)
        items = self.to_bytes()
        if self.is_string:
            return self._objects_with_nulls([b.decode("utf-8", "replace") for b in items])
        return self._objects_with_nulls(list(items))

    def _objects_by_value(self, width: int) -> NDArray[np.object_]:
        """Materialise each distinct value once: categorical fields (country, channel, merchant
        category) repeat a few values over a whole batch.

        Each row's bytes are read as little-endian 64-bit words (bytes past its length masked
        off) and hashed together with its length; rows are grouped by hash with one integer
        sort, and every row is checked against the first row of its group, so a hash collision
        falls back to the exact sort of fixed-width keys instead of merging two values.
        """
        words = -(-width // 8) or 1
        index = np.minimum(self.start[:, None] + _WORD_BYTES[: 8 * words], len(self.buffer) - 1)
        word = np.ascontiguousarray(self.buffer[index]).view("<u8")  # (n, words)
        valid = self.length[:, None] - _WORD_BYTES[: 8 * words : 8]  # value bytes per word
        word &= _WORD_MASKS[np.minimum(np.maximum(valid, 0, out=valid), 8, out=valid)]
        hashed = self.length.astype(np.uint64)
        for k in range(words):
            hashed = (hashed * _HASH_MULTIPLIER) ^ word[:, k]
        _, first, inverse = np.unique(hashed, return_index=True, return_inverse=True)
        inverse = inverse.ravel()
        leader = first[inverse]
        if not (
            np.array_equal(word[leader], word) and np.array_equal(self.length[leader], self.length)
        ):
            return self._objects_by_sorting(width)
        buffer = self.buffer
        values = [
            buffer[s : s + m].tobytes()
            for s, m in zip(self.start[first].tolist(), self.length[first].tolist(), strict=True)
        ]
        table = np.empty(len(values), dtype=object)
        table[:] = [v.decode("utf-8", "replace") for v in values] if self.is_string else values
        out: NDArray[np.object_] = table[inverse]
        if self.null is not None:
            out[self.null] = None
        return out

    def _objects_by_sorting(self, width: int) -> NDArray[np.object_]:
        """:meth:`_objects_by_value` by an exact sort of fixed-width keys (hash collisions)."""
        n = len(self.start)
        offsets = np.arange(width + 1, dtype=np.int64)
        # Key = the value's bytes zero-padded to `width`, then its length (a value may end in
        # zero bytes, so the padding alone would not tell "a" from "a\0").
        index = np.minimum(self.start[:, None] + offsets[:width], len(self.buffer) - 1)
        keys = np.zeros((n, width + 1), dtype=np.uint8)
        if width:
            keys[:, :width] = np.where(
                offsets[:width] < self.length[:, None], self.buffer[index], 0
            )
        keys[:, width] = self.length
        void = np.ascontiguousarray(keys).view(np.dtype((np.void, width + 1))).ravel()
        unique, inverse = np.unique(void, return_inverse=True)
        table = np.empty(len(unique), dtype=object)
        for k, key in enumerate(unique.tolist()):
            raw = bytes(key[: key[width]])
            table[k] = raw.decode("utf-8", "replace") if self.is_string else raw
        out: NDArray[np.object_] = table[inverse.ravel()]
        if self.null is not None:
            out[self.null] = None
        return out

    def to_numpy(self, dtype: DTypeLike = object, fill: float | None = None) -> NDArray[Any]:
        """Return an object array (``dtype=object``) or a fixed-width ``str_`` array (``str``).

        Raises:
            TypeError: ``dtype`` is numeric.
        """
        dt = np.dtype(dtype)
        if dt == np.dtype(object):
            return self.to_objects()
        if dt.kind == "U":
            objs = self.to_objects()
            return np.array(["" if o is None else o for o in objs.tolist()], dtype=dt)
        msg = f"string/bytes column {self.name!r} cannot become {dt}"
        raise TypeError(msg)


@dataclass(frozen=True, slots=True, kw_only=True)
class DecimalColumn(BytesColumn):
    """A ``decimal`` logical column: raw two's-complement big-endian unscaled bytes.

    Attributes:
        precision: Declared precision.
        scale: Declared scale (value = unscaled * 10**-scale).
    """

    precision: int = 0
    scale: int = 0

    def to_decimal(self) -> NDArray[np.object_]:
        """Return an object array of :class:`decimal.Decimal`, ``None`` for nulls."""
        return self._objects_with_nulls(
            [
                Decimal(int.from_bytes(b, "big", signed=True)).scaleb(-self.scale)
                for b in self.to_bytes()
            ]
        )

    def to_numpy(self, dtype: DTypeLike = np.float64, fill: float | None = None) -> NDArray[Any]:
        """Return the decimal values as ``dtype`` (float: nulls NaN; object: Decimals)."""
        dt = np.dtype(dtype)
        if dt == np.dtype(object):
            return self.to_decimal()
        vals = [0.0 if d is None else float(d) for d in self.to_decimal().tolist()]
        return self._nullify(np.array(vals, dtype=dt), fill)


@dataclass(frozen=True, slots=True, kw_only=True)
class EnumColumn(Column):
    """An enum column: reader symbol index per row plus the reader's symbols.

    Attributes:
        index: int32 index into ``symbols``.
        symbols: The reader enum's symbols.
    """

    index: NDArray[np.int32]
    symbols: tuple[str, ...]

    def __len__(self) -> int:
        """Return the number of rows."""
        return len(self.index)

    def to_symbols(self) -> NDArray[np.object_]:
        """Return an object array of symbol strings, ``None`` for nulls."""
        table = np.array(self.symbols, dtype=object)
        out: NDArray[np.object_] = table[self.index] if len(table) else np.full(len(self), None)
        if self.null is not None:
            out[self.null] = None
        return out

    def to_objects(self) -> NDArray[np.object_]:
        """Return an object array of symbol strings, ``None`` for nulls."""
        return self.to_symbols()

    def to_numpy(self, dtype: DTypeLike = np.float32, fill: float | None = None) -> NDArray[Any]:
        """Return the indexes as ``dtype`` (nulls NaN/``fill``) or symbols for ``object``."""
        if np.dtype(dtype) == np.dtype(object):
            return self.to_symbols()
        return self._nullify(self.index.astype(dtype), fill)


@dataclass(frozen=True, slots=True, kw_only=True)
class ObjectColumn(Column):
    """A column of Python objects (arrays, maps, general unions, recursive records, null).

    Attributes:
        values: Object array; lists for arrays, dicts for maps and records, ``None`` for null.
    """

    values: NDArray[np.object_]

    def __len__(self) -> int:
        """Return the number of rows."""
        return len(self.values)

    def to_objects(self) -> NDArray[np.object_]:
        """Return the object array itself."""
        return self.values

    def to_numpy(self, dtype: DTypeLike = object, fill: float | None = None) -> NDArray[Any]:
        """Return the objects (``object``) or try ``np.asarray(values, dtype)``."""
        if np.dtype(dtype) == np.dtype(object):
            return self.values
        vals = [fill if v is None else v for v in self.values.tolist()]
        try:
            return np.asarray(vals, dtype=dtype)
        except (TypeError, ValueError) as exc:
            msg = f"object column {self.name!r} cannot become {dtype}"
            raise TypeError(msg) from exc


@dataclass(frozen=True, slots=True)
class ColumnBatch:
    """The result of decoding one micro-batch.

    Attributes:
        n: Number of payloads.
        columns: One column per requested leaf field, in reader-schema order.
        ok: Per record: decoded cleanly.
        errors: Record index -> reason, for every record with ``ok`` False.
    """

    n: int
    columns: dict[str, Column]
    ok: NDArray[np.bool_]
    errors: dict[int, str]


# --------------------------------------------------------------------------- schema handling


def _short(name: str) -> str:
    return name.rpartition(".")[2]


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _parse_schema(schema: Any) -> Any:
    """Normalise a schema: every type a dict (unions lists), named references resolved in place."""
    names: dict[str, dict[str, Any]] = {}

    def full_name(name: str, ns: str) -> str:
        return name if "." in name or not ns else f"{ns}.{name}"

    def parse(s: Any, ns: str) -> Any:
        if isinstance(s, str):
            if s in _PRIMITIVES:
                return {"type": s}
            for cand in (full_name(s, ns), s):
                if cand in names:
                    return names[cand]
            msg = f"unknown Avro type {s!r}"
            raise ValueError(msg)
        if isinstance(s, list):
            return [parse(b, ns) for b in s]
        if not isinstance(s, Mapping) or "type" not in s:
            msg = f"invalid Avro schema: {s!r}"
            raise ValueError(msg)
        t = s["type"]
        if isinstance(t, (list, Mapping)) or (
            isinstance(t, str)
            and t not in _PRIMITIVES
            and t not in _NAMED | {"error", "array", "map"}
        ):
            return parse(t, ns)
        node: dict[str, Any] = dict(s)
        if t in _NAMED or t == "error":
            node["type"] = "record" if t == "error" else t
            full = full_name(str(s["name"]), str(s.get("namespace", ns) or ""))
            node["name"] = full
            names[full] = node
            inner_ns = full.rpartition(".")[0]
            if node["type"] == "record":
                node["fields"] = [
                    {**f, "type": parse(f["type"], inner_ns)} for f in s.get("fields", [])
                ]
            elif node["type"] == "fixed":
                node["size"] = int(s["size"])
        elif t == "array":
            node["items"] = parse(s["items"], ns)
        elif t == "map":
            node["values"] = parse(s["values"], ns)
        return node

    return parse(schema, "")


def _kind(s: Any) -> str:
    return "union" if isinstance(s, list) else str(s["type"])


def _names_match(w: Mapping[str, Any], r: Mapping[str, Any]) -> bool:
    aliases = {_short(a) for a in r.get("aliases", [])}
    return _short(w["name"]) == _short(r["name"]) or _short(w["name"]) in aliases


def _compatible(w: Any, r: Any) -> bool:
    """Whether some value of writer type ``w`` can be read as reader type ``r``."""
    if isinstance(w, list):
        return any(_compatible(b, r) for b in w)
    if isinstance(r, list):
        return _select_branch(w, r) is not None
    return _matches(w, r)


def _matches(w: Mapping[str, Any], r: Mapping[str, Any]) -> bool:
    wk, rk = w["type"], r["type"]
    if wk == rk:
        if wk in _NAMED:
            return _names_match(w, r) and (wk != "fixed" or w["size"] == r["size"])
        if wk == "array":
            return _compatible(w["items"], r["items"])
        if wk == "map":
            return _compatible(w["values"], r["values"])
        return True
    return (wk, rk) in _PROMOTIONS


def _select_branch(w: Mapping[str, Any], r: list[Any]) -> Any | None:
    """The reader union branch a non-union writer type resolves to (exact first, then promoted)."""
    for rb in r:
        if not isinstance(rb, list) and rb["type"] == w["type"] and _matches(w, rb):
            return rb
    for rb in r:
        if not isinstance(rb, list) and _matches(w, rb):
            return rb
    return None


def _min_size(s: Any, stack: frozenset[int] = frozenset()) -> int:
    """Fewest bytes one value of writer type ``s`` occupies."""
    if isinstance(s, list):
        return 1
    k = s["type"]
    if k == "null":
        return 0
    if k == "float":
        return 4
    if k == "double":
        return 8
    if k == "fixed":
        return int(s["size"])
    if k == "record":
        if id(s) in stack:
            return 0
        inner = stack | {id(s)}
        return sum(_min_size(f["type"], inner) for f in s["fields"])
    return 1


def _json_default(r: Any, d: Any) -> Any:
    """Convert a JSON default to the raw Python value this module produces for reader type ``r``."""
    if isinstance(r, list):
        return _json_default(r[0], d)
    k = r["type"]
    if k in ("bytes", "fixed"):
        return str(d).encode("latin-1")
    if k in ("float", "double"):
        return float(d)
    if k == "array":
        return [_json_default(r["items"], x) for x in d]
    if k == "map":
        return {key: _json_default(r["values"], v) for key, v in d.items()}
    if k == "record":
        out = {}
        for f in r["fields"]:
            if f["name"] in d:
                out[f["name"]] = _json_default(f["type"], d[f["name"]])
            elif "default" in f:
                out[f["name"]] = _json_default(f["type"], f["default"])
            else:
                msg = f"record default lacks field {f['name']!r}"
                raise ValueError(msg)
        return out
    return d


# --------------------------------------------------------------------------- per-record fallback


class _DecodeError(Exception):
    """A record cannot be decoded (raised by the per-record fallback reader)."""


def _py_varint(b: bytes, p: int, e: int, max_bytes: int) -> tuple[int, int]:
    result = 0
    shift = 0
    for _ in range(max_bytes):
        if p >= e:
            msg = "truncated"
            raise _DecodeError(msg)
        byte = b[p]
        p += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            break
        shift += 7
    else:
        msg = "varint too long"
        raise _DecodeError(msg)
    if result >> (7 * max_bytes - (3 if max_bytes == MAX_INT_VARINT_BYTES else 6)) != 0:
        msg = "varint overflow"
        raise _DecodeError(msg)
    return (result >> 1) ^ -(result & 1), p


def _py_take(p: int, e: int, n: int) -> int:
    if n < 0:
        msg = "negative length"
        raise _DecodeError(msg)
    if n > e - p:
        msg = "length beyond record end" if n else "truncated"
        raise _DecodeError(msg)
    return p + n


class _PyCompiler:
    """Builds per-record readers ``(buf, pos, end) -> (value, new_pos)`` with resolution."""

    def __init__(self) -> None:
        self._memo: dict[tuple[int, int], _PyRead] = {}

    def reader(self, w: Any, r: Any) -> _PyRead:
        key = (id(w), id(r))
        if key in self._memo:
            return self._memo[key]
        cell: list[_PyRead] = []

        def trampoline(b: bytes, p: int, e: int) -> tuple[Any, int]:
            return cell[0](b, p, e)

        self._memo[key] = trampoline
        try:
            fn = self._build(w, r)
        except ValueError:
            del self._memo[key]
            raise
        cell.append(fn)
        self._memo[key] = fn
        return fn

    def _build(self, w: Any, r: Any) -> _PyRead:  # noqa: PLR0912, PLR0915
        if isinstance(w, list):
            subs: list[_PyRead] = []
            for i, wb in enumerate(w):
                try:
                    subs.append(self.reader(wb, r))
                except ValueError:
                    subs.append(_py_error(f"writer union branch {i} does not resolve"))
            if all(getattr(s, "is_error", False) for s in subs):
                msg = "no writer union branch resolves against the reader type"
                raise ValueError(msg)

            def read_union(b: bytes, p: int, e: int) -> tuple[Any, int]:
                br, p = _py_varint(b, p, e, MAX_LONG_VARINT_BYTES)
                if not 0 <= br < len(subs):
                    msg = "bad union branch index"
                    raise _DecodeError(msg)
                return subs[br](b, p, e)

            return read_union
        if isinstance(r, list):
            rb = _select_branch(w, r)
            if rb is None:
                msg = f"writer type {w['type']} matches no reader union branch"
                raise ValueError(msg)
            return self.reader(w, rb)
        if not _matches(w, r):
            msg = f"writer type {w['type']} cannot be read as {r['type']}"
            raise ValueError(msg)
        wk, rk = w["type"], r["type"]
        if wk == "null":
            return lambda b, p, e: (None, p)
        if wk == "boolean":

            def read_bool(b: bytes, p: int, e: int) -> tuple[Any, int]:
                if p >= e:
                    msg = "truncated"
                    raise _DecodeError(msg)
                if b[p] > 1:
                    msg = "bad boolean byte"
                    raise _DecodeError(msg)
                return b[p] == 1, p + 1

            return read_bool
        if wk in ("int", "long"):
            nb = MAX_INT_VARINT_BYTES if wk == "int" else MAX_LONG_VARINT_BYTES
            as_float = rk in ("float", "double")

            def read_int(b: bytes, p: int, e: int) -> tuple[Any, int]:
                v, p = _py_varint(b, p, e, nb)
                return (float(v) if as_float else v), p

            return read_int
        if wk in ("float", "double"):
            fmt = "<f" if wk == "float" else "<d"
            size = 4 if wk == "float" else 8

            def read_float(b: bytes, p: int, e: int) -> tuple[Any, int]:
                q = _py_take(p, e, size)
                return struct.unpack_from(fmt, b, p)[0], q

            return read_float
        if wk in ("bytes", "string"):
            as_str = rk == "string"

            def read_bytes(b: bytes, p: int, e: int) -> tuple[Any, int]:
                n, p = _py_varint(b, p, e, MAX_LONG_VARINT_BYTES)
                q = _py_take(p, e, n)
                raw = b[p:q]
                if as_str:
                    try:
                        return raw.decode("utf-8"), q
                    except UnicodeDecodeError:
                        msg = "invalid UTF-8"
                        raise _DecodeError(msg) from None
                return raw, q

            return read_bytes
        if wk == "fixed":
            size = int(w["size"])

            def read_fixed(b: bytes, p: int, e: int) -> tuple[Any, int]:
                q = _py_take(p, e, size)
                return b[p:q], q

            return read_fixed
        if wk == "enum":
            table = _enum_table(w, r)
            rsyms = list(r["symbols"])
            wsyms = list(w["symbols"])

            def read_enum(b: bytes, p: int, e: int) -> tuple[Any, int]:
                i, p = _py_varint(b, p, e, MAX_INT_VARINT_BYTES)
                if not 0 <= i < len(table):
                    msg = "bad enum index"
                    raise _DecodeError(msg)
                j = int(table[i])
                if j < 0:
                    msg = f"enum symbol {wsyms[i]!r} unknown to reader"
                    raise _DecodeError(msg)
                return rsyms[j], p

            return read_enum
        if wk in ("array", "map"):
            is_map = wk == "map"
            item = self.reader(
                w["values" if is_map else "items"], r["values" if is_map else "items"]
            )
            key = self.reader({"type": "string"}, {"type": "string"})
            min_item = _min_size(w["values" if is_map else "items"]) + (1 if is_map else 0)

            def read_blocks(b: bytes, p: int, e: int) -> tuple[Any, int]:
                out_l: list[Any] = []
                out_m: dict[str, Any] = {}
                while True:
                    count, p = _py_varint(b, p, e, MAX_LONG_VARINT_BYTES)
                    block_end = -1
                    if count < 0:
                        count = -count
                        size, p = _py_varint(b, p, e, MAX_LONG_VARINT_BYTES)
                        block_end = _py_take(p, e, size)
                    if count == 0:
                        return (out_m if is_map else out_l), p
                    if (min_item and count > (e - p) // min_item) or (
                        not min_item and count > MAX_ZERO_BYTE_ITEMS
                    ):
                        msg = "block item count beyond record end"
                        raise _DecodeError(msg)
                    for _ in range(count):
                        if is_map:
                            k, p = key(b, p, e)
                            out_m[k], p = item(b, p, e)
                        else:
                            v, p = item(b, p, e)
                            out_l.append(v)
                    if block_end >= 0 and p != block_end:
                        msg = "block byte size mismatch"
                        raise _DecodeError(msg)

            return read_blocks
        # record
        if not _matches(w, r):
            msg = f"record {w['name']} cannot be read as {r['name']}"
            raise ValueError(msg)
        rfields = _reader_field_map(r)
        steps: list[tuple[str | None, _PyRead]] = []
        seen: set[str] = set()
        for wf in w["fields"]:
            rf = rfields.get(wf["name"])
            if rf is None:
                steps.append((None, self.reader(wf["type"], wf["type"])))
            else:
                seen.add(rf["name"])
                steps.append((rf["name"], self.reader(wf["type"], rf["type"])))
        defaults: dict[str, Any] = {}
        for rf in r["fields"]:
            if rf["name"] not in seen:
                if "default" not in rf:
                    msg = f"reader field {rf['name']!r} missing from writer and has no default"
                    raise ValueError(msg)
                defaults[rf["name"]] = _json_default(rf["type"], rf["default"])
        order = [f["name"] for f in r["fields"]]

        def read_record(b: bytes, p: int, e: int) -> tuple[Any, int]:
            got: dict[str, Any] = {}
            for name, fn in steps:
                v, p = fn(b, p, e)
                if name is not None:
                    got[name] = v
            for name, v in defaults.items():
                got[name] = copy.deepcopy(v)
            return {name: got[name] for name in order}, p

        return read_record


def _py_error(reason: str) -> _PyRead:
    def fail(b: bytes, p: int, e: int) -> tuple[Any, int]:
        raise _DecodeError(reason)

    fail.is_error = True  # type: ignore[attr-defined]
    return fail


def _reader_field_map(r: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    out: dict[str, Mapping[str, Any]] = {}
    for f in r["fields"]:
        out.setdefault(f["name"], f)
    for f in r["fields"]:
        for alias in f.get("aliases", []):
            out.setdefault(alias, f)
    return out


def _enum_table(w: Mapping[str, Any], r: Mapping[str, Any]) -> NDArray[np.int64]:
    """Writer symbol index -> reader symbol index (-1: unknown to the reader, no default)."""
    rsyms = list(r["symbols"])
    default = r.get("default")
    fallback = rsyms.index(default) if default in rsyms else -1
    return np.array(
        [rsyms.index(s) if s in rsyms else fallback for s in w["symbols"]], dtype=np.int64
    )


# --------------------------------------------------------------------------- vectorised nodes


@dataclass(frozen=True, slots=True)
class _Spec:
    """How to build one output column."""

    name: str
    kind: str  # "num" | "bytes" | "enum" | "obj"
    dtype: np.dtype[Any]
    nullable: bool
    logical: str | None = None
    is_string: bool = False
    symbols: tuple[str, ...] = ()
    decimal: bool = False
    precision: int = 0
    scale: int = 0


def _rows(array: NDArray[Any], idx: _I64) -> NDArray[Any]:
    """``array[idx]`` for a per-record array; a plain copy when ``idx`` is every record.

    ``idx`` is always an ascending subset of the batch's records, so when it is as long as the
    batch it is all of them, in order: the usual case, where a copy is several times cheaper
    than a gather.
    """
    return array.copy() if len(idx) == len(array) else array[idx]


def _put(array: NDArray[Any], idx: _I64, values: NDArray[Any] | float) -> None:
    """``array[idx] = values``, by slice when ``idx`` is every record (see :func:`_rows`)."""
    if len(idx) == len(array):
        array[:] = values
    else:
        array[idx] = values


class _Sink:
    """Per-decode output arrays of one column, filled by scatter on record index."""

    __slots__ = ("data", "length", "objects", "present")

    def __init__(self, spec: _Spec, n: int) -> None:
        self.data: NDArray[Any] = np.zeros(n, dtype=spec.dtype)
        self.length: NDArray[np.int64] | None = (
            np.zeros(n, dtype=np.int64) if spec.kind == "bytes" else None
        )
        self.objects: NDArray[np.object_] | None = (
            np.full(n, None, dtype=object) if spec.kind == "obj" else None
        )
        self.present: NDArray[np.bool_] | None = np.zeros(n, dtype=bool) if spec.nullable else None

    def put(self, idx: _I64, values: NDArray[Any] | float) -> None:
        _put(self.data, idx, values)
        if self.present is not None:
            _put(self.present, idx, True)

    def put_bytes(self, idx: _I64, start: _I64 | int, length: _I64 | int) -> None:
        _put(self.data, idx, start)
        assert self.length is not None  # noqa: S101
        _put(self.length, idx, length)
        if self.present is not None:
            _put(self.present, idx, True)


class _State:
    """Buffers and per-record cursors of one decode call."""

    __slots__ = ("buf", "const_base", "end", "errors", "ok", "pos", "raw", "sinks")

    def __init__(
        self,
        raw: bytes,
        buf: NDArray[np.uint8],
        pos: _I64,
        end: _I64,
        sinks: list[_Sink],
        const_base: int,
    ) -> None:
        self.raw = raw
        self.buf = buf
        self.pos = pos
        self.end = end
        self.ok: NDArray[np.bool_] = np.ones(len(pos), dtype=bool)
        self.errors: dict[int, str] = {}
        self.sinks = sinks
        self.const_base = const_base

    def fail(self, recs: _I64, reason: str) -> None:
        if recs.size == 0:
            return
        self.ok[recs] = False
        for rec in recs.tolist():
            self.errors.setdefault(rec, reason)

    def split(self, idx: _I64, bad: NDArray[np.bool_], reason: str) -> NDArray[np.bool_] | None:
        """Fail ``idx[bad]``; return the keep-mask, or None when nothing failed."""
        if not bad.any():
            return None
        self.fail(idx[bad], reason)
        return ~bad


def _varint(st: _State, idx: _I64, max_bytes: int, where: str) -> tuple[_I64, _I64]:
    """Decode one zigzag varint for each record in ``idx``; return survivors and their values."""
    p = _rows(st.pos, idx)
    end = _rows(st.end, idx)
    b0 = st.buf[p]
    if not (b0 >= 0x80).any():
        u0 = b0.astype(np.int64)
        vals = (u0 >> 1) ^ -(u0 & 1)
        keep = st.split(idx, p >= end, f"truncated at {where}")
        if keep is not None:
            idx, p, vals = idx[keep], p[keep], vals[keep]
        _put(st.pos, idx, p + 1)
        return idx, vals
    ar = _AR[:max_bytes]
    win = st.buf[p[:, None] + ar]
    term = win < 0x80
    has = term.any(axis=1)
    nb = term.argmax(axis=1) + 1
    parts = np.where(ar < nb[:, None], (win & 0x7F).astype(np.uint64) << _SHIFTS[:max_bytes], 0)
    u = np.bitwise_or.reduce(parts, axis=1)
    last = win[np.arange(len(p)), nb - 1]
    limit = 0x0F if max_bytes == MAX_INT_VARINT_BYTES else 0x01
    trunc = np.where(has, p + nb > end, p + max_bytes > end)
    too_long = ~has & ~trunc
    overflow = has & ~trunc & (nb == max_bytes) & (last > limit)
    bad = trunc | too_long | overflow
    if bad.any():
        st.fail(idx[trunc], f"truncated at {where}")
        st.fail(idx[too_long], f"varint too long at {where}")
        st.fail(idx[overflow], f"varint overflow at {where}")
        keep = ~bad
        idx, p, nb, u = idx[keep], p[keep], nb[keep], u[keep]
    _put(st.pos, idx, p + nb)
    vals = (u >> np.uint64(1)).astype(np.int64) ^ -((u & np.uint64(1)).astype(np.int64))
    return idx, vals


def _take(st: _State, idx: _I64, size: int, where: str) -> tuple[_I64, _I64]:
    """Advance each record by ``size`` bytes; return survivors and their start offsets."""
    p = _rows(st.pos, idx)
    keep = st.split(idx, p + size > _rows(st.end, idx), f"truncated at {where}")
    if keep is not None:
        idx, p = idx[keep], p[keep]
    _put(st.pos, idx, p + size)
    return idx, p


class _Node:
    """A vectorised reader of one writer type; ``read`` returns the surviving records."""

    __slots__ = ()

    def read(self, st: _State, idx: _I64) -> _I64:
        raise NotImplementedError


class _NullNode(_Node):
    __slots__ = ()

    def read(self, st: _State, idx: _I64) -> _I64:
        return idx


class _ErrorNode(_Node):
    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def read(self, st: _State, idx: _I64) -> _I64:
        st.fail(idx, self.reason)
        return idx[:0]


class _BoolNode(_Node):
    __slots__ = ("slot", "where")

    def __init__(self, slot: int | None, where: str) -> None:
        self.slot, self.where = slot, where

    def read(self, st: _State, idx: _I64) -> _I64:
        idx, p = _take(st, idx, 1, self.where)
        v = st.buf[p]
        keep = st.split(idx, v > 1, f"bad boolean byte at {self.where}")
        if keep is not None:
            idx, v = idx[keep], v[keep]
        if self.slot is not None:
            st.sinks[self.slot].put(idx, v.astype(bool))
        return idx


class _IntNode(_Node):
    __slots__ = ("max_bytes", "slot", "where")

    def __init__(self, max_bytes: int, slot: int | None, where: str) -> None:
        self.max_bytes, self.slot, self.where = max_bytes, slot, where

    def read(self, st: _State, idx: _I64) -> _I64:
        idx, v = _varint(st, idx, self.max_bytes, self.where)
        if self.slot is not None:
            st.sinks[self.slot].put(idx, v)
        return idx


class _FloatNode(_Node):
    __slots__ = ("dtype", "size", "slot", "where")

    def __init__(self, size: int, slot: int | None, where: str) -> None:
        self.size, self.slot, self.where = size, slot, where
        self.dtype = "<f4" if size == 4 else "<f8"

    def read(self, st: _State, idx: _I64) -> _I64:
        idx, p = _take(st, idx, self.size, self.where)
        if self.slot is not None:
            raw = st.buf[p[:, None] + _AR[: self.size]]
            st.sinks[self.slot].put(idx, raw.view(self.dtype).reshape(-1))
        return idx


class _BytesNode(_Node):
    __slots__ = ("slot", "where")

    def __init__(self, slot: int | None, where: str) -> None:
        self.slot, self.where = slot, where

    def read(self, st: _State, idx: _I64) -> _I64:
        idx, n = _varint(st, idx, MAX_LONG_VARINT_BYTES, self.where)
        p = _rows(st.pos, idx)
        neg = n < 0
        beyond = ~neg & (n > _rows(st.end, idx) - p)
        if neg.any() or beyond.any():
            st.fail(idx[neg], f"negative length at {self.where}")
            st.fail(idx[beyond], f"length beyond record end at {self.where}")
            keep = ~(neg | beyond)
            idx, n, p = idx[keep], n[keep], p[keep]
        _put(st.pos, idx, p + n)
        if self.slot is not None:
            st.sinks[self.slot].put_bytes(idx, p, n)
        return idx


class _FixedNode(_Node):
    __slots__ = ("size", "slot", "where")

    def __init__(self, size: int, slot: int | None, where: str) -> None:
        self.size, self.slot, self.where = size, slot, where

    def read(self, st: _State, idx: _I64) -> _I64:
        idx, p = _take(st, idx, self.size, self.where)
        if self.slot is not None:
            st.sinks[self.slot].put_bytes(idx, p, self.size)
        return idx


class _EnumNode(_Node):
    __slots__ = ("slot", "table", "where", "wsyms")

    def __init__(
        self, table: NDArray[np.int64], wsyms: Sequence[str], slot: int | None, where: str
    ) -> None:
        self.table, self.wsyms, self.slot, self.where = table, list(wsyms), slot, where

    def read(self, st: _State, idx: _I64) -> _I64:
        idx, v = _varint(st, idx, MAX_INT_VARINT_BYTES, self.where)
        keep = st.split(idx, (v < 0) | (v >= len(self.table)), f"bad enum index at {self.where}")
        if keep is not None:
            idx, v = idx[keep], v[keep]
        mapped = self.table[v]
        unknown = mapped < 0
        if unknown.any():
            for rec, wi in zip(idx[unknown].tolist(), v[unknown].tolist(), strict=True):
                st.fail(
                    np.array([rec], dtype=np.int64),
                    f"enum symbol {self.wsyms[wi]!r} unknown to reader at {self.where}",
                )
            idx, mapped = idx[~unknown], mapped[~unknown]
        if self.slot is not None:
            st.sinks[self.slot].put(idx, mapped)
        return idx


class _UnionNode(_Node):
    __slots__ = ("branches", "where")

    def __init__(self, branches: list[_Node], where: str) -> None:
        self.branches, self.where = branches, where

    def read(self, st: _State, idx: _I64) -> _I64:
        idx, br = _varint(st, idx, MAX_LONG_VARINT_BYTES, self.where)
        keep = st.split(
            idx, (br < 0) | (br >= len(self.branches)), f"bad union branch index at {self.where}"
        )
        if keep is not None:
            idx, br = idx[keep], br[keep]
        for i, node in enumerate(self.branches):
            sub = idx[br == i]
            if sub.size:
                node.read(st, sub)
        return idx[st.ok[idx]]


class _RecordNode(_Node):
    __slots__ = ("fields",)

    def __init__(self, fields: list[_Node]) -> None:
        self.fields = fields

    def read(self, st: _State, idx: _I64) -> _I64:
        for node in self.fields:
            if not idx.size:
                break
            idx = node.read(st, idx)
        return idx


class _BlockNode(_Node):
    """Skips an array or map vectorised: one item of every unfinished record per iteration."""

    __slots__ = ("item", "min_item", "where")

    def __init__(self, item: _Node, min_item: int, where: str) -> None:
        self.item, self.min_item, self.where = item, min_item, where

    def read(self, st: _State, idx: _I64) -> _I64:
        n = len(st.pos)
        rem = np.zeros(n, dtype=np.int64)
        bend = np.full(n, -1, dtype=np.int64)
        done = np.zeros(n, dtype=bool)
        cur = idx
        w = self.where
        while cur.size:
            hdr = cur[rem[cur] == 0]
            if hdr.size:
                self._header(st, hdr, rem, bend, done, w)
                cur = cur[st.ok[cur] & ~done[cur]]
                if not cur.size:
                    break
            survivors = self.item.read(st, cur)
            rem[survivors] -= 1
            cur = survivors
        return idx[st.ok[idx]]

    def _header(
        self, st: _State, hdr: _I64, rem: _I64, bend: _I64, done: NDArray[np.bool_], w: str
    ) -> None:
        hb = bend[hdr]
        keep = st.split(hdr, (hb >= 0) & (st.pos[hdr] != hb), f"block byte size mismatch at {w}")
        if keep is not None:
            hdr = hdr[keep]
        hdr, cnt = _varint(st, hdr, MAX_LONG_VARINT_BYTES, w)
        bend[hdr] = -1
        neg = cnt < 0
        if neg.any():
            cnt_all = np.zeros(len(st.pos), dtype=np.int64)
            cnt_all[hdr] = cnt
            ng, size = _varint(st, hdr[neg], MAX_LONG_VARINT_BYTES, w)
            p = st.pos[ng]
            bad_size = (size < 0) | (size > st.end[ng] - p)
            keep = st.split(ng, bad_size, f"bad block byte size at {w}")
            if keep is not None:
                ng, size, p = ng[keep], size[keep], p[keep]
            bend[ng] = p + size
            cnt_all[ng] = -cnt_all[ng]
            hdr = hdr[st.ok[hdr]]
            cnt = cnt_all[hdr]
        room = st.end[hdr] - st.pos[hdr]
        if self.min_item:
            too_many = (cnt < 0) | (cnt > room // self.min_item)
        else:
            too_many = (cnt < 0) | (cnt > MAX_ZERO_BYTE_ITEMS)
        keep = st.split(hdr, too_many, f"block item count beyond record end at {w}")
        if keep is not None:
            hdr, cnt = hdr[keep], cnt[keep]
        rem[hdr] = cnt
        done[hdr[cnt == 0]] = True


class _FallbackNode(_Node):
    """Per-record pure-Python reader for types with no vectorised path."""

    __slots__ = ("fn", "slot", "where")

    def __init__(self, fn: _PyRead, slot: int | None, where: str) -> None:
        self.fn, self.slot, self.where = fn, slot, where

    def read(self, st: _State, idx: _I64) -> _I64:
        sink = st.sinks[self.slot] if self.slot is not None else None
        good: list[int] = []
        newpos: list[int] = []
        values: list[Any] = []
        raw, fn = st.raw, self.fn
        for rec, p, e in zip(idx.tolist(), st.pos[idx].tolist(), st.end[idx].tolist(), strict=True):
            try:
                v, q = fn(raw, p, e)
            except _DecodeError as exc:
                st.fail(np.array([rec], dtype=np.int64), f"{exc} at {self.where}")
                continue
            except RecursionError:
                st.fail(np.array([rec], dtype=np.int64), f"nesting too deep at {self.where}")
                continue
            good.append(rec)
            newpos.append(q)
            values.append(v)
        gidx = np.array(good, dtype=np.int64)
        st.pos[gidx] = np.array(newpos, dtype=np.int64)
        if sink is not None and sink.objects is not None and good:
            obj = np.empty(len(values), dtype=object)
            obj[:] = values
            sink.objects[gidx] = obj
            if sink.present is not None:
                sink.present[gidx] = True
        return gidx


class _ConstNode(_Node):
    """Fills the columns of a reader field the writer lacks with its default."""

    __slots__ = ("puts",)

    def __init__(self, puts: list[tuple[int, str, Any]]) -> None:
        self.puts = puts

    def read(self, st: _State, idx: _I64) -> _I64:
        for slot, kind, value in self.puts:
            sink = st.sinks[slot]
            if kind == "bytes":
                off, length = value
                sink.put_bytes(idx, st.const_base + off, length)
            elif kind == "obj":
                assert sink.objects is not None  # noqa: S101
                for rec in idx.tolist():
                    sink.objects[rec] = copy.deepcopy(value)
                if sink.present is not None:
                    sink.present[idx] = value is not None
            else:
                sink.put(idx, value)
        return idx


# --------------------------------------------------------------------------- decoder


class ColumnarDecoder:
    """Decodes batches of Avro binary bodies into numpy columns, one field at a time.

    Schema resolution follows the Avro specification: a reader field absent from the writer
    takes its default (a constant column); writer fields absent from the reader are skipped;
    int->long/float/double, long->float/double, float->double and string<->bytes are promoted;
    enum symbols resolve by name (a writer symbol unknown to the reader becomes the reader enum's
    default, else that record fails); unions resolve branch by branch (a writer branch with no
    reader match fails only the records that use it).

    Args:
        writer_schema: Writer record schema as Avro JSON (a dict).
        reader_schema: Reader record schema; None reads with the writer schema.
        fields: Reader top-level fields to materialise (None: all). Nested record fields can be
            named as ``"outer.inner"``; naming a record field materialises all of its leaves as
            ``"outer.<leaf>"`` columns.

    Raises:
        ValueError: The schemas are invalid, not records, incompatible, or ``fields`` names a
            field the reader schema lacks.
    """

    def __init__(
        self,
        writer_schema: Mapping[str, Any],
        reader_schema: Mapping[str, Any] | None = None,
        fields: Sequence[str] | None = None,
    ) -> None:
        """Compile the read plan; see the class docstring."""
        w = _parse_schema(writer_schema)
        r = _parse_schema(reader_schema) if reader_schema is not None else w
        if _kind(w) != "record" or _kind(r) != "record":
            msg = "writer and reader schemas must be records"
            raise ValueError(msg)
        if isinstance(fields, str):
            fields = [fields]
        self._requested: frozenset[str] | None = None if fields is None else frozenset(fields)
        if self._requested is not None:
            known = _reader_paths(r, "", frozenset())
            unknown = sorted(self._requested - known)
            if unknown:
                msg = f"reader schema has no field(s) {unknown}"
                raise ValueError(msg)
        self._specs: list[_Spec] = []
        self._slots: dict[str, int] = {}
        self._const_blob = bytearray()
        self._py = _PyCompiler()
        root_want = self._want("")
        self._declare(r, "", root_want, nullable=False, stack=frozenset())
        if not _matches(w, r):
            msg = f"writer record {w['name']} cannot be read as {r['name']}"
            raise ValueError(msg)
        self._root = self._compile(w, r, "", root_want, frozenset())

    @property
    def columns(self) -> tuple[str, ...]:
        """Names of the columns :meth:`decode` returns, in reader-schema order."""
        return tuple(s.name for s in self._specs)

    # -- planning -------------------------------------------------------------------------

    def _want(self, path: str) -> int:
        """2: materialise everything under ``path``; 1: only some descendants; 0: skip."""
        req = self._requested
        if req is None:
            return 2
        if not path:
            return 1
        parts = path.split(".")
        if any(".".join(parts[:i]) in req for i in range(1, len(parts) + 1)):
            return 2
        prefix = path + "."
        return 1 if any(q.startswith(prefix) for q in req) else 0

    def _declare(
        self, r: Any, path: str, want: int, *, nullable: bool, stack: frozenset[int]
    ) -> None:
        if want == 0:
            return
        if isinstance(r, list):
            non_null = [b for b in r if _kind(b) != "null"]
            has_null = len(non_null) < len(r)
            if len(non_null) == 1:
                self._declare(non_null[0], path, want, nullable=nullable or has_null, stack=stack)
            else:
                self._add_spec(_Spec(path, "obj", np.dtype(object), nullable=True))
            return
        k = r["type"]
        if k == "record" and id(r) not in stack and path:
            for f in r["fields"]:
                child = _join(path, f["name"])
                self._declare(
                    f["type"], child, self._want(child), nullable=nullable, stack=stack | {id(r)}
                )
        elif k == "record" and not path:
            for f in r["fields"]:
                self._declare(
                    f["type"],
                    f["name"],
                    self._want(f["name"]),
                    nullable=False,
                    stack=stack | {id(r)},
                )
        else:
            self._add_spec(_leaf_spec(r, path, nullable))

    def _add_spec(self, spec: _Spec) -> None:
        self._slots[spec.name] = len(self._specs)
        self._specs.append(spec)

    def _slot(self, path: str, want: int) -> int | None:
        return self._slots.get(path) if want == 2 else None

    def _compile(self, w: Any, r: Any, path: str, want: int, stack: frozenset[int]) -> _Node:  # noqa: PLR0912
        if want == 0:
            return self._skip(w, path, frozenset())
        slot = self._slot(path, want)
        if slot is not None and self._specs[slot].kind == "obj":
            return _FallbackNode(self._py.reader(w, r), slot, path)
        where = path or "record"
        if isinstance(w, list):
            branches: list[_Node] = []
            for i, wb in enumerate(w):
                try:
                    branches.append(self._compile(wb, r, path, want, stack))
                except ValueError as exc:
                    branches.append(
                        _ErrorNode(f"writer union branch {i} unreadable at {where}: {exc}")
                    )
            if all(isinstance(b, _ErrorNode) for b in branches):
                msg = f"no writer union branch resolves against the reader at {where}"
                raise ValueError(msg)
            return _UnionNode(branches, where)
        if isinstance(r, list):
            rb = _select_branch(w, r)
            if rb is None:
                msg = f"writer type {w['type']} matches no reader union branch at {where}"
                raise ValueError(msg)
            return self._compile(w, rb, path, want, stack)
        if not _matches(w, r):
            msg = f"writer type {_describe(w)} cannot be read as {_describe(r)} at {where}"
            raise ValueError(msg)
        k = w["type"]
        if k == "null":
            return _NullNode()
        if k == "boolean":
            return _BoolNode(slot, where)
        if k in ("int", "long"):
            return _IntNode(
                MAX_INT_VARINT_BYTES if k == "int" else MAX_LONG_VARINT_BYTES, slot, where
            )
        if k in ("float", "double"):
            return _FloatNode(4 if k == "float" else 8, slot, where)
        if k in ("bytes", "string"):
            return _BytesNode(slot, where)
        if k == "fixed":
            return _FixedNode(int(w["size"]), slot, where)
        if k == "enum":
            return _EnumNode(_enum_table(w, r), w["symbols"], slot, where)
        if k in ("array", "map"):
            # Only reached when skipped inside a materialised-by-leaf path: skip it.
            return self._skip(w, path, frozenset())
        return self._compile_record(w, r, path, want, stack)

    def _compile_record(
        self,
        w: Mapping[str, Any],
        r: Mapping[str, Any],
        path: str,
        want: int,
        stack: frozenset[int],
    ) -> _Node:
        rfields = _reader_field_map(r)
        nodes: list[_Node] = []
        seen: set[str] = set()
        inner = stack | {id(r)}
        for wf in w["fields"]:
            rf = rfields.get(wf["name"])
            if rf is None:
                nodes.append(self._skip(wf["type"], _join(path, wf["name"]), frozenset()))
                continue
            seen.add(rf["name"])
            child = _join(path, rf["name"])
            nodes.append(self._compile(wf["type"], rf["type"], child, self._want(child), inner))
        for rf in r["fields"]:
            if rf["name"] in seen:
                continue
            if "default" not in rf:
                msg = f"reader field {_join(path, rf['name'])!r} missing from writer, no default"
                raise ValueError(msg)
            child = _join(path, rf["name"])
            puts: list[tuple[int, str, Any]] = []
            self._const_puts(rf["type"], rf["default"], child, self._want(child), puts)
            if puts:
                nodes.append(_ConstNode(puts))
        return _RecordNode(nodes)

    def _skip(self, w: Any, path: str, stack: frozenset[int]) -> _Node:
        where = path or "record"
        if isinstance(w, list):
            return _UnionNode([self._skip(b, path, stack) for b in w], where)
        k = w["type"]
        if k == "null":
            return _NullNode()
        if k == "boolean":
            return _BoolNode(None, where)
        if k in ("int", "long"):
            return _IntNode(
                MAX_INT_VARINT_BYTES if k == "int" else MAX_LONG_VARINT_BYTES, None, where
            )
        if k in ("float", "double"):
            return _FloatNode(4 if k == "float" else 8, None, where)
        if k in ("bytes", "string"):
            return _BytesNode(None, where)
        if k == "fixed":
            return _FixedNode(int(w["size"]), None, where)
        if k == "enum":
            return _EnumNode(
                np.arange(len(w["symbols"]), dtype=np.int64), w["symbols"], None, where
            )
        if k == "array":
            return _BlockNode(self._skip(w["items"], path, stack), _min_size(w["items"]), where)
        if k == "map":
            item = _RecordNode([_BytesNode(None, where), self._skip(w["values"], path, stack)])
            return _BlockNode(item, 1 + _min_size(w["values"]), where)
        if id(w) in stack:
            return _FallbackNode(self._py.reader(w, w), None, where)
        inner = stack | {id(w)}
        return _RecordNode(
            [self._skip(f["type"], _join(path, f["name"]), inner) for f in w["fields"]]
        )

    def _const_puts(  # noqa: PLR0912
        self, r: Any, d: Any, path: str, want: int, out: list[tuple[int, str, Any]]
    ) -> None:
        if want == 0:
            return
        slot = self._slot(path, want)
        if slot is not None and self._specs[slot].kind == "obj":
            out.append((slot, "obj", _json_default(r, d)))
            return
        if isinstance(r, list):
            if _kind(r[0]) != "null":
                self._const_puts(r[0], d, path, want, out)
            return
        k = r["type"]
        if k == "record":
            for f in r["fields"]:
                child = _join(path, f["name"])
                if f["name"] in d:
                    v = d[f["name"]]
                elif "default" in f:
                    v = f["default"]
                else:
                    msg = f"default of {path!r} lacks field {f['name']!r}"
                    raise ValueError(msg)
                self._const_puts(f["type"], v, child, self._want(child), out)
            return
        if slot is None:
            return
        if k == "enum":
            syms = list(r["symbols"])
            if d not in syms:
                msg = f"default {d!r} of {path!r} is not a symbol"
                raise ValueError(msg)
            out.append((slot, "num", syms.index(d)))
        elif k in ("string", "bytes", "fixed"):
            data = str(d).encode("utf-8" if k == "string" else "latin-1")
            out.append((slot, "bytes", (len(self._const_blob), len(data))))
            self._const_blob += data
        elif k != "null":
            out.append((slot, "num", d))

    # -- decoding -------------------------------------------------------------------------

    def decode(self, payloads: Sequence[bytes | memoryview], skip: int = 0) -> ColumnBatch:
        """Decode a batch of Avro binary bodies.

        Args:
            payloads: One Avro-encoded record per element.
            skip: Bytes of framing header at the start of every payload, not decoded (the
                caller checked them), so payloads need not be sliced one by one.

        Returns:
            The requested columns plus a per-record ok mask and error reasons. Never raises for
            malformed payloads.
        """
        n = len(payloads)
        # len() of a bytes object or a 1-D byte memoryview is its size in bytes.
        lens = np.fromiter(map(len, payloads), dtype=np.int64, count=n)
        body = b"".join(payloads)
        const_base = len(body) + PAD_BYTES
        raw = body + bytes(PAD_BYTES) + bytes(self._const_blob) + bytes(PAD_BYTES)
        buf = np.frombuffer(raw, dtype=np.uint8)
        end = np.cumsum(lens)
        pos = end - lens + skip
        sinks = [_Sink(spec, n) for spec in self._specs]
        st = _State(raw, buf, pos, end, sinks, const_base)
        idx = self._root.read(st, np.arange(n, dtype=np.int64))
        st.fail(idx[st.pos[idx] != st.end[idx]], "trailing bytes after record")
        for spec, sink in zip(self._specs, sinks, strict=True):
            if spec.is_string:
                _check_utf8(st, spec, sink)
        ok = st.ok
        bad = ~ok
        columns: dict[str, Column] = {}
        for spec, sink in zip(self._specs, sinks, strict=True):
            columns[spec.name] = _finish(spec, sink, buf, bad)
        return ColumnBatch(n=n, columns=columns, ok=ok, errors=dict(sorted(st.errors.items())))


def _describe(s: Any) -> str:
    return str(s.get("name", s["type"])) if isinstance(s, Mapping) else "union"


def _reader_paths(r: Mapping[str, Any], prefix: str, stack: frozenset[int]) -> set[str]:
    out: set[str] = set()
    for f in r["fields"]:
        path = _join(prefix, f["name"])
        out.add(path)
        t = f["type"]
        if isinstance(t, list):
            non_null = [b for b in t if _kind(b) != "null"]
            t = non_null[0] if len(non_null) == 1 else None
        if (
            t is not None
            and not isinstance(t, list)
            and t["type"] == "record"
            and id(t) not in stack
        ):
            out |= _reader_paths(t, path, stack | {id(r)})
    return out


def _leaf_spec(r: Mapping[str, Any], path: str, nullable: bool) -> _Spec:
    k = r["type"]
    lt = r.get("logicalType")
    if k == "boolean":
        return _Spec(path, "num", np.dtype(bool), nullable)
    if k == "int":
        return _Spec(path, "num", np.dtype(np.int32), nullable, lt if lt in _INT_LOGICAL else None)
    if k == "long":
        return _Spec(path, "num", np.dtype(np.int64), nullable, lt if lt in _LONG_LOGICAL else None)
    if k in ("float", "double"):
        return _Spec(path, "num", np.dtype(np.float32 if k == "float" else np.float64), nullable)
    if k == "string":
        return _Spec(path, "bytes", np.dtype(np.int64), nullable, is_string=True)
    if k in ("bytes", "fixed"):
        prec = r.get("precision")
        if lt == "decimal" and isinstance(prec, int) and prec > 0:
            return _Spec(
                path,
                "bytes",
                np.dtype(np.int64),
                nullable,
                logical="decimal",
                decimal=True,
                precision=prec,
                scale=int(r.get("scale", 0)),
            )
        return _Spec(path, "bytes", np.dtype(np.int64), nullable)
    if k == "enum":
        return _Spec(path, "enum", np.dtype(np.int32), nullable, symbols=tuple(r["symbols"]))
    return _Spec(path, "obj", np.dtype(object), nullable=True)


def _check_utf8(st: _State, spec: _Spec, sink: _Sink) -> None:
    """Fail records whose materialised string is not valid UTF-8 (ASCII is checked vectorised)."""
    assert sink.length is not None  # noqa: S101
    rows = np.flatnonzero(st.ok & (sink.length > 0))
    if not rows.size:
        return
    start = sink.data[rows]
    stop = start + sink.length[rows]
    bounds = np.empty(2 * rows.size, dtype=np.int64)
    bounds[0::2] = start
    bounds[1::2] = stop
    high = np.maximum.reduceat(st.buf, bounds)[0::2] >= 0x80
    for rec, s, e in zip(
        rows[high].tolist(), start[high].tolist(), stop[high].tolist(), strict=True
    ):
        try:
            st.raw[s:e].decode("utf-8")
        except UnicodeDecodeError:
            st.fail(np.array([rec], dtype=np.int64), f"invalid UTF-8 at {spec.name}")


def _finish(spec: _Spec, sink: _Sink, buf: NDArray[np.uint8], bad: NDArray[np.bool_]) -> Column:
    """Turn a filled sink into a Column, blanking rows of failed records."""
    null: NDArray[np.bool_] | None = None
    if sink.present is not None:
        null = ~sink.present
        null[bad] = True
    if spec.kind == "obj":
        assert sink.objects is not None  # noqa: S101
        sink.objects[bad] = None
        return ObjectColumn(name=spec.name, null=null, values=sink.objects)
    sink.data[bad] = 0
    if spec.kind == "num":
        return NumericColumn(name=spec.name, null=null, values=sink.data, logical=spec.logical)
    if spec.kind == "enum":
        return EnumColumn(name=spec.name, null=null, index=sink.data, symbols=spec.symbols)
    assert sink.length is not None  # noqa: S101
    sink.length[bad] = 0
    if spec.decimal:
        return DecimalColumn(
            name=spec.name,
            null=null,
            buffer=buf,
            start=sink.data,
            length=sink.length,
            is_string=False,
            precision=spec.precision,
            scale=spec.scale,
        )
    return BytesColumn(
        name=spec.name,
        null=null,
        buffer=buf,
        start=sink.data,
        length=sink.length,
        is_string=spec.is_string,
    )
