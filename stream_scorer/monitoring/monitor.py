"""The one object the pipeline calls per batch, after the champion's decision.

:meth:`Monitor.observe` scores the set's shadows on the champion's decoded batch (decode is
shared), compares each with the champion, and counts the champion's and shadows' batches into
their drift windows. Nothing it does reaches what is published: a failure inside monitoring is
logged and counted (``stream_scorer_monitoring_errors_total``) and the batch goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import structlog
from prometheus_client import CollectorRegistry, Counter

from stream_scorer.monitoring.compare import ComparisonMetrics, Comparisons
from stream_scorer.monitoring.drift import DriftConfig, DriftMetrics, DriftMonitor
from stream_scorer.monitoring.shadow import ShadowBudget, ShadowMetrics, ShadowRunner
from stream_scorer.records import DecodedBatch

if TYPE_CHECKING:  # the pipeline imports this package: no import cycle at run time
    from stream_scorer.model_set import LoadedModel, ModelSet
    from stream_scorer.pipeline import ModelDecision

__all__ = ["Monitor"]

log = structlog.get_logger(__name__)


class Monitor:
    """Shadows, comparison and drift for each batch of the live model set."""

    def __init__(
        self,
        score: Callable[[LoadedModel, DecodedBatch], ModelDecision],
        registry: CollectorRegistry | None = None,
        drift: DriftConfig | None = None,
        budget: ShadowBudget | None = None,
        disagreements_per_minute: int = 10,
        drift_enabled: bool = True,
    ) -> None:
        """Monitor with the pipeline's scoring policy ``score``; metrics go to ``registry``.

        Args:
            score: ``score_and_flag`` (injected: the pipeline imports this module).
            registry: Prometheus registry (the service's; None: no metrics).
            drift: Window and threshold settings.
            budget: The shadows' time budget.
            disagreements_per_minute: Most ``model_disagreement`` log lines a minute.
            drift_enabled: Count drift windows at all.
        """
        self.drift = (
            DriftMonitor(drift, None if registry is None else DriftMetrics(registry))
            if drift_enabled
            else None
        )
        self.shadows = ShadowRunner(
            score, budget, None if registry is None else ShadowMetrics(registry)
        )
        self.comparisons = Comparisons(
            None if registry is None else ComparisonMetrics(registry), disagreements_per_minute
        )
        self._errors = (
            None
            if registry is None
            else Counter(
                "stream_scorer_monitoring_errors",
                "Batches on which monitoring failed (the batch itself was published).",
                registry=registry,
            )
        )
        self._set: ModelSet | None = None

    def observe(
        self,
        models: ModelSet,
        decoded: DecodedBatch,
        decision: ModelDecision,
        stage_s: Mapping[str, float],
    ) -> None:
        """Monitor one batch the champion of ``models`` decided; never raises."""
        try:
            self._observe(models, decoded, decision, stage_s)
        except Exception:  # monitoring must never stop what is published
            log.exception("monitoring_failed", models=models.describe())
            if self._errors is not None:
                self._errors.inc()

    def _observe(
        self,
        models: ModelSet,
        decoded: DecodedBatch,
        decision: ModelDecision,
        stage_s: Mapping[str, float],
    ) -> None:
        if models is not self._set:
            self._new_set(models)
        champion = models.champion
        champion_s = stage_s.get("featurize", 0.0) + stage_s.get("score", 0.0)
        if self.drift is not None:
            self.drift.observe(champion, decoded, decision)
        for shadow in models.shadows:
            shadow_decision = self.shadows.run(shadow, decoded, champion_s)
            if shadow_decision is None:
                continue
            self.comparisons.observe(champion, decision, shadow, shadow_decision, decoded)
            if self.drift is not None:
                self.drift.observe(shadow, decoded, shadow_decision)

    def _new_set(self, models: ModelSet) -> None:
        # A replaced set: forget the models that left it (bounded state and label sets).
        self._set = models
        if self.drift is not None:
            self.drift.retain(models)
        self.shadows.retain(models.shadows)
        self.comparisons.retain({(models.champion.label, s.label) for s in models.shadows})
        log.info("monitoring_models", **models.describe())
