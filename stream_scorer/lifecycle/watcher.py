"""A running service follows its model's alias: load off the loop, swap between batches.

:class:`PromotionWatcher` polls the aliases file (local-file mode: one instance, or members
sharing a volume). When the alias names a version other than the live champion it loads,
checks and warms the version up in its own thread, then calls
:meth:`~stream_scorer.model_set.LiveModels.replace`: the pipeline reads the set once per batch,
so the swap lands between batches, in exactly-once mode between transactions. A version that
fails to load is reported (log, ``stream_scorer_model_promotions_total{outcome="failed"}``,
an ``apply-failed`` history entry) and not tried again until the alias moves; the old version
keeps serving. Every swap is recorded as ``applied`` with this instance's id.

For ``watch_period_s`` after a swap, :meth:`PromotionWatcher.check_rules` compares the new
version with the one it replaced, from this instance's own Prometheus counters (alert rate,
mean score-stage time, bisected batches). A broken bound moves the alias back
(``auto-rollback``, by ``rule:<name>``, only if the alias still names the new version, so a
newer promotion is never undone and several members do not roll back twice); the watcher then
applies the alias like any other move.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from stream_scorer.errors import ConfigurationError
from stream_scorer.lifecycle.repository import (
    HistoryEntry,
    LifecycleError,
    ModelRepository,
    rollback,
)
from stream_scorer.model_set import LiveModels, LoadedModel, ModelSet

__all__ = ["PromotionWatcher", "RollbackRules"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class RollbackRules:
    """Bounds a freshly swapped-in version is held to, relative to the one it replaced."""

    watch_period_s: float = 300.0
    min_events: int = 2000
    alert_rate_ratio: float = 3.0
    latency_ratio: float = 3.0
    max_bisections: int = 0


@dataclass(frozen=True, slots=True)
class _Counters:
    """This instance's counters for one model version, read from the registry."""

    scored: float
    flagged: float
    score_s: float
    score_batches: float
    bisections: float


