"""Stage 2: raw Kafka values → the fields the model binds, as columns; or rejects.

In: one micro-batch of :class:`~stream_scorer.records.SourceRecord`. Out: a
:class:`~stream_scorer.records.DecodedBatch` (the good records, the requested fields as
columns, whole events on demand) and a :class:`~stream_scorer.records.Rejected` for each bad
record, never an exception for bad input. Two implementations share one
:class:`~stream_scorer.decode.framing.Framing` (built once by the composition root: the
wire format, the reader schema, the writers known or fetched) and the limits of
:mod:`~stream_scorer.decode.limits` (array/map items per record and per batch, schema depth
and size), so hostile bytes or schemas cost time linear in their size and become rejects:

* :class:`ColumnarAvroDecoder` (the service's): decodes only the bound fields, a whole batch at
  a time, with numpy (:mod:`~stream_scorer.decode.columnar`).
* :class:`AvroDecoder`: decodes every event into a dict with fastavro; the reference, used for
  offline scoring and for the few whole events the service needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from stream_scorer.decode.avro import AvroDecoder
from stream_scorer.decode.batch import ColumnarAvroDecoder
from stream_scorer.decode.framing import (
    CONFLUENT_MAGIC,
    SINGLE_OBJECT_MAGIC,
    Framing,
    SchemaSource,
    WireFormat,
    fingerprint,
    frame_body,
)
from stream_scorer.records import DecodedBatch, SourceRecord

__all__ = [
    "CONFLUENT_MAGIC",
    "SINGLE_OBJECT_MAGIC",
    "AvroDecoder",
    "ColumnarAvroDecoder",
    "Decoder",
    "Framing",
    "SchemaSource",
    "WireFormat",
    "fingerprint",
    "frame_body",
]


class Decoder(Protocol):
    """Turns one micro-batch of records into the columns a model binds, and rejects."""

    def decode(self, records: Sequence[SourceRecord], fields: Sequence[str]) -> DecodedBatch:
        """Decode ``fields`` of every record; never raise for a bad record."""
        ...
