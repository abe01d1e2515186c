"""Automatic rollback of a canary: the lifecycle's rules, canary against champion, same batches.

While a canary serves, both models score every whole batch (:class:`CanaryBatch`), so the
lifecycle's rollback rules (``[lifecycle] rollback_*``, :class:`RollbackRules`) can judge the
canary against the champion on exactly the same events, with no baseline period:

- ``bisections``: more canary batches than ``max_bisections`` had to be bisected (its runs
  failed), judged at once;
- ``alert-rate``: once the canary has scored ``min_events`` events, its alert rate on them is
  above ``alert_rate_ratio`` times the champion's on the same events (not judged while the
  champion flagged none: there is no rate to be a multiple of);
- ``latency``: from ``min_events`` on, the canary's score-stage time over the batches is above
  ``latency_ratio`` times the champion's over the same batches.

A broken bound removes the canary from the live set between batches
(:meth:`LiveModels.replace_if` with the set minus the canary: every event goes back to the
champion from the next batch on), logs ``canary_rolled_back``, increments
``stream_scorer_canary_rollbacks_total{model_name, model_version, rule}`` and, when the
lifecycle repository holds the canary's version, records an ``auto-rollback`` history entry by
``rule:<name>`` (``version`` the champion now deciding everything, ``previous`` the canary).
The rules hold for as long as the canary serves (a canary has no end to its watch period);
the canary comes back only with a new model set (a restart with the same settings, or a set
replaced by someone). With ``lifecycle.auto_rollback = false`` the counts are kept and nothing
is rolled back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from stream_scorer.lifecycle.repository import HistoryEntry
from stream_scorer.lifecycle.watcher import RollbackRules
from stream_scorer.model_set import LiveModels, ModelSet
from stream_scorer.monitoring.canary import CanaryBatch, routed
from stream_scorer.records import DecodedBatch

__all__ = ["CanaryMetrics", "CanaryRollback", "CanaryTally", "broken_rule"]

log = structlog.get_logger(__name__)


class CanaryMetrics:
    """The canary's share of decisions and its automatic rollbacks."""

    def __init__(self, registry: CollectorRegistry) -> None:
        """Create the metrics in ``registry``."""
        self.decided = Counter(
            "stream_scorer_canary_decided_records",
            "Events of batches with a canary, by the model that decided them (decided_by: "
            "champion or canary).",
            ["champion", "canary", "decided_by"], registry=registry,
        )  # fmt: skip
        self.fraction = Gauge(
            "stream_scorer_canary_fraction",
            "Configured share of events the live canary decides (0 once rolled back).",
            ["champion", "canary"], registry=registry,
        )  # fmt: skip
        self.rollbacks = Counter(
            "stream_scorer_canary_rollbacks",
            "Canaries removed from the live set by a rollback rule.",
            ["model_name", "model_version", "rule"], registry=registry,
        )  # fmt: skip


@dataclass(slots=True)
class CanaryTally:
    """What the canary and the champion did on the batches both scored, since it went live."""

    #: Events both gave a valid score.
    events: int = 0
    champion_flagged: int = 0
    canary_flagged: int = 0
    champion_score_s: float = 0.0
    canary_score_s: float = 0.0
    batches: int = 0
    #: Canary batches that had to be bisected.
    bisections: int = 0

    def add(self, whole: CanaryBatch) -> None:
        """Count one batch both models scored whole."""
        champion, canary = whole.champion, whole.canary
        _, ia, ib = np.intersect1d(champion.rows, canary.rows, assume_unique=True,
                                   return_indices=True)  # fmt: skip
        fx = np.zeros(len(champion.rows), dtype=bool)
        fx[champion.flagged] = True
        fy = np.zeros(len(canary.rows), dtype=bool)
        fy[canary.flagged] = True
        self.events += len(ia)
        self.champion_flagged += int(np.count_nonzero(fx[ia]))
        self.canary_flagged += int(np.count_nonzero(fy[ib]))
        self.champion_score_s += whole.champion_s.get("score", 0.0)
        self.canary_score_s += whole.canary_s.get("score", 0.0)
        self.batches += 1
        self.bisections += int(canary.bisected)


