"""The model lifecycle: repository, aliases, validation gates, promotion, history, live swaps.

``models/<name>/<version>/`` folders are what is on disk; aliases (``champion``, any name) say
which version serves; :mod:`~stream_scorer.lifecycle.validate` decides whether a version may be
promoted; :mod:`~stream_scorer.lifecycle.watcher` makes a running service follow its alias,
loading the new version off the loop and swapping it in between batches. Every change is kept
in an append-only history. See ``docs/model-lifecycle.md``.
"""

from stream_scorer.lifecycle.repository import (
    HistoryEntry,
    LifecycleError,
    ModelRef,
    ModelRepository,
    promote,
    rollback,
)

__all__ = ["HistoryEntry", "LifecycleError", "ModelRef", "ModelRepository", "promote", "rollback"]
