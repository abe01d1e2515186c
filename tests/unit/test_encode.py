"""Stage 6, encode: alert values that decode against alert.avsc, source key, lineage headers."""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Callable
from typing import Any

import fastavro
import pytest

from stream_scorer.decode import WireFormat, frame_body
from stream_scorer.encode import AlertEncoder, EventFields, event_time_ms, projected_value
from stream_scorer.records import Scored, SourceRecord

MakeRecord = Callable[..., SourceRecord]
EVENT_TIME = dt.datetime(2026, 3, 4, 5, 6, 7, 890000, tzinfo=dt.UTC)
EVENT_TIME_MS = 1_772_600_767_890
#: The shipped fraud card's event fields.
FRAUD = EventFields(id_field="transaction_id", time_field="event_time")


def _scored(source: SourceRecord, event: dict[str, Any]) -> Scored:
    return Scored(
        source=source,
        event=event,
        score=0.875,
        decision="FLAG",
        threshold=0.7617,
        model_name="fraud",
        model_version="1",
        scored_time_ms=1_772_600_768_000,
    )


def _decode(alert_schema: dict[str, Any], value: bytes) -> dict[str, Any]:
    decoded: dict[str, Any] = fastavro.schemaless_reader(
        io.BytesIO(value), fastavro.parse_schema(alert_schema), None
    )
    return decoded


@pytest.mark.parametrize("wire_format", ["confluent", "plain", "single-object"])
def test_alert_value_decodes_against_alert_schema(
    wire_format: WireFormat, alert_schema: dict[str, Any], make_record: MakeRecord
) -> None:
    """After the frame header, the value is an Alert with the event's id, score and lineage."""
    header = frame_body(wire_format, b"", schema_id=42, schema=alert_schema)
    encoder = AlertEncoder(alert_schema, header, "9.9.9", FRAUD)
    source = make_record(b"ignored", offset=1234, partition=5, key=b"card-77")
    event = {"transaction_id": "txn-abc", "event_time": EVENT_TIME, "amount": 1.0}

    key, value, _ = encoder.encode(_scored(source, event))

    assert key == b"card-77"
    assert value[: len(header)] == header
    alert = _decode(alert_schema, value[len(header) :])
    assert alert == {
        "event_id": "txn-abc",
        "key": "card-77",
        "score": 0.875,
        "decision": "FLAG",
        "threshold": 0.7617,
        "model_name": "fraud",
        "model_version": "1",
        "event_time": EVENT_TIME,
        "scored_time": dt.datetime(2026, 3, 4, 5, 6, 8, tzinfo=dt.UTC),
        "source_topic": "transactions",
        "source_partition": 5,
        "source_offset": 1234,
        "projection": None,
        "classes": None,
    }


def test_alert_fields_hold_event_time_in_epoch_millis(
    alert_schema: dict[str, Any], make_record: MakeRecord
) -> None:
    """event_time in the alert record is epoch milliseconds of the event's datetime."""
    encoder = AlertEncoder(alert_schema, b"", "1.0", FRAUD)
    fields = encoder.alert_fields(
        _scored(make_record(b""), {"transaction_id": "t", "event_time": EVENT_TIME})
    )

    assert fields["event_time"] == EVENT_TIME_MS


def test_key_is_the_source_key_untouched(
    alert_schema: dict[str, Any], make_record: MakeRecord
) -> None:
    """A key that is not UTF-8 is passed through byte for byte as the message key."""
    raw_key = b"\xff\x00card"
    encoder = AlertEncoder(alert_schema, b"", "1.0")

    key, value, _ = encoder.encode(_scored(make_record(b"", key=raw_key), {"transaction_id": "t"}))

    assert key == raw_key
    assert _decode(alert_schema, value)["key"] == raw_key.decode("utf-8", errors="replace")


def test_null_key_gives_null_alert_key(
    alert_schema: dict[str, Any], make_record: MakeRecord
) -> None:
    """A record without a key gives an alert without a key, in the message and the value."""
    encoder = AlertEncoder(alert_schema, b"", "1.0")

    key, value, _ = encoder.encode(_scored(make_record(b"", key=None), {"transaction_id": "t"}))

    assert key is None
    assert _decode(alert_schema, value)["key"] is None


def test_lineage_headers(alert_schema: dict[str, Any], make_record: MakeRecord) -> None:
    """Headers name the source topic, partition, offset, the model and the scorer version."""
    encoder = AlertEncoder(alert_schema, b"", "2.3.4")
    source = make_record(b"", offset=99, partition=7, topic="txns")

    _, _, headers = encoder.encode(_scored(source, {"transaction_id": "t"}))

    assert headers == [
        ("source.topic", b"txns"),
        ("source.partition", b"7"),
        ("source.offset", b"99"),
        ("model.name", b"fraud"),
        ("model.version", b"1"),
        ("scorer.version", b"2.3.4"),
    ]


