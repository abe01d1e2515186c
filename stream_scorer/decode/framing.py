"""Wire formats: split a Kafka value into (writer schema, Avro body), or reject it.

Three named framings, chosen in settings (``schema.wire_format``):

* ``confluent``: magic byte ``0``, 4-byte big-endian schema id, Avro body. The writer schema is
  fetched from the Schema Registry once per id.
* ``plain``: a bare Avro body written with one configured writer schema.
* ``single-object``: Avro single-object encoding, ``C3 01`` + the writer schema's 8-byte
  little-endian CRC-64-AVRO fingerprint + body; writers are known by fingerprint.

A value with the wrong header, an unknown schema id or an unknown fingerprint is a
:class:`~stream_scorer.errors.DecodeError`; an unreachable registry is a
:class:`~stream_scorer.errors.FatalError`.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import fastavro
import fastavro.schema

from stream_scorer.decode.columnar.schema import check_finite
from stream_scorer.decode.limits import SchemaLimitError, check_schema
from stream_scorer.errors import DecodeError, FatalError
from stream_scorer.registry import RegistryError, SchemaNotFoundError

__all__ = [
    "CONFLUENT_HEADER_LEN",
    "CONFLUENT_MAGIC",
    "SCHEMA_RETRY_S",
    "SINGLE_OBJECT_HEADER_LEN",
    "SINGLE_OBJECT_MAGIC",
    "Framing",
    "SchemaSource",
    "WireFormat",
    "Writer",
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
#: Id of the one writer of the ``plain`` format.
PLAIN_WRITER_ID = 0
#: Seconds before a schema id the source failed on unexpectedly (not "not found", not an
#: outage: e.g. RecursionError from its JSON parse) is asked for again; meanwhile its records
#: are rejected with the same reason, without a call per record.
SCHEMA_RETRY_S = 60.0


class SchemaSource(Protocol):
    """Where Confluent-framed schema ids are resolved (the registry client)."""

    def schema_by_id(self, schema_id: int) -> dict[str, Any]:
        """The writer schema registered under ``schema_id``."""
        ...


@dataclass(frozen=True, slots=True)
class Writer:
    """A writer schema as the header names it: its id, the raw JSON and fastavro's parse."""

    id: int
    schema: Mapping[str, Any]
    parsed: Any


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
    """Frame an Avro body in ``wire_format`` (the inverse of :meth:`Framing.split`).

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


def _parse(schema: Mapping[str, Any], what: str) -> Any:
    """fastavro's parse of a writer schema, after the depth and size limits.

    Raises:
        DecodeError: Not a valid Avro schema, over a limit, or too deep or large for the
            interpreter (RecursionError, MemoryError: never past here).
    """
    try:
        check_schema(schema, what)
        parsed = fastavro.parse_schema(dict(schema))
        check_finite(schema)
    except SchemaLimitError as exc:
        raise DecodeError(str(exc)) from exc
    except (fastavro.schema.SchemaParseException, ValueError, KeyError, TypeError) as exc:
        msg = f"{what} is not a valid Avro schema: {exc}"
        raise DecodeError(msg) from exc
    except (RecursionError, MemoryError) as exc:
        msg = f"{what} cannot be parsed: {type(exc).__name__}"
        raise DecodeError(msg) from exc
    return parsed


class Framing:
    """Parses headers of one wire format and finds the writer schema each value names.

    Built once (by the composition root) and handed to every decoder, so the writers it has
    fetched or parsed are shared by them.
    """

    def __init__(
        self,
        reader_schema: Mapping[str, Any],
        wire_format: WireFormat,
        writer_schemas: Sequence[Mapping[str, Any]] = (),
        registry: SchemaSource | None = None,
    ) -> None:
        """Prepare the known writers.

        Args:
            reader_schema: The schema events are read as.
            wire_format: How values are framed.
            writer_schemas: ``plain``: the writer (default: the reader). ``single-object``:
                the known writers (the reader is always known).
            registry: Resolves schema ids, for ``confluent``.

        Raises:
            ValueError: ``confluent`` without a registry.
        """
        if wire_format == "confluent" and registry is None:
            msg = "the confluent wire format needs a schema registry"
            raise ValueError(msg)
        #: The schema every decoder handed this framing reads events as.
        self.reader_schema: Mapping[str, Any] = reader_schema
        self.wire_format: WireFormat = wire_format
        self._registry = registry
        # Writers keyed by what the header names: registry id, fingerprint, or 0 for plain.
        self._writers: dict[int, Writer] = {}
        # Registry ids whose schema cannot be used, and why (their records are rejected).
        self._unusable: dict[int, str] = {}
        # Ids the source failed on, unexpectedly: until when not to ask again, and why.
        self._unobtainable: dict[int, tuple[float, str]] = {}
        if wire_format == "plain":
            schema = writer_schemas[0] if writer_schemas else reader_schema
            self._writers[PLAIN_WRITER_ID] = Writer(
                PLAIN_WRITER_ID, schema, _parse(schema, "writer")
            )
        elif wire_format == "single-object":
            for schema in (reader_schema, *writer_schemas):
                print_ = fingerprint(schema)
                self._writers[print_] = Writer(print_, schema, _parse(schema, "writer"))
        #: Bytes of header before every Avro body in this wire format.
        self.header_len = {
            "confluent": CONFLUENT_HEADER_LEN,
            "plain": 0,
            "single-object": SINGLE_OBJECT_HEADER_LEN,
        }[wire_format]
        self.split: Callable[[bytes | None], tuple[Writer, int]] = {
            "confluent": self._split_confluent,
            "plain": self._split_plain,
            "single-object": self._split_single_object,
        }[wire_format]
        """``split(value) -> (writer, body_start)``; raises DecodeError or FatalError."""

    @staticmethod
    def _present(value: bytes | None) -> bytes:
        if value is None:
            msg = "record has no value (tombstone)"
            raise DecodeError(msg)
        return value

    def _split_plain(self, value: bytes | None) -> tuple[Writer, int]:
        self._present(value)
        return self._writers[PLAIN_WRITER_ID], 0

    def _split_confluent(self, value: bytes | None) -> tuple[Writer, int]:
        value = self._present(value)
        if len(value) < CONFLUENT_HEADER_LEN or value[0] != CONFLUENT_MAGIC:
            # Never the bytes themselves: they may be the start of personal data (issue 12,
            # finding 5). What was wrong is enough to act on.
            msg = "not Confluent wire format: expected magic byte 0 and a 4-byte schema id, " + (
                f"got {len(value)} bytes"
                if len(value) < CONFLUENT_HEADER_LEN
                else "the first byte is not 0"
            )
            raise DecodeError(msg)
        (schema_id,) = struct.unpack_from(">I", value, 1)
        writer = self._writers.get(schema_id)
        if writer is None:
            writer = self._fetch_writer(schema_id)
        return writer, CONFLUENT_HEADER_LEN

    def _fetch_writer(self, schema_id: int) -> Writer:
        assert self._registry is not None  # noqa: S101 - checked in __init__
        known_bad = self._unusable.get(schema_id)
        if known_bad is not None:
            raise DecodeError(known_bad)
        failed = self._unobtainable.get(schema_id)
        if failed is not None and time.monotonic() < failed[0]:
            raise DecodeError(failed[1])
        try:
            schema = self._registry.schema_by_id(schema_id)
        except SchemaNotFoundError as exc:
            msg = f"unknown schema id {schema_id}: {exc}"
            raise DecodeError(msg) from exc
        except RegistryError as exc:
            # The source says it cannot answer at all (an outage): no record is to blame.
            msg = f"cannot fetch writer schema {schema_id}: {exc}"
            raise FatalError(msg) from exc
        except Exception as exc:
            # E.g. RecursionError from the JSON parse of a 2,000-deep schema (issue 12,
            # finding 2), MemoryError, a client bug: the records that name this id are
            # dead-lettered, the batch goes on. Not cached: the source's own cache decides.
            msg = f"cannot obtain writer schema {schema_id}: {type(exc).__name__}"
            # Asked again only after a while: every record of a batch may name this id.
            self._unobtainable[schema_id] = (time.monotonic() + SCHEMA_RETRY_S, msg)
            raise DecodeError(msg) from exc
        if not isinstance(schema, Mapping):
            msg = f"schema id {schema_id} is not an Avro record schema"
            self._unusable[schema_id] = msg
            raise DecodeError(msg)
        try:
            parsed = _parse(schema, f"schema id {schema_id}")
        except DecodeError as exc:
            # A schema that does not parse never will: remember why, fetch it no more.
            self._unusable[schema_id] = exc.reason
            raise
        writer = Writer(schema_id, schema, parsed)
        self._writers[schema_id] = writer
        return writer

    def _split_single_object(self, value: bytes | None) -> tuple[Writer, int]:
        value = self._present(value)
        if len(value) < SINGLE_OBJECT_HEADER_LEN or value[:2] != SINGLE_OBJECT_MAGIC:
            msg = "not Avro single-object encoding: expected C3 01 and an 8-byte fingerprint, " + (
                f"got {len(value)} bytes"
                if len(value) < SINGLE_OBJECT_HEADER_LEN
                else "the first two bytes are not C3 01"
            )
            raise DecodeError(msg)
        (print_,) = struct.unpack_from("<Q", value, 2)
        writer = self._writers.get(print_)
        if writer is None:
            msg = f"unknown writer schema fingerprint {print_:016x}"
            raise DecodeError(msg)
        return writer, SINGLE_OBJECT_HEADER_LEN
