"""Stage 6: flagged results → alert messages (key, Avro value, lineage headers).

In: :class:`Scored`. Out: the Kafka key (the source event's key, untouched, so one entity's
alerts keep their order), the alert (``schemas/alert.avsc``) framed in the configured wire
format, and headers naming the source coordinates and the model. No side effects.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Mapping
from typing import Any

import fastavro

from stream_scorer.records import Header, Scored

__all__ = ["AlertEncoder", "OutgoingMessage", "event_time_ms"]

OutgoingMessage = tuple[bytes | None, bytes, list[Header]]

#: The Unix epoch, for events whose timestamp decoded to a datetime.
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
#: Field of the input event that holds its event time and its id.
EVENT_TIME_FIELD = "event_time"
EVENT_ID_FIELD = "transaction_id"


def event_time_ms(value: Any, fallback_ms: int) -> int:
    """An event-time field (datetime or epoch millis) as epoch millis."""
    if isinstance(value, dt.datetime):
        return (value - EPOCH) // dt.timedelta(milliseconds=1)
    if isinstance(value, int):
        return value
    return fallback_ms


class AlertEncoder:
    """Encodes alerts with one parsed schema and one frame header."""

    def __init__(
        self,
        alert_schema: Mapping[str, Any],
        header: bytes,
        scorer_version: str,
        event_id_field: str = EVENT_ID_FIELD,
        event_time_field: str = EVENT_TIME_FIELD,
    ) -> None:
        """Parse the alert schema once.

        Args:
            alert_schema: ``schemas/alert.avsc``.
            header: Frame prefix (Confluent magic + id, single-object marker + fingerprint,
                or empty for plain Avro).
            scorer_version: Written to every alert's ``scorer.version`` header.
            event_id_field: Input field copied to ``event_id``.
            event_time_field: Input field copied to ``event_time``.
        """
        self._schema = fastavro.parse_schema(dict(alert_schema))
        self._header = header
        self._version = scorer_version.encode()
        self._id_field = event_id_field
        self._time_field = event_time_field

    def alert_fields(self, scored: Scored) -> dict[str, Any]:
        """The alert record for one flagged event, as a dict matching alert.avsc."""
        source = scored.source
        key = source.key.decode("utf-8", errors="replace") if source.key is not None else None
        return {
            "event_id": str(scored.event.get(self._id_field, source.coordinates)),
            "key": key,
            "score": scored.score,
            "decision": scored.decision,
            "threshold": scored.threshold,
            "model_name": scored.model_name,
            "model_version": scored.model_version,
            "event_time": event_time_ms(scored.event.get(self._time_field), source.timestamp_ms),
            "scored_time": scored.scored_time_ms,
            "source_topic": source.topic,
            "source_partition": source.partition,
            "source_offset": source.offset,
        }

    def encode(self, scored: Scored) -> OutgoingMessage:
        """Key, framed Avro value and lineage headers for one flagged event."""
        buffer = io.BytesIO()
        buffer.write(self._header)
        fastavro.schemaless_writer(buffer, self._schema, self.alert_fields(scored))
        source = scored.source
        headers: list[Header] = [
            ("source.topic", source.topic.encode()),
            ("source.partition", str(source.partition).encode()),
            ("source.offset", str(source.offset).encode()),
            ("model.name", scored.model_name.encode()),
            ("model.version", scored.model_version.encode()),
            ("scorer.version", self._version),
        ]
        return source.key, buffer.getvalue(), headers