def test_missing_id_and_time_fall_back_to_coordinates_and_record_timestamp(
    alert_schema: dict[str, Any], make_record: MakeRecord
) -> None:
    """Without transaction_id and event_time, the alert uses the coordinates and broker time."""
    encoder = AlertEncoder(alert_schema, b"", "1.0")
    source = make_record(b"", offset=3, partition=1, timestamp_ms=EVENT_TIME_MS)

    fields = encoder.alert_fields(_scored(source, {}))

    assert fields["event_id"] == "transactions[1]@3"
    assert fields["event_time"] == EVENT_TIME_MS


def test_custom_id_and_time_fields(alert_schema: dict[str, Any], make_record: MakeRecord) -> None:
    """The encoder reads the event id and time from the fields it was configured with."""
    encoder = AlertEncoder(alert_schema, b"", "1.0", EventFields(id_field="id", time_field="ts"))

    fields = encoder.alert_fields(_scored(make_record(b""), {"id": 17, "ts": 5000}))

    assert (fields["event_id"], fields["event_time"]) == ("17", 5000)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (dt.datetime(1970, 1, 1, 0, 0, 1, tzinfo=dt.UTC), 1000),
        (EVENT_TIME, EVENT_TIME_MS),
        (1_700_000_000_123, 1_700_000_000_123),
        (None, -1),
        ("2026-01-01", -1),
    ],
    ids=["datetime-epoch", "datetime", "int-millis", "none-fallback", "string-fallback"],
)
def test_event_time_ms(value: Any, expected: int) -> None:
    """Datetimes become epoch millis, ints pass through, anything else takes the fallback."""
    assert event_time_ms(value, -1) == expected


def test_key_field_keys_the_alert(alert_schema: dict[str, Any], make_record: MakeRecord) -> None:
    """With a key field, the alert's Kafka key and ``key`` field are that field's value (so
    equal values share a partition); a null value gives a null key."""
    encoder = AlertEncoder(alert_schema, b"", "1.0", EventFields(key_field="customer_id"))
    source = make_record(b"", key=b"ignored")

    key, value, _ = encoder.encode(_scored(source, {"customer_id": "c-9"}))
    null_key, _, _ = encoder.encode(_scored(source, {"customer_id": None}))

    assert key == b"c-9"
    assert _decode(alert_schema, value)["key"] == "c-9"
    assert null_key is None


def test_projection_copies_named_fields_with_their_types(
    alert_schema: dict[str, Any], make_record: MakeRecord
) -> None:
    """Projected fields land on the alert's projection map: scalars typed, enums as symbols,
    timestamps as epoch ms, arrays and maps as JSON, nulls as null."""
    fields = EventFields(
        projection=("plan", "tenure", "autopay", "charges", "seen", "calls", "attrs", "gone")
    )
    encoder = AlertEncoder(alert_schema, b"", "1.0", fields)
    event = {
        "plan": "GOLD",
        "tenure": 14,
        "autopay": True,
        "charges": 49.5,
        "seen": EVENT_TIME,
        "calls": [3, 0, 7],
        "attrs": {"os": "android"},
        "gone": None,
    }

    _, value, _ = encoder.encode(_scored(make_record(b""), event))

    assert _decode(alert_schema, value)["projection"] == {
        "plan": "GOLD",
        "tenure": 14,
        "autopay": True,
        "charges": 49.5,
        "seen": EVENT_TIME_MS,
        "calls": "[3, 0, 7]",
        "attrs": '{"os": "android"}',
        "gone": None,
    }


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (b"\x01\xff", "01ff"),
        (dt.date(1970, 1, 11), 10),
        ({"b": 1, "a": [1]}, '{"a": [1], "b": 1}'),
    ],
    ids=["null", "bytes", "date", "map"],
)
def test_projected_value(value: Any, expected: Any) -> None:
    """Values without an Avro scalar counterpart get a stable string or number form."""
    assert projected_value(value) == expected


def test_event_fields_name_every_field_they_read() -> None:
    """fields() lists id, time, key and projection once each, in that order."""
    fields = EventFields("id", "ts", "id", ("plan", "ts"))

    assert fields.fields() == ("id", "ts", "plan")


def test_trace_context_is_carried_onto_the_alert(
    alert_schema: dict[str, Any], make_record: MakeRecord
) -> None:
    """An input event's traceparent and tracestate headers travel onto its alert; other input
    headers do not."""
    encoder = AlertEncoder(alert_schema, b"", "1.0", FRAUD)
    parent = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    source = make_record(b"").__class__(
        "transactions", 0, 1, b"k", b"", (("traceparent", parent), ("tracestate", b"a=1"),
                                         ("secret", b"x")), 0,
    )  # fmt: skip

    _, _, headers = encoder.encode(_scored(source, {"transaction_id": "t"}))

    assert ("traceparent", parent) in headers
    assert ("tracestate", b"a=1") in headers
    assert "secret" not in dict(headers)