@dataclass(frozen=True, slots=True)
class _Watch:
    version: str
    previous: str
    until: float
    before: _Counters  # the new version's counters at the swap (zero unless seen before)
    baseline: _Counters  # the previous version's counters at the swap
    bisections_at_swap: float


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
        rules: RollbackRules | None = None,
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
            rules: Automatic rollback after a swap; None turns it off. The rules read the
                service's counters from ``registry``.
        """
        self.repo, self.name, self.alias, self.live = repo, name, alias, live
        self._load = load
        self.instance = instance
        self._interval_s = poll_interval_s
        self._stop = stop if stop is not None else threading.Event()
        self._failed: str | None = None
        self._thread: threading.Thread | None = None
        self._registry = registry
        self._rules = rules
        self._watch: _Watch | None = None
        self.promotions = Counter(
            "stream_scorer_model_promotions",
            "Alias changes this instance acted on, by outcome (applied, failed).",
            ["model_name", "outcome"],
            registry=registry,
        )
        for outcome in ("applied", "failed"):
            self.promotions.labels(name, outcome)
        # stream_scorer_model_info says which version serves; this says since when.
        self.live_since = Gauge(
            "stream_scorer_model_live_since_timestamp_seconds",
            "Unix time the version now serving started serving on this instance.",
            ["model_name", "model_version"],
            registry=registry,
        )
        self.live_since.labels(name, live.current.champion.version).set_to_current_time()

    def _swap_champion(self, model: LoadedModel) -> None:
        """Serve ``model`` as champion, keeping the set's shadows and canary (a promotion
        replaces the champion, not the evidence around it); a shadow or canary that is the new
        champion's own version leaves the set (it would only be compared with itself). A set
        replaced meanwhile (a canary rolled back) is read again, so that swap is not undone."""
        while True:
            current = self.live.current
            shadows = tuple(m for m in current.shadows if m.label != model.label)
            canary = current.canary
            fraction = current.canary_fraction
            if canary is not None and canary.label == model.label:
                canary, fraction = None, 0.0
            new = ModelSet(model, shadows, canary, fraction)
            if self.live.replace_if(current, new):
                return

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
        if self._rules is not None and self._registry is not None:
            self._watch = _Watch(
                target, live, time.monotonic() + self._rules.watch_period_s,
                self._counters(target), self._counters(live),
                self._counters(target).bisections,
            )  # fmt: skip
        self._swap_champion(model)
        self.live_since.clear()
        self.live_since.labels(self.name, target).set_to_current_time()
        self.promotions.labels(self.name, "applied").inc()
        log.info("model_applied", model=self.name, version=target, previous=live)
        self.repo.record(
            HistoryEntry(
                "applied", self.name, target, self.alias, live, f"instance:{self.instance}",
                f"{self.alias} moved to {target}", self.instance,
            )
        )  # fmt: skip
        return True

    def _sample(self, name: str, labels: dict[str, str] | None = None) -> float:
        assert self._registry is not None  # noqa: S101 - only called with rules and a registry
        return self._registry.get_sample_value(name, labels or {}) or 0.0

    def _counters(self, version: str) -> _Counters:
        labels = {"model_name": self.name, "model_version": version}
        score = {"stage": "score"}
        return _Counters(
            self._sample("stream_scorer_records_scored_total", labels),
            self._sample("stream_scorer_records_flagged_total", labels),
            self._sample("stream_scorer_stage_duration_seconds_sum", score),
            self._sample("stream_scorer_stage_duration_seconds_count", score),
            self._sample("stream_scorer_model_bisections_total"),
        )

    def _broken_rule(self, watch: _Watch, rules: RollbackRules) -> tuple[str, str] | None:
        """``(rule, why)`` for the first bound the new version breaks, else None."""
        now = self._counters(watch.version)
        scored = now.scored - watch.before.scored
        flagged = now.flagged - watch.before.flagged
        base = watch.baseline
        bisected = now.bisections - watch.bisections_at_swap
        if bisected > rules.max_bisections:
            return "bisections", f"{bisected:.0f} bisected batches > {rules.max_bisections}"
        if scored < rules.min_events:
            return None
        if base.scored >= rules.min_events:
            base_rate = base.flagged / base.scored
        else:  # too little seen of the previous version here: its card's holdout rate
            metrics = self.repo.card(self.name, watch.previous).raw.get("metrics") or {}
            base_rate = float(metrics.get("flagged_rate", 0.0))
        rate = flagged / scored
        if base_rate > 0 and rate > rules.alert_rate_ratio * base_rate:
            return "alert-rate", (
                f"alert rate {rate:.5f} over {scored:.0f} events > {rules.alert_rate_ratio:g} x "
                f"{base_rate:.5f} of {self.name}/{watch.previous}"
            )
        # The score stage's mean over the batches since the swap (all scored by the new one).
        batches = now.score_batches - base.score_batches
        if batches > 0 and base.score_batches > 0:
            mean_s = (now.score_s - base.score_s) / batches
            base_s = base.score_s / base.score_batches
            if mean_s > rules.latency_ratio * base_s:
                return "latency", (
                    f"score stage {mean_s * 1000:.2f} ms per batch > "
                    f"{rules.latency_ratio:g} x {base_s * 1000:.2f} ms"
                )
        return None

    def check_rules(self) -> bool:
        """Roll the last swap back if it breaks a rule within its watch period; True if so."""
        watch, rules = self._watch, self._rules
        if watch is None or rules is None:
            return False
        if time.monotonic() > watch.until or self.live.current.champion.version != watch.version:
            self._watch = None
            return False
        broken = self._broken_rule(watch, rules)
        if broken is None:
            return False
        rule, why = broken
        self._watch = None
        try:
            entry = rollback(
                self.repo, self.name, self.alias, by=f"rule:{rule}",
                reason=f"{why} (instance {self.instance})", action="auto-rollback",
                expect=watch.version,
            )  # fmt: skip
        except LifecycleError as exc:  # nothing to go back to: say so, keep serving
            log.error("auto_rollback_impossible", model=self.name, rule=rule, error=str(exc))
            return False
        log.warning("auto_rollback", model=self.name, version=watch.version, rule=rule, why=why,
                    done=entry is not None)  # fmt: skip
        return entry is not None

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.check_rules()
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
