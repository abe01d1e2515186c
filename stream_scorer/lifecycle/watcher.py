"""A running service follows its model's alias: load off the loop, swap between batches.

:class:`PromotionWatcher` polls the aliases file (local-file mode: one instance, or members
sharing a volume). When the alias names a version other than the live champion it loads,
checks and warms the version up in its own thread, then calls
:meth:`~stream_scorer.model_set.LiveModels.replace`: the pipeline reads the set once per batch,
so the swap lands between batches, in exactly-once mode between transactions. A version that
fails to load is reported (log, ``stream_scorer_model_promotions_total{outcome="failed"}``,
an ``apply-failed`` history entry) and not tried again until the alias moves; the old version
keeps serving. Every swap is recorded as ``applied`` with this instance's id.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import structlog
from prometheus_client import CollectorRegistry, Counter

from stream_scorer.errors import ConfigurationError
from stream_scorer.lifecycle.repository import HistoryEntry, ModelRepository
from stream_scorer.model_set import LiveModels, LoadedModel, ModelSet

__all__ = ["PromotionWatcher"]

log = structlog.get_logger(__name__)


class PromotionWatcher:
    """Keeps :class:`LiveModels` on the version an alias names."""

    def __init__(
        self,
        repo: ModelRepository,
        name: str,
        alias: str,
        live: LiveModels,
        load: Callable[[Path], LoadedModel],
        instance: str,
        poll_interval_s: float,
        registry: CollectorRegistry | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        """Watch ``name@alias``; nothing runs until :meth:`start` or :meth:`check_once`.

        Args:
            repo: The repository holding the aliases.
            name: The model served.
            alias: The alias followed.
            live: The set the pipeline reads.
            load: Loads, binds and warms up a version folder (raises ConfigurationError).
            instance: This instance's id, for the history.
            poll_interval_s: Seconds between reads of the aliases.
            registry: Where the promotion counter goes.
            stop: Ends the thread when set (the runner's stop event).
        """
        self.repo, self.name, self.alias, self.live = repo, name, alias, live
        self._load = load
        self.instance = instance
        self._interval_s = poll_interval_s
        self._stop = stop if stop is not None else threading.Event()
        self._failed: str | None = None
        self._thread: threading.Thread | None = None
        self.promotions = Counter(
            "stream_scorer_model_promotions",
            "Alias changes this instance acted on, by outcome (applied, failed).",
            ["model_name", "outcome"],
            registry=registry,
        )
        for outcome in ("applied", "failed"):
            self.promotions.labels(name, outcome)

    def check_once(self) -> bool:
        """Apply the alias if it moved; True when the live set was replaced."""
        target = self.repo.aliases(self.name).get(self.alias)
        live = self.live.current.champion.version
        if target is None or target in (live, self._failed):
            return False
        try:
            model = self._load(self.repo.folder(self.name, target))
        except ConfigurationError as exc:
            self._failed = target
            self.promotions.labels(self.name, "failed").inc()
            log.error("model_apply_failed", model=self.name, version=target, serving=live,
                      error=str(exc))  # fmt: skip
            self.repo.record(
                HistoryEntry(
                    "apply-failed", self.name, target, self.alias, live,
                    f"instance:{self.instance}", str(exc), self.instance,
                )
            )  # fmt: skip
            return False
        self._failed = None
        self.live.replace(ModelSet(champion=model))
        self.promotions.labels(self.name, "applied").inc()
        log.info("model_applied", model=self.name, version=target, previous=live)
        self.repo.record(
            HistoryEntry(
                "applied", self.name, target, self.alias, live, f"instance:{self.instance}",
                f"{self.alias} moved to {target}", self.instance,
            )
        )  # fmt: skip
        return True

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.check_once()
            except Exception as exc:  # the watcher must outlive a bad read
                log.error("model_watch_failed", model=self.name, error=str(exc))

    def start(self) -> None:
        """Start polling in a daemon thread."""
        self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop polling."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
