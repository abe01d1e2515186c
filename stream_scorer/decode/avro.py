"""Record decoding with fastavro: each value → a dict of the reader schema's fields.

The reference decoder: every field of every event is materialised. The service decodes with
:class:`~stream_scorer.decode.batch.ColumnarAvroDecoder` and uses this one for the few events it
needs whole (alerts, dead letters), for offline scoring, and as the oracle the columnar decoder
is tested against. A writer schema is resolved against the reader schema (added fields take
their defaults, removed fields are skipped, types promoted). Truncated or garbage bodies,
trailing bytes and unresolvable writers are :class:`~stream_scorer.errors.DecodeError`.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence
from typing import Any

import fastavro
from fastavro.read import SchemaResolutionError

from stream_scorer.decode.columnar import ColumnarDecoder
from stream_scorer.decode.framing import Framing, Writer
from stream_scorer.decode.limits import MAX_BATCH_ITEMS
from stream_scorer.errors import DecodeError
from stream_scorer.records import DecodedBatch, Event, Rejected, SourceRecord

__all__ = ["AVRO_BODY_ERRORS", "AvroDecoder", "read_body"]

#: Errors fastavro raises on bytes that do not fit the schema; anything else is a bug.
AVRO_BODY_ERRORS = (
    EOFError,
    ValueError,
    IndexError,
    KeyError,
    OverflowError,
    UnicodeDecodeError,
    struct.error,
    SchemaResolutionError,
)


def read_body(value: bytes, start: int, writer: Writer, reader: Any) -> dict[str, Any]:
    """Decode the Avro body ``value[start:]`` written with ``writer`` as the ``reader`` schema.

    Raises:
        DecodeError: The bytes are not one valid record (truncated, garbage, trailing bytes),
            or nest deeper than the interpreter's stack, or need more memory than there is.
    """
    stream = io.BytesIO(value)
    stream.seek(start)
    try:
        fields = fastavro.schemaless_reader(stream, writer.parsed, reader)
    except SchemaResolutionError as exc:
        # About the two schemas, not the bytes: worth showing.
        msg = f"invalid Avro body for writer schema {writer.id}: {exc}"
        raise DecodeError(msg) from exc
    except AVRO_BODY_ERRORS as exc:
        # The error's name only: fastavro's messages can quote the payload (issue 12, 5).
        msg = f"invalid Avro body for writer schema {writer.id}: {type(exc).__name__}"
        raise DecodeError(msg) from exc
    except RecursionError as exc:
        msg = f"Avro body for writer schema {writer.id} nests too deep to decode"
        raise DecodeError(msg) from exc
    except MemoryError as exc:
        msg = f"Avro body for writer schema {writer.id} needs more memory than there is"
        raise DecodeError(msg) from exc
    if stream.tell() != len(value):
        msg = f"{len(value) - stream.tell()} trailing bytes after the Avro record"
        raise DecodeError(msg)
    if not isinstance(fields, dict):
        msg = "reader schema is not a record"
        raise DecodeError(msg)
    return fields


class AvroDecoder:
    """Decodes whole events in one wire format against one reader schema, with fastavro.

    fastavro walks array and map items one by one, zero-byte ones included, and recurses in C
    into recursive types (a linked list 20,000 deep in the data is a segmentation fault). So
    before it reads values of a writer schema that has arrays, maps or recursive types, the
    columnar decoder's skip-everything plan of that writer (vectorised, a small fraction of
    fastavro's cost) checks them against the item budget (:mod:`stream_scorer.decode.limits`)
    and the interpreter's own stack; what it rejects fastavro never sees.
    """

    def __init__(self, framing: Framing) -> None:
        """Parse the reader schema once; ``framing`` finds each value's writer."""
        self.framing = framing
        self.wire_format = framing.wire_format
        self._reader = fastavro.parse_schema(dict(framing.reader_schema))
        # Per writer id: its item-budget check, None when it has no arrays or maps, or the
        # reason it cannot be checked (its values are then rejected).
        self._guards: dict[int, ColumnarDecoder | str | None] = {}

    def _guard(self, writer: Writer) -> ColumnarDecoder | str | None:
        if writer.id in self._guards:
            return self._guards[writer.id]
        guard: ColumnarDecoder | str | None
        try:
            guard = ColumnarDecoder(writer.schema, None, fields=())
        except ValueError as exc:
            guard = f"writer schema {writer.id} cannot be checked: {exc}"
        except (RecursionError, MemoryError) as exc:
            guard = f"writer schema {writer.id} cannot be checked: {type(exc).__name__}"
        if isinstance(guard, ColumnarDecoder) and not guard.walks_items:
            guard = None  # fixed-shape records: fastavro's work is bounded by the bytes
        self._guards[writer.id] = guard
        return guard

    def _check(
        self, values: list[bytes], writer: Writer, budget: int
    ) -> tuple[dict[int, str], int]:
        """Reasons by position for the values of one writer that fastavro must not read, and
        the array/map items the others declared."""
        guard = self._guard(writer)
        if guard is None:
            return {}, 0
        if isinstance(guard, str):
            return dict.fromkeys(range(len(values)), guard), 0
        checked = guard.decode(values, skip=self.framing.header_len, item_budget=budget)
        # Everything it rejects, not only what is over budget: it counts a record's items up
        # to its first error only, and fastavro would read on past errors it does not check
        # (a boolean byte of 2), into items never counted.
        return checked.errors, checked.items

    def decode_value(self, value: bytes | None) -> tuple[dict[str, Any], int]:
        """Decode one framed value to the reader schema's fields and the writer's id.

        Raises:
            DecodeError: The value is not a valid event.
            FatalError: The registry is unreachable.
        """
        writer, start = self.framing.split(value)
        assert value is not None  # noqa: S101 - split rejects tombstones
        over, _ = self._check([value], writer, MAX_BATCH_ITEMS)
        if over:
            raise DecodeError(over[0])
        return read_body(value, start, writer, self._reader), writer.id

    def decode_batch(self, records: Sequence[SourceRecord]) -> tuple[list[Event], list[Rejected]]:
        """Decode a micro-batch; bad records come back as rejects, in the batch's order."""
        reasons: dict[int, str] = {}
        framed: list[tuple[int, Writer, int]] = []
        groups: dict[int, tuple[Writer, list[int]]] = {}
        for i, record in enumerate(records):
            try:
                writer, start = self.framing.split(record.value)
            except DecodeError as exc:
                reasons[i] = exc.reason
                continue
            framed.append((i, writer, start))
            groups.setdefault(writer.id, (writer, []))[1].append(i)
        budget = MAX_BATCH_ITEMS
        for writer, rows in groups.values():
            values = [records[i].value for i in rows]
            over, spent = self._check(values, writer, budget)  # type: ignore[arg-type]
            budget -= spent
            reasons.update((rows[j], reason) for j, reason in over.items())
        events: list[Event] = []
        rejected: list[Rejected] = []
        rows_framed = {i: (writer, start) for i, writer, start in framed}
        for i, record in enumerate(records):
            reason = reasons.get(i)
            if reason is None:
                writer, start = rows_framed[i]
                assert record.value is not None  # noqa: S101 - split rejects tombstones
                try:
                    fields = read_body(record.value, start, writer, self._reader)
                except DecodeError as exc:
                    reason = exc.reason
                else:
                    events.append(Event(record, fields, writer.id))
                    continue
            rejected.append(Rejected(record, "decode", "DecodeError", reason))
        return events, rejected

    def decode(self, records: Sequence[SourceRecord], fields: Sequence[str]) -> DecodedBatch:
        """Decode whole events, and gather ``fields`` as columns for featurize."""
        events, rejected = self.decode_batch(records)
        return DecodedBatch.from_events(events, fields, rejected)
