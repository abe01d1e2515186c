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

from stream_scorer.decode.framing import Framing, Writer
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
        DecodeError: The bytes are not one valid record (truncated, garbage, trailing bytes).
    """
    stream = io.BytesIO(value)
    stream.seek(start)
    try:
        fields = fastavro.schemaless_reader(stream, writer.parsed, reader)
    except AVRO_BODY_ERRORS as exc:
        msg = f"invalid Avro body for writer schema {writer.id}: {type(exc).__name__}: {exc}"
        raise DecodeError(msg) from exc
    if stream.tell() != len(value):
        msg = f"{len(value) - stream.tell()} trailing bytes after the Avro record"
        raise DecodeError(msg)
    if not isinstance(fields, dict):
        msg = "reader schema is not a record"
        raise DecodeError(msg)
    return fields


class AvroDecoder:
    """Decodes whole events in one wire format against one reader schema, with fastavro."""

    def __init__(self, framing: Framing) -> None:
        """Parse the reader schema once; ``framing`` finds each value's writer."""
        self.framing = framing
        self.wire_format = framing.wire_format
        self._reader = fastavro.parse_schema(dict(framing.reader_schema))

    def decode_value(self, value: bytes | None) -> tuple[dict[str, Any], int]:
        """Decode one framed value to the reader schema's fields and the writer's id.

        Raises:
            DecodeError: The value is not a valid event.
            FatalError: The registry is unreachable.
        """
        writer, start = self.framing.split(value)
        assert value is not None  # noqa: S101 - split rejects tombstones
        return read_body(value, start, writer, self._reader), writer.id

    def decode_batch(self, records: Sequence[SourceRecord]) -> tuple[list[Event], list[Rejected]]:
        """Decode a micro-batch; bad records come back as rejects, in the batch's order."""
        events: list[Event] = []
        rejected: list[Rejected] = []
        for record in records:
            try:
                fields, writer_id = self.decode_value(record.value)
            except DecodeError as exc:
                rejected.append(Rejected(record, "decode", type(exc).__name__, exc.reason))
                continue
            events.append(Event(record, fields, writer_id))
        return events, rejected

    def decode(self, records: Sequence[SourceRecord], fields: Sequence[str]) -> DecodedBatch:
        """Decode whole events, and gather ``fields`` as columns for featurize."""
        events, rejected = self.decode_batch(records)
        return DecodedBatch.from_events(events, fields, rejected)
