"""Frozen values passed between the stages.

Every derived value points back to the :class:`SourceRecord` it came from, so a log line, an
alert or a dead letter can always name the topic, partition and offset of its origin.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, NamedTuple, Protocol, overload

import numpy as np
from confluent_kafka import Message
from numpy.typing import DTypeLike, NDArray

__all__ = [
    "DecodedBatch",
    "Event",
    "FieldColumn",
    "Header",
    "MessageBatch",
    "Rejected",
    "Scored",
    "SourceRecord",
    "Stage",
    "ValuesColumn",
    "batch_values",
]

Header = tuple[str, bytes | None]

#: The stage names used in dead-letter headers, metric labels and log lines.
Stage = str


class SourceRecord(NamedTuple):
    """One Kafka message exactly as it was consumed.

    A named tuple rather than a frozen dataclass: one is built per consumed message, and a
    frozen dataclass's ``__init__`` (``object.__setattr__`` per field) cost about 1.5 µs of
    the consume stage's per-event budget; a named tuple is built in about 0.4 µs.
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[Header, ...] = ()
    #: Broker or producer timestamp in epoch milliseconds; 0 when the broker gave none.
    timestamp_ms: int = 0

    @property
    def coordinates(self) -> str:
        """The record's origin as ``topic[partition]@offset``, for logs."""
        return f"{self.topic}[{self.partition}]@{self.offset}"


class MessageBatch(Sequence[SourceRecord]):
    """One consumed micro-batch: the consumer's messages, read a field at a time.

    The stages read a batch by column (every value to decode, every partition and offset to
    commit, every timestamp to time), so those are taken from the messages in C, one ``map``
    per field; a :class:`SourceRecord` is built only for the rows that are asked for one
    (flagged events and dead letters). Building a record per message and transposing the
    records back into columns cost about 1 µs per event, a tenth of the whole loop.

    Every message must be a data message (no error), as :class:`~stream_scorer.consume.
    BatchConsumer` hands them on.
    """

    __slots__ = ("_messages", "_offsets", "_partitions", "_timestamps", "_topics", "values")

    def __init__(self, messages: list[Message]) -> None:
        """Wrap data messages; their values are taken at once (decode reads them all)."""
        self._messages = messages
        #: Every message's value, in batch order.
        self.values: list[bytes | None] = list(map(Message.value, messages))
        self._topics: list[str] | None = None
        self._partitions: NDArray[np.int64] | None = None
        self._offsets: NDArray[np.int64] | None = None
        self._timestamps: NDArray[np.int64] | None = None

    def __len__(self) -> int:
        """Messages in the batch."""
        return len(self._messages)

    @overload
    def __getitem__(self, index: int) -> SourceRecord: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[SourceRecord]: ...
    def __getitem__(self, index: int | slice) -> SourceRecord | Sequence[SourceRecord]:
        """The record of one message (built on demand), or a list of them for a slice."""
        if isinstance(index, slice):
            return [_record(m) for m in self._messages[index]]
        return _record(self._messages[index])

    @property
    def topics(self) -> list[str]:
        """Each message's topic."""
        if self._topics is None:
            self._topics = list(map(Message.topic, self._messages))  # type: ignore[arg-type]
        return self._topics

    @property
    def partitions(self) -> NDArray[np.int64]:
        """Each message's partition."""
        if self._partitions is None:
            self._partitions = self._ints(map(Message.partition, self._messages))
        return self._partitions

    @property
    def offsets(self) -> NDArray[np.int64]:
        """Each message's offset."""
        if self._offsets is None:
            self._offsets = self._ints(map(Message.offset, self._messages))
        return self._offsets

    @property
    def timestamps_ms(self) -> NDArray[np.int64]:
        """Each message's timestamp in epoch ms; 0 where the broker gave none."""
        if self._timestamps is None:
            stamps = self._ints(map(itemgetter(1), map(Message.timestamp, self._messages)))
            self._timestamps = np.maximum(stamps, 0)
        return self._timestamps

    def _ints(self, values: Iterable[Any]) -> NDArray[np.int64]:
        """One int64 per message, from an iterator over them (a C-level ``map``)."""
        return np.fromiter(values, np.int64, len(self._messages))


def _record(message: Message) -> SourceRecord:
    headers = message.headers()
    timestamp_ms = message.timestamp()[1]
    return SourceRecord(
        message.topic(),  # type: ignore[arg-type]  # set on every data message
        message.partition(),  # type: ignore[arg-type]  # likewise
        message.offset(),  # type: ignore[arg-type]  # likewise
        message.key(),
        message.value(),
        tuple(headers) if headers else (),  # type: ignore[arg-type]  # (str, bytes)
        timestamp_ms if timestamp_ms > 0 else 0,
    )


