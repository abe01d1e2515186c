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

Modules, in the order data flows through them: :mod:`.schema` (normalised schemas and the
resolution rules), :mod:`.planner` (schemas + fields → a tree of nodes, and ``decode``),
:mod:`.nodes` (the vectorised readers), :mod:`.fallback` (the per-record reader for what has
no vectorised path), :mod:`.columns` (the columns handed out).
"""

from __future__ import annotations

from stream_scorer.decode.columnar.columns import (
    UNIQUE_MAX_BYTES,
    UNIQUE_MIN_ROWS,
    BytesColumn,
    Column,
    ColumnBatch,
    DecimalColumn,
    EnumColumn,
    NumericColumn,
    ObjectColumn,
)
from stream_scorer.decode.columnar.nodes import PAD_BYTES
from stream_scorer.decode.columnar.planner import ColumnarDecoder
from stream_scorer.decode.limits import (
    MAX_BATCH_ITEMS,
    MAX_INT_VARINT_BYTES,
    MAX_LONG_VARINT_BYTES,
    MAX_RECORD_ITEMS,
)

__all__ = [
    "MAX_BATCH_ITEMS",
    "MAX_INT_VARINT_BYTES",
    "MAX_LONG_VARINT_BYTES",
    "MAX_RECORD_ITEMS",
    "PAD_BYTES",
    "UNIQUE_MAX_BYTES",
    "UNIQUE_MIN_ROWS",
    "BytesColumn",
    "Column",
    "ColumnBatch",
    "ColumnarDecoder",
    "DecimalColumn",
    "EnumColumn",
    "NumericColumn",
    "ObjectColumn",
]
