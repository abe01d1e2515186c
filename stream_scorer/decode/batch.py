"""Columnar batch decoding: a micro-batch of values → the bound fields as numpy columns.

The service's decoder. Headers are parsed per value (:class:`Framing`); values are grouped by
writer schema and each group is decoded by a :class:`ColumnarDecoder` compiled once per
(writer, fields) pair, which reads only the fields the model binds, straight into columns, and
skips the rest without materialising them. Whole events are decoded with fastavro only when
asked (:attr:`DecodedBatch.event_at`): for alerts and dead letters, a few in a hundred.

Rejects: everything :class:`Framing` rejects, records the columnar decoder reports by index
(truncated, garbage, trailing bytes, an enum symbol or union branch the reader cannot take) and
writer schemas that cannot be resolved against the reader schema.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import fastavro
import numpy as np
from numpy.typing import NDArray

from stream_scorer.decode.avro import read_body
from stream_scorer.decode.columnar import ColumnarDecoder, ColumnBatch
from stream_scorer.decode.framing import Framing, Writer
from stream_scorer.decode.limits import MAX_BATCH_ITEMS
from stream_scorer.errors import DecodeError
from stream_scorer.records import (
    DecodedBatch,
    Event,
    FieldColumn,
    Rejected,
    SourceRecord,
    ValuesColumn,
    batch_values,
)

__all__ = ["ColumnarAvroDecoder"]

#: Values of one writer schema in a batch: the writer, their batch rows, their bytes.
_Group = tuple[Writer, list[int], list[bytes]]


class ColumnarAvroDecoder:
    """Decodes the fields a model binds, for a whole micro-batch at once."""

    def __init__(self, framing: Framing) -> None:
        """Parse the reader schema once; writers are compiled as they are first seen."""
        self.framing = framing
        self.wire_format = framing.wire_format
        self._reader_schema = dict(framing.reader_schema)
        self._reader = fastavro.parse_schema(dict(framing.reader_schema))
        # Compiled decoders by (writer id, fields); a ValueError string when they cannot be.
        self._compiled: dict[tuple[int, tuple[str, ...]], ColumnarDecoder | str] = {}

    def _decoder(self, writer: Writer, fields: tuple[str, ...]) -> ColumnarDecoder | str:
        key = (writer.id, fields)
        compiled = self._compiled.get(key)
        if compiled is None:
            try:
                compiled = ColumnarDecoder(writer.schema, self._reader_schema, fields)
            except ValueError as exc:
                compiled = f"writer schema {writer.id} cannot be read as the reader schema: {exc}"
            except (RecursionError, MemoryError) as exc:
                compiled = f"writer schema {writer.id} cannot be compiled: {type(exc).__name__}"
            self._compiled[key] = compiled
        return compiled

    def _group(
        self, records: Sequence[SourceRecord]
    ) -> tuple[dict[int, _Group], list[tuple[int, Rejected]]]:
        """Split headers: values grouped by writer schema, and the values rejected outright."""
        rejected: list[tuple[int, Rejected]] = []
        groups: dict[int, _Group] = {}
        split = self.framing.split
        values = batch_values(records)
        # The common case, checked in C: every value has the first one's header.
        first = values[0] if values else None
        if first is not None and None not in values:
            try:
                writer, start = split(first)
            except DecodeError:
                pass
            else:
                header = first[:start]
                if all(map(bytes.startswith, values, itertools.repeat(header))):  # type: ignore[arg-type]
                    return {writer.id: (writer, list(range(len(values))), values)}, []  # type: ignore[dict-item]
        # Nearly every value of a batch carries the same header (one schema id): compare the
        # header bytes with the last one parsed instead of parsing each.
        last_header = b""
        last: _Group | None = None
        for i, record in enumerate(records):
            value = record.value
            if last is not None and value is not None and value[: len(last_header)] == last_header:
                last[1].append(i)
                last[2].append(value)
                continue
            try:
                writer, start = split(value)
            except DecodeError as exc:
                rejected.append((i, Rejected(record, "decode", "DecodeError", exc.reason)))
                continue
            assert value is not None  # noqa: S101 - split rejects tombstones
            group = groups.get(writer.id)
            if group is None:
                group = groups[writer.id] = (writer, [], [])
            group[1].append(i)
            group[2].append(value)
            last, last_header = group, value[:start]
        return groups, rejected

    def decode(self, records: Sequence[SourceRecord], fields: Sequence[str]) -> DecodedBatch:
        """Decode ``fields`` of every record; bad records come back as rejects."""
        wanted = tuple(fields)
        groups, rejected = self._group(records)
        good_rows: list[int] = []
        parts: list[tuple[list[int], Mapping[str, FieldColumn]]] = []
        writers: dict[int, Writer] = {}
        budget = MAX_BATCH_ITEMS
        for writer, rows, bodies in groups.values():
            decoder = self._decoder(writer, wanted)
            if isinstance(decoder, str):
                rejected.extend(
                    (i, Rejected(records[i], "decode", "DecodeError", decoder)) for i in rows
                )
                continue
            try:
                batch = decoder.decode(bodies, skip=self.framing.header_len, item_budget=budget)
            except (RecursionError, MemoryError):
                # Not expected (the decoder checks what it reads), but never out of decode():
                # find the records that cause it one by one, keep the others.
                batch = _one_by_one(decoder, bodies, self.framing.header_len, budget)
            budget -= batch.items
            for j, reason in batch.errors.items():
                rejected.append(
                    (rows[j], Rejected(records[rows[j]], "decode", "DecodeError", reason))
                )
            columns: Mapping[str, FieldColumn] = batch.columns
            ok_rows = rows
            if batch.errors:
                keep = batch.ok
                ok_rows = [row for row, ok in zip(rows, keep.tolist(), strict=True) if ok]
                columns = {name: _take(col, keep) for name, col in batch.columns.items()}
            parts.append((ok_rows, columns))
            writers.update(dict.fromkeys(ok_rows, writer))
            good_rows.extend(ok_rows)
        if len(parts) == 1:
            columns = parts[0][1]
        else:
            good_rows.sort()
            columns = _merge(parts, good_rows, wanted)
        reader = self._reader

        def event_at(position: int) -> Event:
            row = good_rows[position]
            record, writer = records[row], writers[row]
            assert record.value is not None  # noqa: S101 - decoded rows have values
            body = read_body(record.value, self.framing.header_len, writer, reader)
            return Event(record, body, writer.id)

        rejected.sort(key=lambda pair: pair[0])
        # Every record decoded (the rule): hand the batch itself on, building no records.
        good = records if len(good_rows) == len(records) else [records[i] for i in good_rows]
        return DecodedBatch(good, columns, [r for _, r in rejected], event_at)


def _one_by_one(
    decoder: ColumnarDecoder, bodies: list[bytes], skip: int, budget: int
) -> ColumnBatch:
    """Decode ``bodies`` after finding, one by one, those that raise RecursionError or
    MemoryError: they are decoded as empty bodies and fail with a reason."""
    bad: dict[int, str] = {}
    for j, body in enumerate(bodies):
        try:
            decoder.decode([body], skip=skip, item_budget=budget)
        except (RecursionError, MemoryError) as exc:
            bad[j] = f"record too deep or too large to decode ({type(exc).__name__})"
    batch = decoder.decode(
        [body[:skip] if j in bad else body for j, body in enumerate(bodies)], skip, budget
    )
    batch.ok[list(bad)] = False
    return dataclasses.replace(batch, errors=dict(sorted({**batch.errors, **bad}.items())))


def _take(column: Any, keep: NDArray[np.bool_]) -> FieldColumn:
    """The rows of a columnar column where ``keep`` holds, without leaving numpy."""
    n = len(keep)
    changes = {
        f.name: value[keep]
        for f in dataclasses.fields(column)
        if f.name != "buffer"
        and isinstance(value := getattr(column, f.name), np.ndarray)
        and value.shape[:1] == (n,)
    }
    taken: FieldColumn = dataclasses.replace(column, **changes)
    return taken


def _merge(
    parts: list[tuple[list[int], Mapping[str, FieldColumn]]],
    good_rows: list[int],
    fields: tuple[str, ...],
) -> dict[str, FieldColumn]:
    """Columns of several writer groups, back in batch order (rare: a schema change mid-batch)."""
    position = {row: k for k, row in enumerate(good_rows)}
    merged: dict[str, FieldColumn] = {}
    for name in fields:
        values: list[Any] = [None] * len(good_rows)
        for rows, columns in parts:
            for row, value in zip(rows, columns[name].to_objects().tolist(), strict=True):
                values[position[row]] = value
        merged[name] = ValuesColumn.of(values)
    return merged
