"""Dead letters: the original message untouched, plus why and where from in headers."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from stream_scorer.dead_letter import MAX_ERROR_MESSAGE_BYTES, dead_letter_message
from stream_scorer.records import Rejected, SourceRecord

MakeRecord = Callable[..., SourceRecord]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (b"card-1", b"\x00\x00\x00\x00\x01garbage\xff"),
        (None, None),
        (b"\xff\xfe", b""),
    ],
    ids=["binary-value", "tombstone", "non-utf8-key-empty-value"],
)
def test_original_key_value_and_headers_are_untouched(
    key: bytes | None, value: bytes | None, make_record: MakeRecord
) -> None:
    """Key and value bytes are the consumed ones; original headers come first, unchanged."""
    original_headers = (("trace-id", b"abc"), ("empty", None))
    source = make_record(value, key=key, headers=original_headers)

    out_key, out_value, headers = dead_letter_message(
        Rejected(source, "decode", "DecodeError", "bad"), "1.2.3"
    )

    assert out_key is key
    assert out_value is value
    assert headers[:2] == list(original_headers)


def test_error_and_source_headers(make_record: MakeRecord) -> None:
    """error.* headers say why, source.* headers say where from, scorer.version who."""
    source = make_record(b"v", offset=812, partition=4, topic="txns", timestamp_ms=1_700_000_000)

    _, _, headers = dead_letter_message(
        Rejected(source, "featurize", "FeatureError", "field 'amount' is null"), "1.2.3"
    )

    assert headers == [
        ("error.type", b"FeatureError"),
        ("error.message", b"field 'amount' is null"),
        ("error.stage", b"featurize"),
        ("source.topic", b"txns"),
        ("source.partition", b"4"),
        ("source.offset", b"812"),
        ("source.timestamp", b"1700000000"),
        ("scorer.version", b"1.2.3"),
    ]


@pytest.mark.parametrize(
    ("message", "expected_len"),
    [
        ("x" * 10, 10),
        ("x" * MAX_ERROR_MESSAGE_BYTES, MAX_ERROR_MESSAGE_BYTES),
        ("x" * (MAX_ERROR_MESSAGE_BYTES * 5), MAX_ERROR_MESSAGE_BYTES),
        ("\u00e9" * MAX_ERROR_MESSAGE_BYTES, MAX_ERROR_MESSAGE_BYTES),
    ],
    ids=["short", "exactly-max", "long", "multibyte"],
)
def test_long_messages_are_truncated(
    message: str, expected_len: int, make_record: MakeRecord
) -> None:
    """error.message holds at most MAX_ERROR_MESSAGE_BYTES bytes of the reason's UTF-8."""
    _, _, headers = dead_letter_message(
        Rejected(make_record(b"v"), "score", "ModelError", message), "1"
    )

    value = dict(headers)["error.message"]
    assert value is not None
    assert len(value) == expected_len
    assert value == message.encode()[:expected_len]
