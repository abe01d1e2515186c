"""Rejected records → dead-letter messages that lose nothing.

In: :class:`Rejected`. Out: a message with the original key and value bytes untouched, the
original headers, and headers saying why and where from: ``error.type``, ``error.message``
(truncated), ``error.stage``, ``source.topic``, ``source.partition``, ``source.offset``,
``source.timestamp`` and ``scorer.version``. No side effects.
"""

from __future__ import annotations

from stream_scorer.records import Header, Rejected

__all__ = ["MAX_ERROR_MESSAGE_BYTES", "dead_letter_message"]

#: Longest ``error.message`` header; a reason is for people, and headers count against
#: ``message.max.bytes`` together with the original value.
MAX_ERROR_MESSAGE_BYTES = 1024


def dead_letter_message(
    rejected: Rejected, scorer_version: str
) -> tuple[bytes | None, bytes | None, list[Header]]:
    """Key, value and headers of the dead letter for one rejected record."""
    source = rejected.source
    message = rejected.message.encode("utf-8", errors="replace")[:MAX_ERROR_MESSAGE_BYTES]
    headers: list[Header] = [
        *source.headers,
        ("error.type", rejected.error_type.encode()),
        ("error.message", message),
        ("error.stage", rejected.stage.encode()),
        ("source.topic", source.topic.encode()),
        ("source.partition", str(source.partition).encode()),
        ("source.offset", str(source.offset).encode()),
        ("source.timestamp", str(source.timestamp_ms).encode()),
        ("scorer.version", scorer_version.encode()),
    ]
    return source.key, source.value, headers
