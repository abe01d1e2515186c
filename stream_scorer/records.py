"""Frozen values passed between the stages.

Every derived value points back to the :class:`SourceRecord` it came from, so a log line, an
alert or a dead letter can always name the topic, partition and offset of its origin.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, cast, overload

import numpy as np
from numpy.typing import DTypeLike, NDArray

__all__ = [
    "Batch",
    "BatchOutput",
    "BatchResult",
    "DecodedBatch",
    "Event",
    "FieldColumn",
    "Header",
    "Outgoing",
    "Rejected",
    "Scored",
    "SourceRecord",
    "Stage",
    "ValuesColumn",
    "batch_values",
]

Header = tuple[str, bytes | None]
#: One message to publish: topic, key, value, headers.
Outgoing = tuple[str, bytes | None, bytes | None, list[Header]]

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


class Batch(Protocol):
    """One micro-batch as the stages read it: by column, and a record per row on demand.

    The only implementation is :class:`~stream_scorer.consume.MessageBatch` (consume owns the
    batch); this protocol lets the stages name the type without importing a stage.
    """

    @property
    def values(self) -> list[bytes | None]:
        """Every message's value, in batch order."""
        ...

    @property
    def topics(self) -> list[str]:
        """Each message's topic."""
        ...

    @property
    def partitions(self) -> NDArray[np.int64]:
        """Each message's partition."""
        ...

    @property
    def offsets(self) -> NDArray[np.int64]:
        """Each message's offset."""
        ...

    @property
    def timestamps_ms(self) -> NDArray[np.int64]:
        """Each message's timestamp in epoch ms; 0 where the broker gave none."""
        ...

    def __len__(self) -> int:
        """Messages in the batch."""
        ...

    @overload
    def __getitem__(self, index: int) -> SourceRecord: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[SourceRecord]: ...
    def __getitem__(self, index: int | slice) -> SourceRecord | Sequence[SourceRecord]:
        """The record of one row (built on demand), or a list of them for a slice."""
        ...


def batch_values(batch: Sequence[SourceRecord]) -> list[bytes | None]:
    """The value of every record of a batch (a :class:`Batch`), in order."""
    return cast(Batch, batch).values


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
    #: Multiclass models: the top classes, most likely first, as ``(label, probability)``.
    classes: tuple[tuple[str, float], ...] = ()


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


@dataclass(slots=True)
class BatchResult:
    """What one batch came to: counts, stage timings, the alerts and the rejects."""

    consumed: int = 0
    scored: int = 0
    flagged: int = 0
    unflagged: int = 0
    dead_lettered: int = 0
    stage_s: dict[str, float] = field(default_factory=dict)
    alerts: list[Scored] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    #: Events scored per model (``name/version``) that decided this batch.
    scored_by: dict[str, int] = field(default_factory=dict)
    #: Event timestamp → results acknowledged, per record with a timestamp, in seconds; set
    #: by the delivery strategy once the batch is acknowledged (or committed).
    latencies_s: NDArray[np.float64] = field(default_factory=lambda: np.empty(0))


@dataclass(slots=True)
class BatchOutput:
    """What the pipeline hands the delivery strategy: the batch, what to publish, its result.

    The pipeline never publishes or waits; the strategy publishes :attr:`messages` (alerts and
    dead letters, in order) and commits the batch's offsets once they are safe.
    """

    batch: Batch
    messages: list[Outgoing]
    result: BatchResult
