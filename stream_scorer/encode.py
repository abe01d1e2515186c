"""Stage 6: flagged results → alert messages (key, Avro value, lineage headers).

In: :class:`Scored`. Out: the Kafka key, the alert (``schemas/alert.avsc``) framed in the
configured wire format, and headers naming the source coordinates and the model, plus the
event's W3C trace context (``traceparent``, ``tracestate``) when it has one. No side effects.

Which input fields give the alert its ``event_id``, ``event_time`` and key is configuration, not
code (:class:`EventFields`: the ``[alerts]`` settings, else the model card's ``event`` section).
Without a key field the alert is keyed by the source event's Kafka key, untouched, so one
entity's alerts keep their order and partition. ``projection`` copies named input fields onto
the alert's ``projection`` map, so an alerting service needs no second lookup: scalars keep
their type (boolean, long, double, string; enums as their symbol, timestamps as epoch ms),
arrays, maps and records are written as JSON strings, and nulls stay null.
"""

from __future__ import annotations

import datetime as dt
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import fastavro

from stream_scorer.privacy import PrivacyPolicy
from stream_scorer.records import Header, Scored, SourceRecord

__all__ = ["AlertEncoder", "EventFields", "OutgoingMessage", "event_time_ms", "projected_value"]

OutgoingMessage = tuple[bytes | None, bytes, list[Header]]

#: Headers of the input event carried onto its alert (W3C trace context).
TRACE_HEADERS = frozenset({"traceparent", "tracestate"})
#: The Unix epoch, for events whose timestamp decoded to a datetime.
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def event_time_ms(value: Any, fallback_ms: int) -> int:
    """An event-time field (datetime or epoch millis) as epoch millis."""
    if isinstance(value, dt.datetime):
        return (value - EPOCH) // dt.timedelta(milliseconds=1)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return fallback_ms


def projected_value(value: Any) -> bool | int | float | str | None:
    """One input field's value as the alert's ``projection`` map holds it."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dt.datetime):
        return event_time_ms(value, 0)
    if isinstance(value, dt.date):
        return (value - EPOCH.date()).days
    if isinstance(value, bytes):
        return value.hex()
    return json.dumps(value, default=str, sort_keys=True)


@dataclass(frozen=True, slots=True)
class EventFields:
    """Which input fields identify an event on its alert; ``None`` where none is named."""

    #: Copied to the alert's ``event_id`` (stringified); else ``topic[partition]@offset``.
    id_field: str | None = None
    #: Copied to ``event_time`` (timestamp-millis or long); else the broker timestamp.
    time_field: str | None = None
    #: Its value (UTF-8 of its string form) becomes the alert's key; else the source key.
    key_field: str | None = None
    #: Input fields copied onto the alert's ``projection`` map.
    projection: tuple[str, ...] = ()

    def fields(self) -> tuple[str, ...]:
        """Every input field these settings read."""
        named = (self.id_field, self.time_field, self.key_field, *self.projection)
        return tuple(dict.fromkeys(f for f in named if f is not None))

    def event_id(self, event: Mapping[str, Any], source: SourceRecord) -> str:
        """The event's id: its id field, or its coordinates when there is none."""
        value = event.get(self.id_field) if self.id_field is not None else None
        return source.coordinates if value is None else str(value)

    def key(self, event: Mapping[str, Any], source: SourceRecord) -> bytes | None:
        """The alert's Kafka key: the key field's value, or the source event's key."""
        if self.key_field is None:
            return source.key
        value = event.get(self.key_field)
        return None if value is None else str(projected_value(value)).encode()


class AlertEncoder:
    """Encodes alerts with one parsed schema, one frame header and the event-field settings."""

    def __init__(
        self,
        alert_schema: Mapping[str, Any],
        header: bytes,
        scorer_version: str,
        fields: EventFields | None = None,
        privacy: PrivacyPolicy | None = None,
    ) -> None:
        """Parse the alert schema once.

        Args:
            alert_schema: ``schemas/alert.avsc`` (or a compatible one with ``projection``).
            header: Frame prefix (Confluent magic + id, single-object marker + fingerprint,
                or empty for plain Avro).
            scorer_version: Written to every alert's ``scorer.version`` header.
            fields: Which input fields give id, time, key and projection.
            privacy: What may leave of the key and the projected fields.
        """
        self._schema = fastavro.parse_schema(dict(alert_schema))
        self._header = header
        self._version = scorer_version.encode()
        self.fields = fields or EventFields()
        self._privacy = privacy or PrivacyPolicy()
        names = {f["name"] for f in alert_schema.get("fields", [])}
        self._has_projection = "projection" in names

    def alert_fields(self, scored: Scored) -> dict[str, Any]:
        """The alert record for one flagged event, as a dict matching alert.avsc."""
        source, event, fields = scored.source, scored.event, self.fields
        key = self._key(scored)
        record: dict[str, Any] = {
            "event_id": fields.event_id(event, source),
            "key": key.decode("utf-8", errors="replace") if key is not None else None,
            "score": scored.score,
            "decision": scored.decision,
            "threshold": scored.threshold,
            "model_name": scored.model_name,
            "model_version": scored.model_version,
            "event_time": event_time_ms(
                event.get(fields.time_field) if fields.time_field else None, source.timestamp_ms
            ),
            "scored_time": scored.scored_time_ms,
            "source_topic": source.topic,
            "source_partition": source.partition,
            "source_offset": source.offset,
        }
        if self._has_projection:
            record["projection"] = (
                self._privacy.apply_fields(
                    {name: projected_value(event.get(name)) for name in fields.projection}
                )
                if fields.projection
                else None
            )
        return record

    def encode(self, scored: Scored) -> OutgoingMessage:
        """Key, framed Avro value and lineage headers for one flagged event."""
        buffer = io.BytesIO()
        buffer.write(self._header)
        fastavro.schemaless_writer(buffer, self._schema, self.alert_fields(scored))
        source = scored.source
        headers: list[Header] = [
            # W3C trace context of the input event, so a trace follows it onto its alert.
            *(h for h in source.headers if h[0] in TRACE_HEADERS),
            ("source.topic", source.topic.encode()),
            ("source.partition", str(source.partition).encode()),
            ("source.offset", str(source.offset).encode()),
            ("model.name", scored.model_name.encode()),
            ("model.version", scored.model_version.encode()),
            ("scorer.version", self._version),
        ]
        return self._key(scored), buffer.getvalue(), headers

    def _key(self, scored: Scored) -> bytes | None:
        """The alert's key: the configured key field or the source key, through the policy."""
        return self._privacy.apply_key(self.fields.key(scored.event, scored.source))

    def encode_all(self, alerts: Sequence[Scored]) -> list[OutgoingMessage]:
        """Encode a batch's alerts, in order."""
        return [self.encode(scored) for scored in alerts]
