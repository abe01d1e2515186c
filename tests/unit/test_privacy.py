"""The privacy policy as tables: keys, projected fields and copied headers per action; keyed
pseudonyms; dead-letter payload encryption; keys never shown in errors."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import fastavro
import pytest

from stream_scorer.dead_letter import DeadLetterWriter
from stream_scorer.encode import AlertEncoder, EventFields
from stream_scorer.errors import ConfigurationError
from stream_scorer.privacy import (
    ENCRYPTION_HEADER,
    KEY_ID_HEADER,
    REDACTED,
    PayloadCipher,
    PrivacyPolicy,
    Pseudonymiser,
    decode_key,
)
from stream_scorer.records import Rejected, Scored, SourceRecord
from stream_scorer.settings import load_settings

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
MakeRecord = Callable[..., SourceRecord]


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ("keep", b"card-1"),
        ("redact", REDACTED.encode()),
        ("drop", None),
        ("pseudonymise", Pseudonymiser(KEY).token(b"card-1").encode()),
    ],
)
def test_key_actions(action: Any, expected: bytes | None) -> None:
    """Each action applied to a key; None stays None."""
    policy = PrivacyPolicy(key=action, pseudonymiser=Pseudonymiser(KEY))

    assert policy.apply_key(b"card-1") == expected
    assert policy.apply_key(None) is None


def test_pseudonyms_are_stable_per_key_and_differ_across_keys() -> None:
    """Equal inputs give equal tokens under one key (partitioning by key still holds);
    another key gives other tokens; tokens do not contain the input."""
    one, other = Pseudonymiser(KEY), Pseudonymiser(OTHER_KEY)

    assert one.token(b"4111111111111111") == one.token(b"4111111111111111")
    assert one.token(b"4111111111111111") != one.token(b"4111111111111112")
    assert one.token(b"4111111111111111") != other.token(b"4111111111111111")
    assert "4111" not in one.token(b"4111111111111111")
    assert len(one.token(b"x")) == 64


def test_fields_and_headers_follow_their_actions() -> None:
    """Projected fields and copied headers: kept, redacted, pseudonymised or dropped by name."""
    policy = PrivacyPolicy(
        fields={"card_id": "pseudonymise", "ip_address": "drop", "merchant_name": "redact"},
        pseudonymiser=Pseudonymiser(KEY),
    )

    fields = policy.apply_fields(
        {"card_id": "c-1", "ip_address": "10.0.0.1", "merchant_name": "Acme", "amount": 3.5}
    )
    headers = policy.apply_headers([("card_id", b"c-1"), ("ip_address", b"x"), ("trace", b"t")])

    assert fields == {
        "card_id": Pseudonymiser(KEY).token(b"c-1"),
        "merchant_name": REDACTED,
        "amount": 3.5,
    }
    assert headers == [("card_id", Pseudonymiser(KEY).token(b"c-1").encode()), ("trace", b"t")]


def test_pseudonymise_without_a_key_is_refused() -> None:
    """A policy that pseudonymises anything needs a key."""
    with pytest.raises(ConfigurationError, match="pseudonymise needs a key"):
        PrivacyPolicy(fields={"card_id": "pseudonymise"})


def test_cipher_round_trip_and_tampering() -> None:
    """A payload decrypts under its key and coordinates only: another key, other coordinates
    (moved to another dead letter) or one flipped bit fail; nonces differ per payload."""
    cipher = PayloadCipher(KEY, "k1")
    sealed = cipher.encrypt(b"original bytes", "in", 2, 40)
    assert sealed is not None

    assert cipher.decrypt(sealed, "in", 2, 40) == b"original bytes"
    assert b"original" not in sealed
    assert cipher.encrypt(b"original bytes", "in", 2, 40) != sealed
    with pytest.raises(ValueError, match="does not decrypt"):
        PayloadCipher(OTHER_KEY, "k1").decrypt(sealed, "in", 2, 40)
    with pytest.raises(ValueError, match="does not decrypt"):
        cipher.decrypt(sealed, "in", 2, 41)
    flipped = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(ValueError, match="does not decrypt"):
        cipher.decrypt(flipped, "in", 2, 40)
    assert cipher.encrypt(None, "in", 0, 0) is None


@pytest.mark.parametrize(
    ("text", "length", "match"),
    [
        ("zz" * 32, 32, "hex digits"),
        ("ab" * 31, 32, "32 bytes"),
        ("ab" * 8, None, "at least 32 bytes"),
    ],
)
def test_malformed_keys_are_named_never_shown(text: str, length: int | None, match: str) -> None:
    """A bad key is a configuration error naming the setting, without the key's text."""
    with pytest.raises(ConfigurationError, match=match) as caught:
        decode_key(text, "privacy.dead_letter_key", length)

    assert text not in str(caught.value)
    assert "privacy.dead_letter_key" in str(caught.value)


def test_alert_key_and_projection_go_through_the_policy(
    alert_schema: dict[str, Any], make_record: MakeRecord
) -> None:
    """The alert's Kafka key and key field are pseudonymised alike; projected fields follow
    their actions."""
    policy = PrivacyPolicy(
        key="pseudonymise",
        fields={"card_id": "pseudonymise", "device_id": "drop"},
        pseudonymiser=Pseudonymiser(KEY),
    )
    encoder = AlertEncoder(
        alert_schema,
        b"",
        "1",
        EventFields("transaction_id", None, None, ("card_id", "device_id", "mcc")),
        policy,
    )
    scored = Scored(
        make_record(b"", key=b"card-1"),
        {"transaction_id": "t", "card_id": "card-1", "device_id": "d", "mcc": "5411"},
        0.9, "FLAG", 0.5, "fraud", "1",
    )  # fmt: skip

    key, value, _ = encoder.encode(scored)
    alert = fastavro.schemaless_reader(io.BytesIO(value), fastavro.parse_schema(alert_schema), None)

    token = Pseudonymiser(KEY).token(b"card-1")
    assert key == token.encode()
    assert alert["key"] == token  # type: ignore[index]
    assert alert["projection"] == {"card_id": token, "mcc": "5411"}  # type: ignore[index]


def test_dead_letter_with_policy_and_encryption(make_record: MakeRecord) -> None:
    """A dead letter's key and copied headers follow the policy; its payload is sealed under
    the key named in its headers and decrypts to the original bytes."""
    record = make_record(b"\x00raw event bytes", key=b"card-1", offset=7)
    record = record._replace(headers=(("ip_address", b"10.0.0.1"), ("traceparent", b"00-x")))
    cipher = PayloadCipher(KEY, "2026-12")
    writer = DeadLetterWriter(
        "9.9", PrivacyPolicy(key="redact", fields={"ip_address": "drop"}), cipher
    )

    key, value, headers = writer.message(Rejected(record, "decode", "DecodeError", "truncated"))

    names = dict(headers)
    assert key == REDACTED.encode()
    assert "ip_address" not in names and names["traceparent"] == b"00-x"
    assert names[ENCRYPTION_HEADER] == b"aes-256-gcm" and names[KEY_ID_HEADER] == b"2026-12"
    assert value is not None and b"raw event" not in value
    assert cipher.decrypt(value, record.topic, record.partition, record.offset) == record.value
    assert names["error.message"] == b"truncated"


def test_encrypt_without_a_key_stops_start_up() -> None:
    """dead_letter_payload = encrypt without a key is a configuration error naming the key."""
    with pytest.raises(ConfigurationError, match="dead_letter_key"):
        load_settings(None, {"privacy": {"dead_letter_payload": "encrypt"}}, environ={})