def batch_values(records: Sequence[SourceRecord]) -> list[bytes | None]:
    """The value of every record of a batch, in order (a :class:`MessageBatch` has them)."""
    if isinstance(records, MessageBatch):
        return records.values
    return [record.value for record in records]


@dataclass(frozen=True, slots=True)
class Event:
    """A decoded event: the reader schema's fields, by name, and where it came from."""

    source: SourceRecord
    fields: dict[str, Any]
    #: Id of the writer schema (registry id, fingerprint or 0 for plain Avro), for lineage.
    writer_id: int = 0


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record that could not be scored, with the reason, bound for the dead-letter topic."""

    source: SourceRecord
    stage: Stage
    error_type: str
    message: str


@dataclass(frozen=True, slots=True)
class Scored:
    """A flagged event ready to publish: its score, the decision and the decoded event."""

    source: SourceRecord
    event: dict[str, Any]
    score: float
    decision: str
    threshold: float
    model_name: str
    model_version: str
    scored_time_ms: int = field(default=0)


class FieldColumn(Protocol):
    """One event field across a batch, as the decoder hands it to featurize."""

    @property
    def null(self) -> NDArray[np.bool_] | None:
        """Per-row null mask, or None when the field cannot be null."""
        ...

    def __len__(self) -> int:
        """Rows."""
        ...

    def to_numpy(self, dtype: DTypeLike = np.float32, fill: float | None = None) -> NDArray[Any]:
        """Values as ``dtype``; nulls become ``fill`` (NaN for float dtypes)."""
        ...

    def to_objects(self) -> NDArray[np.object_]:
        """Python values (``str`` for strings and enum symbols), ``None`` for nulls."""
        ...


@dataclass(frozen=True, slots=True)
class ValuesColumn:
    """A :class:`FieldColumn` over Python values (from fastavro dicts or offline events)."""

    values: list[Any]
    null: NDArray[np.bool_] | None = None

    @classmethod
    def of(cls, values: list[Any]) -> ValuesColumn:
        """Wrap ``values``; ``None`` entries are nulls."""
        nulls = np.fromiter((v is None for v in values), dtype=bool, count=len(values))
        return cls(values, nulls if nulls.any() else None)

    def __len__(self) -> int:
        """Rows."""
        return len(self.values)

    def to_numpy(self, dtype: DTypeLike = np.float32, fill: float | None = None) -> NDArray[Any]:
        """Values as ``dtype``; nulls become ``fill`` (NaN for float dtypes, else 0)."""
        if np.dtype(dtype) == np.dtype(object):
            return self.to_objects()
        values = self.values
        if self.null is not None:
            if fill is None:
                fill = float("nan") if np.dtype(dtype).kind == "f" else 0
            values = [fill if v is None else v for v in values]
        return np.asarray(values, dtype=dtype)

    def to_objects(self) -> NDArray[np.object_]:
        """The values as an object array."""
        out = np.empty(len(self.values), dtype=object)
        out[:] = self.values
        return out


@dataclass(frozen=True, slots=True)
class DecodedBatch:
    """What decode hands on: the good records, the bound fields as columns, the rejects.

    Row ``i`` of every column belongs to ``records[i]``. Whole events are decoded only on
    demand (:attr:`event_at`), for the few that are flagged or dead-lettered later.
    """

    records: Sequence[SourceRecord]
    columns: Mapping[str, FieldColumn]
    rejected: list[Rejected]
    #: The full event of row ``i`` (all reader-schema fields), decoded when asked.
    event_at: Callable[[int], Event]

    @classmethod
    def from_events(
        cls, events: Sequence[Event], fields: Sequence[str], rejected: list[Rejected] | None = None
    ) -> DecodedBatch:
        """Columns gathered from already decoded events (fastavro dicts, offline input)."""
        columns = {
            name: ValuesColumn.of(_plain([event.fields.get(name) for event in events]))
            for name in fields
        }
        return cls([e.source for e in events], columns, rejected or [], events.__getitem__)


#: The Unix epoch, for timestamp fields decoded as datetimes.
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
#: One millisecond: timestamps reach models as epoch milliseconds, as the columnar decoder
#: gives timestamp-millis.
ONE_MS = dt.timedelta(milliseconds=1)


def _plain(values: list[Any]) -> list[Any]:
    """fastavro's datetimes as epoch milliseconds and dates as epoch days, like the columns."""
    first = next((v for v in values if v is not None), None)
    if isinstance(first, dt.datetime):
        return [None if v is None else (v - EPOCH) // ONE_MS for v in values]
    if isinstance(first, dt.date):
        return [None if v is None else (v - EPOCH.date()).days for v in values]
    return values