def broken_rule(tally: CanaryTally, rules: RollbackRules) -> tuple[str, str] | None:
    """``(rule, why)`` for the first bound the canary breaks, else None."""
    if tally.bisections > rules.max_bisections:
        return "bisections", f"{tally.bisections} bisected batches > {rules.max_bisections}"
    if tally.events < rules.min_events:
        return None
    champion_rate = tally.champion_flagged / tally.events
    canary_rate = tally.canary_flagged / tally.events
    if champion_rate > 0 and canary_rate > rules.alert_rate_ratio * champion_rate:
        return "alert-rate", (
            f"alert rate {canary_rate:.5f} > {rules.alert_rate_ratio:g} x the champion's "
            f"{champion_rate:.5f} over the same {tally.events} events"
        )
    if tally.champion_score_s > 0 and (
        tally.canary_score_s > rules.latency_ratio * tally.champion_score_s
    ):
        per_batch = 1000.0 / tally.batches
        return "latency", (
            f"score stage {tally.canary_score_s * per_batch:.2f} ms per batch > "
            f"{rules.latency_ratio:g} x the champion's {tally.champion_score_s * per_batch:.2f} "
            f"ms over the same {tally.batches} batches"
        )
    return None


class CanaryRollback:
    """Counts the live canary's batches and takes it out when it breaks a rule."""

    def __init__(
        self,
        live: LiveModels | None,
        rules: RollbackRules | None,
        metrics: CanaryMetrics | None = None,
        record: Callable[[HistoryEntry], None] | None = None,
        instance: str = "",
    ) -> None:
        """Judge by ``rules`` (None: count only) and remove the canary from ``live``.

        Args:
            live: The set the pipeline reads (None: nothing can be rolled back).
            rules: The lifecycle's rollback bounds, or None when auto-rollback is off.
            metrics: Where the share and the rollbacks are counted.
            record: Appends a history entry (the lifecycle repository's ``record``), or None
                when the repository does not hold the canary.
            instance: This instance's id, for the history.
        """
        self._live = live
        self.rules = rules
        self._metrics = metrics
        self._record = record
        self._instance = instance
        self._key: tuple[str, str] | None = None
        self.tally = CanaryTally()
        #: ``(canary label, rule)`` of every rollback done, oldest first.
        self.rolled_back: list[tuple[str, str]] = []

    def observe(self, models: ModelSet, decoded: DecodedBatch, whole: CanaryBatch) -> str | None:
        """Count one batch of ``models`` (which has a canary); the broken rule's name if this
        batch made the canary go, else None."""
        canary = models.canary
        assert canary is not None  # noqa: S101 - called only for batches with a canary
        key = (models.champion.label, canary.label)
        if key != self._key:  # a new canary (or champion): a fresh tally
            self._key, self.tally = key, CanaryTally()
            if self._metrics is not None:
                self._metrics.fraction.labels(*key).set(models.canary_fraction)
        self.tally.add(whole)
        if self._metrics is not None:
            to_canary = int(np.count_nonzero(routed(decoded.records, models.canary_fraction)))
            self._metrics.decided.labels(*key, "canary").inc(to_canary)
            self._metrics.decided.labels(*key, "champion").inc(len(decoded.records) - to_canary)
        if self.rules is None or self._live is None:
            return None
        broken = broken_rule(self.tally, self.rules)
        if broken is None:
            return None
        rule, why = broken
        return rule if self._roll_back(models, rule, why) else None

    def _roll_back(self, models: ModelSet, rule: str, why: str) -> bool:
        assert self._live is not None and models.canary is not None  # noqa: S101 - checked
        canary, champion = models.canary, models.champion
        without = dataclasses.replace(models, canary=None, canary_fraction=0.0)
        if not self._live.replace_if(models, without):
            # Someone replaced the set first (a promotion): that set is judged afresh.
            log.info("canary_rollback_superseded", canary=canary.label, rule=rule)
            return False
        self.rolled_back.append((canary.label, rule))
        tally = self.tally
        log.warning("canary_rolled_back", canary=canary.label, champion=champion.label,
                    rule=rule, why=why, events=tally.events)  # fmt: skip
        if self._metrics is not None:
            self._metrics.rollbacks.labels(canary.name, canary.version, rule).inc()
            self._metrics.fraction.labels(champion.label, canary.label).set(0.0)
        if self._record is not None:
            entry = HistoryEntry(
                "auto-rollback", canary.name, champion.version, None, canary.version,
                f"rule:{rule}",
                f"canary {canary.label} removed, {champion.label} decides every event: {why}"
                + (f" (instance {self._instance})" if self._instance else ""),
                self._instance or None,
                detail={"role": "canary", "canary": canary.label, "champion": champion.label,
                        "canary_fraction": models.canary_fraction, "events": tally.events,
                        "champion_flagged": tally.champion_flagged,
                        "canary_flagged": tally.canary_flagged},
            )  # fmt: skip
            try:
                self._record(entry)
            except Exception as exc:  # the rollback stands; only its record is missing
                log.error("canary_rollback_not_recorded", canary=canary.label, error=str(exc))
        return True
