"""The exception hierarchy: what is one bad record, what is fatal, what is bad configuration.

``RecordError`` is per record: the pipeline dead-letters it and carries on. ``FatalError`` is
infrastructure: the runner stops without committing. ``ConfigurationError`` stops start-up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stream_scorer.records import SourceRecord

__all__ = [
    "CommitError",
    "ConfigurationError",
    "DecodeError",
    "FatalError",
    "FeatureError",
    "ModelError",
    "PublishError",
    "RecordError",
    "StreamScorerError",
]


class StreamScorerError(Exception):
    """Base of every error stream-scorer raises on purpose."""


class ConfigurationError(StreamScorerError):
    """Settings, schemas or the model do not fit together; start-up stops (exit code 2)."""


class RecordError(StreamScorerError):
    """One record cannot be scored; it goes to the dead-letter topic and the batch goes on."""

    stage = "unknown"

    def __init__(self, reason: str, source: SourceRecord | None = None) -> None:
        """Name the reason and, when known, the record."""
        super().__init__(reason)
        self.reason = reason
        self.source = source


class DecodeError(RecordError):
    """The bytes are not a valid event for the reader schema (framing, schema id, Avro body)."""

    stage = "decode"


class FeatureError(RecordError):
    """The event decoded but cannot be bound to the model (null where the model needs a value)."""

    stage = "featurize"


class FatalError(StreamScorerError):
    """Infrastructure failed; stop without committing and let the orchestrator restart us."""


class ModelError(FatalError):
    """The model failed to load or to run, or returned the wrong shape."""


class PublishError(FatalError):
    """A produced message (alert or dead letter) was not acknowledged by the broker."""


class CommitError(FatalError):
    """Committing consumed offsets failed."""
