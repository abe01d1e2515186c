"""Frozen values passed between the stages.

Every derived value points back to the :class:`SourceRecord` it came from, so a log line, an
alert or a dead letter can always name the topic, partition and offset of its origin.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Event", "Header", "Rejected", "Scored", "SourceRecord", "Stage"]

Header = tuple[str, bytes | None]

#: The stage names used in dead-letter headers, metric labels and log lines.
Stage = str


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """One Kafka message exactly as it was consumed."""

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
