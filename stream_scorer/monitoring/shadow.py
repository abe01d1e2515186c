"""Shadow models: scored on the champion's decoded batch, never published, dropped when slow.

A shadow reuses the batch the champion's decode produced (decode is the dearest stage and is
shared); it is featurized and scored with the same policy (:func:`score_and_flag`), and its
decision goes to the comparison and to drift, never to the alert topic. Its time is measured
per batch against a budget: ``max_ratio`` times the champion's featurize-and-score time of that
batch, and never less than ``min_budget_ms`` (a tiny batch says little about speed). A shadow
over budget for ``strikes`` consecutive batches, or one that raises anything at all, is dropped
with a warning until the model set is replaced: so a shadow slows the champion by at most
``strikes`` batches of its own time, and a failing one costs one batch of it. (Scoring is
synchronous, in the pipeline's thread, so the budget is enforced by dropping, not by
interrupting a run.)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog
from prometheus_client import CollectorRegistry, Counter

from stream_scorer.records import DecodedBatch

if TYPE_CHECKING:  # the pipeline imports this package: no import cycle at run time
    from stream_scorer.model_set import LoadedModel
    from stream_scorer.pipeline import ModelDecision

__all__ = ["ShadowBudget", "ShadowMetrics", "ShadowRunner"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class ShadowBudget:
    """How much time a shadow may take per batch, and how often it may overrun."""

    #: A batch is over budget above this multiple of the champion's featurize + score time ...
    max_ratio: float = 2.0
    #: ... or, when that is smaller, above this many milliseconds.
    min_budget_ms: float = 5.0
    #: Consecutive batches over budget before the shadow is dropped.
    strikes: int = 3


class ShadowMetrics:
    """Shadow scoring series, labelled by model name and version."""

    def __init__(self, registry: CollectorRegistry) -> None:
        """Create the metrics in ``registry``."""
        model = ["model_name", "model_version"]
        self.seconds = Counter(
            "stream_scorer_shadow_seconds",
            "Time spent featurizing and scoring with the shadow model.",
            model, registry=registry,
        )  # fmt: skip
        self.scored = Counter(
            "stream_scorer_shadow_records_scored",
            "Events the shadow model scored (never published).",
            model, registry=registry,
        )  # fmt: skip
        self.flagged = Counter(
            "stream_scorer_shadow_records_flagged",
            "Events the shadow model would have flagged.",
            model, registry=registry,
        )  # fmt: skip
        self.dropped = Counter(
            "stream_scorer_shadow_dropped",
            "Shadow models dropped, by reason (slow, failed).",
            [*model, "reason"], registry=registry,
        )  # fmt: skip


@dataclass(slots=True)
class _State:
    strikes: int = 0
    dropped: str | None = None


class ShadowRunner:
    """Scores the set's shadows on a decoded batch, within their budget."""

    def __init__(
        self,
        score: Callable[[LoadedModel, DecodedBatch], ModelDecision],
        budget: ShadowBudget | None = None,
        metrics: ShadowMetrics | None = None,
        clock_s: Callable[[], float] = time.perf_counter,
    ) -> None:
        """Score with ``score`` (the pipeline's policy); export to ``metrics`` when given."""
        self._score = score
        self.budget = budget or ShadowBudget()
        self._metrics = metrics
        self._clock_s = clock_s
        self._states: dict[str, _State] = {}

    def dropped(self) -> dict[str, str]:
        """Dropped shadows (``name/version``) and why."""
        return {k: s.dropped for k, s in self._states.items() if s.dropped is not None}

    def retain(self, shadows: tuple[LoadedModel, ...]) -> None:
        """Forget shadows no longer in the set; a replaced set gives a dropped shadow a new
        chance (a new set is a new decision by whoever replaced it)."""
        keep = {m.label for m in shadows}
        for label in [k for k in self._states if k not in keep]:
            del self._states[label]

    def run(
        self, shadow: LoadedModel, decoded: DecodedBatch, champion_s: float
    ) -> ModelDecision | None:
        """The shadow's decision on ``decoded``, or None when it is (or is now) dropped."""
        state = self._states.setdefault(shadow.label, _State())
        if state.dropped is not None:
            return None
        tick = self._clock_s()
        try:
            decision = self._score(shadow, decoded)
        except Exception as exc:  # no shadow failure may reach the champion
            self._drop(shadow, state, "failed", error=f"{type(exc).__name__}: {exc}"[:300])
            return None
        spent = self._clock_s() - tick
        budget_s = max(self.budget.max_ratio * champion_s, self.budget.min_budget_ms / 1000.0)
        if self._metrics is not None:
            labels = (shadow.name, shadow.version)
            self._metrics.seconds.labels(*labels).inc(spent)
            self._metrics.scored.labels(*labels).inc(len(decision.rows))
            self._metrics.flagged.labels(*labels).inc(len(decision.flagged))
        if spent > budget_s:
            state.strikes += 1
            if state.strikes >= self.budget.strikes:
                self._drop(
                    shadow, state, "slow", spent_ms=round(spent * 1e3, 3),
                    budget_ms=round(budget_s * 1e3, 3), batches_over=state.strikes,
                )  # fmt: skip
        else:
            state.strikes = 0
        return decision

    def _drop(self, shadow: LoadedModel, state: _State, reason: str, **why: object) -> None:
        state.dropped = reason
        if self._metrics is not None:
            self._metrics.dropped.labels(shadow.name, shadow.version, reason).inc()
        log.warning("shadow_dropped", model=shadow.label, reason=reason, **why)
