"""The privacy policy: what leaves the scorer of personal data, per field, and dead-letter payloads.

Card transactions are personal data. Every value that stream-scorer copies out of an input event
(the alert's key, the projected fields on an alert, the key and copied headers of a dead letter)
passes through one :class:`PrivacyPolicy`, configured per field in ``[privacy]``:

* ``keep``: as it is (the default, so existing deployments behave as before);
* ``pseudonymise``: a keyed HMAC-SHA256 token (hex). Equal inputs give equal tokens under one
  key, so partitioning by a pseudonymised key keeps each entity's alerts in one partition and in
  order, and downstream joins still work; without the key the token cannot be reversed or
  recomputed from a guessed card number;
* ``redact``: replaced by ``[redacted]``;
* ``drop``: left out (a dropped key is a null key; a dropped header or projected field is gone).

Dead-letter payloads (the original value bytes) are kept by default, documented as personal
data, or encrypted with AES-256-GCM (:class:`PayloadCipher`): the value becomes
``nonce || ciphertext+tag``, with the key id and the algorithm in headers, authenticated together
with the record's coordinates, so a payload cannot be swapped between dead letters unnoticed.
``stream-scorer dead-letters replay`` decrypts and re-injects them after a fix.

Reasons (``error.message`` headers, log lines) are written by the stages to say what was wrong,
never what the bytes were; this module does not need to scrub them.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from stream_scorer.errors import ConfigurationError
from stream_scorer.records import Header

__all__ = [
    "ENCRYPTION_HEADER",
    "KEY_ID_HEADER",
    "REDACTED",
    "FieldAction",
    "PayloadCipher",
    "PrivacyPolicy",
    "Pseudonymiser",
    "decode_key",
]

FieldAction = Literal["keep", "pseudonymise", "redact", "drop"]
#: What a redacted value becomes.
REDACTED = "[redacted]"
#: Dead-letter header naming the payload's encryption, and the key that encrypted it.
ENCRYPTION_HEADER = "dlq.encryption"
KEY_ID_HEADER = "dlq.key_id"
#: The one algorithm written; replay refuses any other.
ALGORITHM = "aes-256-gcm"
#: AES-GCM nonce length: 96 bits, random per payload (NIST SP 800-38D's recommended size).
NONCE_BYTES = 12
#: Key length of AES-256 and the least length of an HMAC key we accept.
KEY_BYTES = 32


def decode_key(text: str, name: str, length: int | None = KEY_BYTES) -> bytes:
    """A key written as hex (64 digits for 32 bytes), as key files and variables hold it.

    Raises:
        ConfigurationError: Not hex, or the wrong length; the message never shows the key.
    """
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        msg = f"{name}: the key must be written as hex digits"
        raise ConfigurationError(msg) from None
    if length is not None and len(key) != length:
        msg = f"{name}: the key must be {length} bytes ({2 * length} hex digits), got {len(key)}"
        raise ConfigurationError(msg)
    if length is None and len(key) < KEY_BYTES:
        msg = f"{name}: the key must be at least {KEY_BYTES} bytes ({2 * KEY_BYTES} hex digits)"
        raise ConfigurationError(msg)
    return key


class Pseudonymiser:
    """Keyed HMAC-SHA256 tokens: equal inputs, equal tokens; irreversible without the key."""

    def __init__(self, key: bytes) -> None:
        """Use ``key`` (at least 32 bytes)."""
        if len(key) < KEY_BYTES:
            msg = f"a pseudonymisation key needs at least {KEY_BYTES} bytes"
            raise ConfigurationError(msg)
        self._key = key

    def token(self, value: bytes) -> str:
        """The hex token of ``value``."""
        return hmac.new(self._key, value, hashlib.sha256).hexdigest()


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8")


@dataclass(frozen=True, slots=True)
class PrivacyPolicy:
    """Per-field actions for everything copied out of an event; ``keep`` where none is set."""

    #: Action on the Kafka key of alerts and dead letters (the card id, for the shipped model).
    key: FieldAction = "keep"
    #: Actions by input field name (projected alert fields) and by header name (headers a
    #: dead letter copies from its input record).
    fields: Mapping[str, FieldAction] = field(default_factory=dict)
    pseudonymiser: Pseudonymiser | None = None

    def __post_init__(self) -> None:
        """Pseudonymising anything needs a key."""
        wanted = self.key == "pseudonymise" or "pseudonymise" in self.fields.values()
        if wanted and self.pseudonymiser is None:
            msg = (
                "privacy: pseudonymise needs a key: set privacy.pseudonymise_key_file or "
                "STREAM_SCORER_PRIVACY__PSEUDONYMISE_KEY"
            )
            raise ConfigurationError(msg)

    @property
    def is_noop(self) -> bool:
        """True when every action is ``keep`` (nothing to apply)."""
        return self.key == "keep" and all(a == "keep" for a in self.fields.values())

    def _token(self, value: Any) -> str:
        assert self.pseudonymiser is not None  # noqa: S101 - checked in __post_init__
        return self.pseudonymiser.token(_as_bytes(value))

    def apply_key(self, key: bytes | None) -> bytes | None:
        """The key as the policy lets it out."""
        if key is None or self.key == "keep":
            return key
        if self.key == "drop":
            return None
        if self.key == "redact":
            return REDACTED.encode()
        return self._token(key).encode()

    def apply_value(self, name: str, value: Any) -> tuple[bool, Any]:
        """``(kept, value)`` for one named value: ``kept`` is False when it is dropped."""
        action = self.fields.get(name, "keep")
        if action == "keep" or value is None:
            return action != "drop", value
        if action == "drop":
            return False, None
        if action == "redact":
            return True, REDACTED
        return True, self._token(value)

    def apply_fields(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Projected fields as the policy lets them out (dropped ones left out)."""
        out: dict[str, Any] = {}
        for name, value in values.items():
            kept, shown = self.apply_value(name, value)
            if kept:
                out[name] = shown
        return out

    def apply_headers(self, headers: Iterable[Header]) -> list[Header]:
        """Headers copied from an input record, as the policy lets them out."""
        out: list[Header] = []
        for name, value in headers:
            kept, shown = self.apply_value(name, value)
            if kept:
                out.append(
                    (name, shown if shown is None or isinstance(shown, bytes) else _as_bytes(shown))
                )
        return out


