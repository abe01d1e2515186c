"""Rejected records → dead-letter messages that lose nothing.

In: :class:`Rejected`. Out: a message with the original value bytes (or, with
``privacy.dead_letter_payload = "encrypt"``, those bytes sealed with AES-256-GCM), the original
key and headers as the privacy policy lets them out, and headers saying why and where from:
``error.type``, ``error.message`` (truncated; it says what was wrong, never what the bytes were),
``error.stage``, ``source.topic``, ``source.partition``, ``source.offset``, ``source.timestamp``,
``scorer.version``, and ``model.name`` / ``model.version`` of the model version live for the
batch (the one that decided the event, when one did). No side effects.
"""

from __future__ import annotations

from stream_scorer.privacy import PayloadCipher, PrivacyPolicy
from stream_scorer.records import Header, Rejected

__all__ = ["MAX_ERROR_MESSAGE_BYTES", "DeadLetterWriter", "dead_letter_message"]

#: Longest ``error.message`` header; a reason is for people, and headers count against
#: ``message.max.bytes`` together with the original value.
MAX_ERROR_MESSAGE_BYTES = 1024


class DeadLetterWriter:
    """Builds dead letters under one privacy policy and, optionally, one payload cipher."""

    def __init__(
        self,
        scorer_version: str,
        privacy: PrivacyPolicy | None = None,
        cipher: PayloadCipher | None = None,
    ) -> None:
        """Write ``scorer_version`` on every dead letter; apply ``privacy`` and ``cipher``."""
        self._version = scorer_version.encode()
        self._privacy = privacy or PrivacyPolicy()
        self._cipher = cipher

    def message(
        self, rejected: Rejected, model: tuple[str, str] | None = None
    ) -> tuple[bytes | None, bytes | None, list[Header]]:
        """Key, value and headers of the dead letter for one rejected record; ``model``
        (name, version) is the model version live for its batch, named in headers."""
        source = rejected.source
        reason = rejected.message.encode("utf-8", errors="replace")[:MAX_ERROR_MESSAGE_BYTES]
        privacy = self._privacy
        headers: list[Header] = [
            *(source.headers if privacy.is_noop else privacy.apply_headers(source.headers)),
            ("error.type", rejected.error_type.encode()),
            ("error.message", reason),
            ("error.stage", rejected.stage.encode()),
            ("source.topic", source.topic.encode()),
            ("source.partition", str(source.partition).encode()),
            ("source.offset", str(source.offset).encode()),
            ("source.timestamp", str(source.timestamp_ms).encode()),
            ("scorer.version", self._version),
        ]
        if model is not None:
            headers += [("model.name", model[0].encode()), ("model.version", model[1].encode())]
        value = source.value
        if self._cipher is not None and value is not None:
            value = self._cipher.encrypt(value, source.topic, source.partition, source.offset)
            headers.extend(self._cipher.headers())
        return privacy.apply_key(source.key), value, headers


def dead_letter_message(
    rejected: Rejected, scorer_version: str
) -> tuple[bytes | None, bytes | None, list[Header]]:
    """Key, value and headers of the dead letter for one rejected record, with no privacy
    policy (everything kept)."""
    return DeadLetterWriter(scorer_version).message(rejected)
