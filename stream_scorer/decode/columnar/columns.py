"""Column types: what the columnar decoder hands out for one decoded batch.

In: the batch buffer and, per row, the values or byte offsets the vectorised nodes
(:mod:`.nodes`) scattered into per-column arrays. Out: :class:`Column` subclasses that turn
those into numpy arrays (``to_numpy``) or Python objects (``to_objects``), and
:class:`ColumnBatch`, one decode call's columns plus the per-record ok mask and reasons.
Nothing here reads Avro bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

import numpy as np
from numpy.typing import DTypeLike, NDArray

__all__ = [
    "UNIQUE_MAX_BYTES",
    "UNIQUE_MIN_ROWS",
    "BytesColumn",
    "Column",
    "ColumnBatch",
    "DecimalColumn",
    "EnumColumn",
    "NumericColumn",
    "ObjectColumn",
]

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

#: Mask of the first k bytes of a little-endian 64-bit word, k = 0..8.
_WORD_MASKS: Final = np.array(
    [(1 << (8 * k)) - 1 for k in range(8)] + [(1 << 64) - 1], dtype=np.uint64
)
_HASH_MULTIPLIER: Final = np.uint64(0x100000001B3)  # FNV-1a 64-bit prime


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
        items: Array and map items the batch's records declared (counted against the item
            budget, :mod:`stream_scorer.decode.limits`).
    """

    n: int
    columns: dict[str, Column]
    ok: NDArray[np.bool_]
    errors: dict[int, str]
    items: int = 0
