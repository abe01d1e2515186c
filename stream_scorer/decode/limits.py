"""Limits on what one message or one schema may make the decoders do: named, documented, shared.

Both decoders (columnar and fastavro's) enforce the same limits, so a message is rejected for
the same reason whichever decoder the service runs, and the time a batch takes stays linear in
its bytes with a small constant whatever the bytes say.

Why an item budget: an Avro array or map is written as blocks of ``count`` items, and items of a
zero-byte type (``null``, ``fixed`` of size 0, a record of such fields) take no bytes at all, so
a 3-byte block header can announce 65,536 of them and a 77-byte message 2**31 (issue 12,
finding 1: 32 s in the columnar decoder for 355 bytes, 47 s in fastavro for 77). The decoders
skip zero-byte items per block, never per item, and count every item a record declares, across
all its blocks and all its arrays and maps, against :data:`MAX_RECORD_ITEMS`; a batch's items
together count against :data:`MAX_BATCH_ITEMS`. What exceeds either is rejected (the pipeline
dead-letters it) with a reason that names the limit, never the bytes.

Why schema limits: writer schemas come from the registry, which anyone allowed to register a
subject can write to. A schema nested 2,000 deep made every recursive walk (``json``, fastavro,
ours) raise ``RecursionError`` (finding 2); a schema with a million enum symbols or fields costs
its size at every compile. :func:`check_schema` bounds both before any recursive walk runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

__all__ = [
    "MAX_BATCH_ITEMS",
    "MAX_INT_VARINT_BYTES",
    "MAX_LONG_VARINT_BYTES",
    "MAX_RECORD_ITEMS",
    "MAX_SCHEMA_DEPTH",
    "MAX_SCHEMA_NODES",
    "SchemaLimitError",
    "check_schema",
]

# Longest legal varint encodings: 5 bytes for a 32-bit int, 10 bytes for a 64-bit long.
MAX_INT_VARINT_BYTES: Final = 5
MAX_LONG_VARINT_BYTES: Final = 10

#: Most array and map items one record may declare, over all its arrays, maps and blocks. An
#: event with more is rejected. 65,536 is the per-block cap the decoders had before, now for
#: the whole record: far above any event this service is meant for (a few dozen list items),
#: and small enough that materialising them stays in milliseconds.
MAX_RECORD_ITEMS: Final = 1 << 16

#: Most array and map items one decode call (a micro-batch) may declare in all. Once a batch
#: has spent it, records that still declare items are rejected (and dead-lettered, so nothing
#: is lost); the rest of the batch decodes. 16 records at the per-record budget, or 2,000
#: records of 500 items each.
MAX_BATCH_ITEMS: Final = 1 << 20

#: Deepest JSON nesting a writer or reader schema may have (objects and arrays, counted as
#: JSON counts them: one Avro record level is about three). 2,000 Avro levels is ~6,000 JSON
#: levels; CPython's recursion limit is 1,000 frames. Real schemas nest a few levels.
MAX_SCHEMA_DEPTH: Final = 96

#: Most JSON values (objects, arrays, strings, numbers: fields, symbols, names...) one schema
#: may hold. The shipped transaction schema has ~150; a 100,000-symbol enum is refused.
MAX_SCHEMA_NODES: Final = 50_000


class SchemaLimitError(ValueError):
    """A schema is deeper or larger than the limits allow."""


def check_schema(schema: Any, what: str = "schema") -> None:
    """Check a schema's JSON against :data:`MAX_SCHEMA_DEPTH` and :data:`MAX_SCHEMA_NODES`.

    Iterative (an explicit stack), so it cannot itself overflow the interpreter's stack.

    Args:
        schema: The schema as parsed JSON (dicts, lists, strings, numbers).
        what: How the schema is named in the error (e.g. ``"schema id 7"``).

    Raises:
        SchemaLimitError: The schema nests deeper or holds more values than allowed.
    """
    nodes = 1
    stack: list[tuple[Any, int]] = [(schema, 1)]
    while stack:
        value, depth = stack.pop()
        if not isinstance(value, Mapping | list | tuple):
            continue
        if depth > MAX_SCHEMA_DEPTH:
            msg = f"{what} nests deeper than {MAX_SCHEMA_DEPTH} JSON levels (MAX_SCHEMA_DEPTH)"
            raise SchemaLimitError(msg)
        children = list(value.values()) if isinstance(value, Mapping) else value
        # Counted before they are stacked, so a huge list costs one len(), not its size.
        nodes += len(children)
        if nodes > MAX_SCHEMA_NODES:
            msg = f"{what} has more than {MAX_SCHEMA_NODES} JSON values (MAX_SCHEMA_NODES)"
            raise SchemaLimitError(msg)
        stack.extend((child, depth + 1) for child in children)
