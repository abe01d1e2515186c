"""The one object the pipeline calls per batch, after the champion's decision.

:meth:`Monitor.observe` scores the set's shadows on the champion's decoded batch (decode is
shared), compares each with the champion, and counts the champion's and shadows' batches into
their drift windows. Nothing it does reaches what is published: a failure inside monitoring is
logged and counted (``stream_scorer_monitoring_errors_total``) and the batch goes on.

Drift has a cost cap: it counts a batch only while its time so far is at most
``drift_max_share`` of the pipeline's own time so far (decode to encode); past that, whole
batches are skipped (``stream_scorer_drift_records_skipped_total``) until it is back within
its share. Which batches are skipped depends on timing, never on their content, so the
windows remain unbiased samples of the stream; ``drift_max_share = 1`` counts every batch.

With a labels topic, it also records each batch's decisions (the champion's rows and the
canary's share) into the label join (:mod:`stream_scorer.monitoring.labels`), which matches
them with labels as they arrive.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import structlog
from prometheus_client import CollectorRegistry, Counter

from stream_scorer.monitoring.canary import CanaryBatch
from stream_scorer.monitoring.canary_rollback import CanaryRollback
from stream_scorer.monitoring.compare import ComparisonMetrics, Comparisons
from stream_scorer.monitoring.drift import DriftConfig, DriftMetrics, DriftMonitor
from stream_scorer.monitoring.labels import LabelJoin, event_hashes
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
        drift_max_share: float = 0.05,
        canary: CanaryRollback | None = None,
        labels: LabelJoin | None = None,
        id_field: str | None = None,
    ) -> None:
        """Monitor with the pipeline's scoring policy ``score``; metrics go to ``registry``.

        Args:
            score: ``score_and_flag`` (injected: the pipeline imports this module).
            registry: Prometheus registry (the service's; None: no metrics).
            drift: Window and threshold settings.
            budget: The shadows' time budget.
            disagreements_per_minute: Most ``model_disagreement`` log lines a minute.
            drift_enabled: Count drift windows at all.
            drift_max_share: Most drift time as a share of the pipeline's time (1: no cap).
            canary: Counts the canary's batches and applies its rollback rules.
            labels: The label join the deciding models' rows are recorded into (None: off).
            id_field: Input field holding the event id (None: ``topic[partition]@offset``),
                the id alerts and score records carry and labels name.
        """
        self.canary = canary
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
        self._skipped = (
            None
            if registry is None
            else Counter(
                "stream_scorer_drift_records_skipped",
                "Events not counted into drift windows, to keep drift within its time share.",
                registry=registry,
            )
        )
        self.labels = labels
        self._id_field = id_field
        self._labels_set: ModelSet | None = None
        self._set: ModelSet | None = None
        self._drift_max_share = drift_max_share
        self._drift_s = 0.0
        self._pipeline_s = 0.0
        #: Events drift counted and skipped since start.
        self.drift_counted = 0
        self.drift_skipped = 0

    @property
    def needed_fields(self) -> tuple[str, ...]:
        """Input fields the monitor reads beyond the models' own: the event id, for labels."""
        return () if self.labels is None or self._id_field is None else (self._id_field,)

    def observe(
        self,
        models: ModelSet,
        decoded: DecodedBatch,
        decision: ModelDecision,
        stage_s: Mapping[str, float],
        canary: CanaryBatch | None = None,
        others: Sequence[tuple[LoadedModel, ModelDecision]] = (),
    ) -> list[tuple[LoadedModel, ModelDecision]]:
        """Monitor one batch the champion of ``models`` decided; never raises.

        With a canary, ``canary`` holds both models' decisions on the whole batch: the
        champion's whole decision is what shadows and drift see, and the canary is compared
        and judged by its rollback rules like a challenger. ``others`` are the models that
        decided a share of the batch besides the champion (the canary's share), for the label
        join. Monitoring and the label join are guarded apart: one failing does not skip the
        other.

        Returns:
            The shadows scored on this batch and their decisions (none once dropped), for the
            optional shadow topic.
        """
        shadowed: list[tuple[LoadedModel, ModelDecision]] = []
        try:
            shadowed = self._observe(models, decoded, decision, stage_s, canary)
        except Exception:  # monitoring must never stop what is published
            log.exception("monitoring_failed", models=models.describe())
            self.count_error()
        if self.labels is not None:
            try:
                self._record_labels(models, decoded, [(models.champion, decision), *others])
            except Exception:  # the label join must never stop what is published
                log.exception("monitoring_failed", models=models.describe())
                self.count_error()
        return shadowed

    def count_error(self) -> None:
        """Count one batch on which monitoring failed (``stream_scorer_monitoring_errors``)."""
        if self._errors is not None:
            self._errors.inc()

    def _observe(
        self,
        models: ModelSet,
        decoded: DecodedBatch,
        decision: ModelDecision,
        stage_s: Mapping[str, float],
        canary: CanaryBatch | None,
    ) -> list[tuple[LoadedModel, ModelDecision]]:
        if models is not self._set:
            self._new_set(models)
        champion = models.champion
        champion_s = stage_s.get("featurize", 0.0) + stage_s.get("score", 0.0)
        if canary is not None:  # the champion's own time, not the canary's added to it
            champion_s = canary.champion_s.get("featurize", 0.0) + canary.champion_s.get(
                "score", 0.0
            )
        self._pipeline_s += sum(stage_s.values())
        drifts = [(champion, decision)]
        if canary is not None and models.canary is not None:
            drifts = self._observe_canary(models, decoded, canary)
            decision = canary.champion
        shadowed: list[tuple[LoadedModel, ModelDecision]] = []
        for shadow in models.shadows:
            shadow_decision = self.shadows.run(shadow, decoded, champion_s)
            if shadow_decision is None:
                continue
            self.comparisons.observe(champion, decision, shadow, shadow_decision, decoded)
            drifts.append((shadow, shadow_decision))
            shadowed.append((shadow, shadow_decision))
        if self.drift is None:
            return shadowed
        if self._drift_s > self._drift_max_share * self._pipeline_s:
            self.drift_skipped += len(decoded.records)
            if self._skipped is not None:
                self._skipped.inc(len(decoded.records))
            return shadowed
        tick = time.perf_counter()
        for model, model_decision in drifts:
            self.drift.observe(model, decoded, model_decision)
        self._drift_s += time.perf_counter() - tick
        self.drift_counted += len(decoded.records)
        return shadowed

    def _observe_canary(
        self, models: ModelSet, decoded: DecodedBatch, canary: CanaryBatch
    ) -> list[tuple[LoadedModel, ModelDecision]]:
        """Compare the canary with the champion on the whole batch and apply its rules; the
        two whole decisions, for drift."""
        assert models.canary is not None  # noqa: S101 - checked by the caller
        self.comparisons.observe(
            models.champion, canary.champion, models.canary, canary.canary, decoded
        )
        if self.canary is not None:
            self.canary.observe(models, decoded, canary)
        return [(models.champion, canary.champion), (models.canary, canary.canary)]

    def _record_labels(
        self,
        models: ModelSet,
        decoded: DecodedBatch,
        deciders: Sequence[tuple[LoadedModel, ModelDecision]],
    ) -> None:
        assert self.labels is not None  # noqa: S101 - the caller checks
        if models is not self._labels_set:
            self._labels_set = models
            self.labels.retain({
                (m.name, m.version)
                for m in (models.champion, models.canary)
                if m is not None
            })  # fmt: skip
        for model, decided in deciders:
            flagged = np.zeros(len(decided.rows), dtype=np.bool_)
            flagged[decided.flagged] = True
            self.labels.record(
                model.name,
                model.version,
                event_hashes(decoded, decided.rows, self._id_field),
                flagged,
                decided.scores,
            )

    def _new_set(self, models: ModelSet) -> None:
        # A replaced set: forget the models that left it (bounded state and label sets).
        self._set = models
        if self.drift is not None:
            self.drift.retain(models)
        self.shadows.retain(models.shadows)
        challengers = [*models.shadows, *([] if models.canary is None else [models.canary])]
        self.comparisons.retain({(models.champion.label, c.label) for c in challengers})
        log.info("monitoring_models", **models.describe())
