"""Stage 2: raw Kafka values → decoded events, or rejects.

In: :class:`SourceRecord` values in one of three named wire formats:

* ``confluent``: magic byte ``0``, 4-byte big-endian schema id, Avro body. The writer schema is
  fetched from the Schema Registry once per id and resolved against the reader schema.
* ``plain``: a bare Avro body written with one configured writer schema.
* ``single-object``: Avro single-object encoding, ``C3 01`` + the writer schema's 8-byte
  little-endian CRC-64-AVRO fingerprint + body; writers are known by fingerprint.

Out: :class:`Event` (reader-schema fields by name) for each good record, :class:`Rejected` for
each bad one: no value, wrong magic byte, unknown schema id or fingerprint, a writer schema that
cannot be resolved against the reader, truncated or garbage bodies, trailing bytes. A bad record
never unwinds the batch. An unreachable registry is infrastructure, not a bad record: it raises
:class:`~stream_scorer.errors.FatalError`.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Protocol

import fastavro
import fastavro.schema
from fastavro.read import SchemaResolutionError

from stream_scorer.errors import DecodeError, FatalError
from stream_scorer.records import Event, Rejected, SourceRecord
from stream_scorer.registry import RegistryError, SchemaNotFoundError

__all__ = [
    "CONFLUENT_MAGIC",
    "SINGLE_OBJECT_MAGIC",
    "AvroDecoder",
    "Decoder",
    "SchemaSource",
    "WireFormat",
    "fingerprint",
    "frame_body",
]

WireFormat = Literal["confluent", "plain", "single-object"]

#: First byte of a Confluent-framed message; a schema id of 4 bytes follows.
CONFLUENT_MAGIC = 0
#: Length of the Confluent header: magic byte + big-endian uint32 schema id.
CONFLUENT_HEADER_LEN = 5
#: Marker of Avro single-object encoding (Avro spec, "Single-object encoding").
SINGLE_OBJECT_MAGIC = b"\xc3\x01"
#: Length of the single-object header: marker + 8-byte little-endian fingerprint.
SINGLE_OBJECT_HEADER_LEN = 10
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


class SchemaSource(Protocol):
    """Where Confluent-framed schema ids are resolved (the registry client)."""

    def schema_by_id(self, schema_id: int) -> dict[str, Any]:
        """The writer schema registered under ``schema_id``."""
        ...


class Decoder(Protocol):
    """Turns one micro-batch of records into events and rejects."""

    def decode_batch(self, records: Sequence[SourceRecord]) -> tuple[list[Event], list[Rejected]]:
        """Decode every record; never raise for a bad record."""
        ...


def fingerprint(schema: Mapping[str, Any]) -> int:
    """CRC-64-AVRO fingerprint of the schema's Parsing Canonical Form, as an unsigned int."""
    canonical = fastavro.schema.to_parsing_canonical_form(dict(schema))
    return int(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO"), 16)


def frame_body(
    wire_format: WireFormat,
    body: bytes,
    schema_id: int = 0,
    schema: Mapping[str, Any] | None = None,
) -> bytes:
    """Frame an Avro body in ``wire_format`` (the inverse of the decoder's header parsing).

    Args:
        wire_format: Which framing to apply.
        body: The Avro binary body.
        schema_id: Registry id, for ``confluent``.
        schema: Writer schema, for ``single-object`` (its fingerprint goes in the header).
    """
    if wire_format == "confluent":
        return struct.pack(">bI", CONFLUENT_MAGIC, schema_id) + body
    if wire_format == "single-object":
        if schema is None:
            msg = "single-object framing needs the writer schema"
            raise ValueError(msg)
        return SINGLE_OBJECT_MAGIC + struct.pack("<Q", fingerprint(schema)) + body
    return body


class AvroDecoder:
    """Decodes Avro events in one wire format against one reader schema, with fastavro."""

    def __init__(
        self,
        reader_schema: Mapping[str, Any],
        wire_format: WireFormat,
        writer_schemas: Sequence[Mapping[str, Any]] = (),
        registry: SchemaSource | None = None,
    ) -> None:
        """Parse the schemas once.

        Args:
            reader_schema: The schema events are read as.
            wire_format: How values are framed.
            writer_schemas: ``plain``: the writer (default: the reader). ``single-object``:
                the known writers (the reader is always known).
            registry: Resolves schema ids, for ``confluent``.

        Raises:
            ValueError: ``confluent`` without a registry, or a writer that cannot be parsed.
        """
        if wire_format == "confluent" and registry is None:
            msg = "the confluent wire format needs a schema registry"
            raise ValueError(msg)
        self.wire_format: WireFormat = wire_format
        self._reader = fastavro.parse_schema(dict(reader_schema))
        self._registry = registry
        # Writer schemas keyed by what the header names: registry id or fingerprint.
        self._writers: dict[int, Any] = {}
        self._plain_writer: Any = None
        if wire_format == "plain":
            writer = writer_schemas[0] if writer_schemas else reader_schema
            self._plain_writer = fastavro.parse_schema(dict(writer))
        elif wire_format == "single-object":
            for schema in (reader_schema, *writer_schemas):
                self._writers[fingerprint(schema)] = fastavro.parse_schema(dict(schema))
        self._split: Callable[[bytes], tuple[int, Any, int]] = {
            "confluent": self._split_confluent,
            "plain": self._split_plain,
            "single-object": self._split_single_object,
        }[wire_format]

    def _split_plain(self, value: bytes) -> tuple[int, Any, int]:
        return 0, self._plain_writer, 0

    def _split_confluent(self, value: bytes) -> tuple[int, Any, int]:
        if len(value) < CONFLUENT_HEADER_LEN or value[0] != CONFLUENT_MAGIC:
            msg = (
                f"not Confluent wire format: expected magic byte 0 and a 4-byte schema id, "
                f"got {value[:CONFLUENT_HEADER_LEN].hex() or 'nothing'}"
            )
            raise DecodeError(msg)
        (schema_id,) = struct.unpack_from(">I", value, 1)
        writer = self._writers.get(schema_id)
        if writer is None:
            writer = self._fetch_writer(schema_id)
        return schema_id, writer, CONFLUENT_HEADER_LEN

    def _fetch_writer(self, schema_id: int) -> Any:
        assert self._registry is not None  # noqa: S101 - checked in __init__
        try:
            schema = self._registry.schema_by_id(schema_id)
        except SchemaNotFoundError as exc:
            msg = f"unknown schema id {schema_id}: {exc}"
            raise DecodeError(msg) from exc
        except RegistryError as exc:
            msg = f"cannot fetch writer schema {schema_id}: {exc}"
            raise FatalError(msg) from exc
        try:
            writer = fastavro.parse_schema(schema)
        except (fastavro.schema.SchemaParseException, ValueError, KeyError, TypeError) as exc:
            msg = f"schema id {schema_id} is not a valid Avro schema: {exc}"
            raise DecodeError(msg) from exc
        self._writers[schema_id] = writer
        return writer

    def _split_single_object(self, value: bytes) -> tuple[int, Any, int]:
        if len(value) < SINGLE_OBJECT_HEADER_LEN or value[:2] != SINGLE_OBJECT_MAGIC:
            msg = (
                "not Avro single-object encoding: expected C3 01 and an 8-byte fingerprint, "
                f"got {value[:SINGLE_OBJECT_HEADER_LEN].hex() or 'nothing'}"
            )
            raise DecodeError(msg)
        (print_,) = struct.unpack_from("<Q", value, 2)
        writer = self._writers.get(print_)
        if writer is None:
            msg = f"unknown writer schema fingerprint {print_:016x}"
            raise DecodeError(msg)
        return print_, writer, SINGLE_OBJECT_HEADER_LEN

    def decode_value(self, value: bytes | None) -> tuple[dict[str, Any], int]:
        """Decode one framed value to the reader schema's fields and the writer's id.

        Raises:
            DecodeError: The value is not a valid event.
            FatalError: The registry is unreachable.
        """
        if value is None:
            msg = "record has no value (tombstone)"
            raise DecodeError(msg)
        writer_id, writer, start = self._split(value)
        stream = io.BytesIO(value)
        stream.seek(start)
        try:
            fields = fastavro.schemaless_reader(stream, writer, self._reader)
        except AVRO_BODY_ERRORS as exc:
            msg = f"invalid Avro body for writer schema {writer_id}: {type(exc).__name__}: {exc}"
            raise DecodeError(msg) from exc
        if stream.tell() != len(value):
            msg = f"{len(value) - stream.tell()} trailing bytes after the Avro record"
            raise DecodeError(msg)
        if not isinstance(fields, dict):
            msg = "reader schema is not a record"
            raise DecodeError(msg)
        return fields, writer_id

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