class PayloadCipher:
    """AES-256-GCM for dead-letter payloads, under a named key."""

    def __init__(self, key: bytes, key_id: str) -> None:
        """Encrypt under ``key`` (32 bytes), announced as ``key_id``."""
        if len(key) != KEY_BYTES:
            msg = f"a dead-letter key must be {KEY_BYTES} bytes"
            raise ConfigurationError(msg)
        self._aead = AESGCM(key)
        self.key_id = key_id

    @staticmethod
    def _aad(topic: str, partition: int, offset: int) -> bytes:
        # The source coordinates are authenticated with the payload: a ciphertext moved onto
        # another dead letter fails to decrypt.
        return f"{topic}/{partition}/{offset}".encode()

    def encrypt(self, value: bytes | None, topic: str, partition: int, offset: int) -> bytes | None:
        """``nonce || ciphertext+tag`` of ``value`` (None stays None: a tombstone has no data)."""
        if value is None:
            return None
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, value, self._aad(topic, partition, offset))

    def decrypt(self, value: bytes, topic: str, partition: int, offset: int) -> bytes:
        """The original payload.

        Raises:
            ValueError: The payload was not encrypted under this key for these coordinates, or
                was altered.
        """
        nonce, sealed = value[:NONCE_BYTES], value[NONCE_BYTES:]
        try:
            return self._aead.decrypt(nonce, sealed, self._aad(topic, partition, offset))
        except InvalidTag:
            msg = "dead-letter payload does not decrypt: wrong key, altered, or moved"
            raise ValueError(msg) from None

    def headers(self) -> list[Header]:
        """Headers that announce an encrypted payload."""
        return [(ENCRYPTION_HEADER, ALGORITHM.encode()), (KEY_ID_HEADER, self.key_id.encode())]
