"""Champion against challenger on the same events: agreement, confusion, score differences.

For each batch both scored, the rows both gave a valid score are aligned (``np.intersect1d``),
and running sums are kept per (champion, challenger) pair: the confusion of decisions (both
flag, only the champion, only the challenger, neither), the sum of absolute score differences
and the five sums of a Pearson correlation (so the correlation is exact over everything seen,
in O(1) memory). Gauges are refreshed once per batch; the most different decisions of a batch
are logged, at most ``disagreements_per_minute`` lines a minute (a token bucket), so a
challenger that disagrees on everything cannot flood the log.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from stream_scorer.records import DecodedBatch

if TYPE_CHECKING:  # the pipeline imports this package: no import cycle at run time
    from stream_scorer.model_set import LoadedModel
    from stream_scorer.pipeline import ModelDecision

__all__ = ["OUTCOMES", "Comparison", "ComparisonMetrics", "Comparisons"]

log = structlog.get_logger(__name__)

#: The confusion of decisions, as label values of ``comparison_decisions_total``.
OUTCOMES = ("both", "champion_only", "challenger_only", "neither")


class ComparisonMetrics:
    """Comparison series labelled by ``champion`` and ``challenger`` (``name/version``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        """Create the metrics in ``registry``."""
        pair = ["champion", "challenger"]
        self.decisions = Counter(
            "stream_scorer_comparison_decisions",
            "Events both models scored, by what each decided (both, champion_only, "
            "challenger_only, neither).",
            [*pair, "outcome"], registry=registry,
        )  # fmt: skip
        self.agreement = Gauge(
            "stream_scorer_comparison_agreement_ratio",
            "Share of events on which champion and challenger decided the same.",
            pair, registry=registry,
        )  # fmt: skip
        self.abs_diff = Gauge(
            "stream_scorer_comparison_score_abs_diff_mean",
            "Mean absolute difference of the two models' scores.",
            pair, registry=registry,
        )  # fmt: skip
        self.correlation = Gauge(
            "stream_scorer_comparison_score_correlation",
            "Pearson correlation of the two models' scores.",
            pair, registry=registry,
        )  # fmt: skip
        self.alert_ratio = Gauge(
            "stream_scorer_comparison_alert_ratio",
            "Share of compared events each model flags (role: champion or challenger).",
            [*pair, "role"], registry=registry,
        )  # fmt: skip

    def forget(self, champion: str, challenger: str) -> None:
        """Remove every series of one pair."""
        for outcome in OUTCOMES:
            with contextlib.suppress(KeyError):  # never observed
                self.decisions.remove(champion, challenger, outcome)
        for gauge in (self.agreement, self.abs_diff, self.correlation):
            with contextlib.suppress(KeyError):
                gauge.remove(champion, challenger)
        for role in ("champion", "challenger"):
            with contextlib.suppress(KeyError):
                self.alert_ratio.remove(champion, challenger, role)


@dataclass(slots=True)
class Comparison:
    """Running comparison of one challenger with the champion."""

    champion: str
    challenger: str
    both: int = 0
    champion_only: int = 0
    challenger_only: int = 0
    neither: int = 0
    abs_diff_sum: float = 0.0
    sx: float = 0.0
    sy: float = 0.0
    sxx: float = 0.0
    syy: float = 0.0
    sxy: float = 0.0

    @property
    def n(self) -> int:
        """Events both models scored."""
        return self.both + self.champion_only + self.challenger_only + self.neither

    @property
    def agreement(self) -> float:
        """Share of events decided the same way (1.0 before any event)."""
        return (self.both + self.neither) / self.n if self.n else 1.0

    @property
    def mean_abs_diff(self) -> float:
        """Mean absolute score difference."""
        return self.abs_diff_sum / self.n if self.n else 0.0

    @property
    def correlation(self) -> float:
        """Pearson correlation of the scores (NaN while either is constant)."""
        n = self.n
        if n < 2:
            return math.nan
        cov = self.sxy - self.sx * self.sy / n
        vx = self.sxx - self.sx**2 / n
        vy = self.syy - self.sy**2 / n
        if vx <= 0 or vy <= 0:
            return math.nan
        return cov / math.sqrt(vx * vy)

    def alert_rates(self) -> tuple[float, float]:
        """(champion, challenger) share of compared events flagged."""
        if not self.n:
            return 0.0, 0.0
        return (self.both + self.champion_only) / self.n, (
            self.both + self.challenger_only
        ) / self.n

    def summary(self) -> dict[str, Any]:
        """The comparison as plain values (for logs and ``models compare``)."""
        champion_rate, challenger_rate = self.alert_rates()
        return {
            "champion": self.champion,
            "challenger": self.challenger,
            "events": self.n,
            "agreement": round(self.agreement, 6),
            "confusion": {o: getattr(self, o) for o in OUTCOMES},
            "mean_abs_score_diff": round(self.mean_abs_diff, 6),
            "score_correlation": None
            if math.isnan(self.correlation)
            else round(self.correlation, 6),
            "alert_rate": {"champion": champion_rate, "challenger": challenger_rate},
        }


class Comparisons:
    """Every challenger's comparison with the champion, updated per batch."""

    def __init__(
        self,
        metrics: ComparisonMetrics | None = None,
        disagreements_per_minute: int = 10,
        clock_s: Callable[[], float] = time.monotonic,
    ) -> None:
        """Export to ``metrics`` when given; log at most ``disagreements_per_minute`` of the
        largest disagreements."""
        self._metrics = metrics
        self._rate = max(0, disagreements_per_minute)
        self._clock_s = clock_s
        self._tokens = float(self._rate)
        self._refilled_s = clock_s()
        self.pairs: dict[tuple[str, str], Comparison] = {}
        #: Disagreement log lines suppressed by the rate limit.
        self.suppressed = 0

    def observe(
        self,
        champion: LoadedModel,
        champion_decision: ModelDecision,
        challenger: LoadedModel,
        challenger_decision: ModelDecision,
        decoded: DecodedBatch,
    ) -> Comparison:
        """Add one batch both models scored; returns the updated comparison."""
        key = (champion.label, challenger.label)
        comparison = self.pairs.get(key)
        if comparison is None:
            comparison = self.pairs[key] = Comparison(*key)
        rows, ia, ib = np.intersect1d(
            champion_decision.rows, challenger_decision.rows, assume_unique=True,
            return_indices=True,
        )  # fmt: skip
        x = champion_decision.scores[ia]
        y = challenger_decision.scores[ib]
        fx = np.zeros(len(champion_decision.rows), dtype=bool)
        fx[champion_decision.flagged] = True
        fy = np.zeros(len(challenger_decision.rows), dtype=bool)
        fy[challenger_decision.flagged] = True
        a, b = fx[ia], fy[ib]
        comparison.both += int(np.count_nonzero(a & b))
        comparison.champion_only += int(np.count_nonzero(a & ~b))
        comparison.challenger_only += int(np.count_nonzero(~a & b))
        comparison.neither += int(np.count_nonzero(~a & ~b))
        diff = np.abs(x - y)
        comparison.abs_diff_sum += float(diff.sum())
        comparison.sx += float(x.sum())
        comparison.sy += float(y.sum())
        comparison.sxx += float(x @ x)
        comparison.syy += float(y @ y)
        comparison.sxy += float(x @ y)
        self._export(comparison, a, b)
        disagree = np.flatnonzero(a != b)
        if disagree.size:
            self._log_disagreements(comparison, decoded, rows, x, y, disagree, diff)
        return comparison

    def retain(self, labels: set[tuple[str, str]]) -> None:
        """Forget pairs not in ``labels`` (after a model set is replaced), and their series, so
        the label sets stay bounded."""
        for key in [k for k in self.pairs if k not in labels]:
            del self.pairs[key]
            if self._metrics is not None:
                self._metrics.forget(*key)

    def _export(self, c: Comparison, a: Any, b: Any) -> None:
        m = self._metrics
        if m is None:
            return
        pair = (c.champion, c.challenger)
        m.decisions.labels(*pair, "both").inc(int(np.count_nonzero(a & b)))
        m.decisions.labels(*pair, "champion_only").inc(int(np.count_nonzero(a & ~b)))
        m.decisions.labels(*pair, "challenger_only").inc(int(np.count_nonzero(~a & b)))
        m.decisions.labels(*pair, "neither").inc(int(np.count_nonzero(~a & ~b)))
        m.agreement.labels(*pair).set(c.agreement)
        m.abs_diff.labels(*pair).set(c.mean_abs_diff)
        if not math.isnan(c.correlation):
            m.correlation.labels(*pair).set(c.correlation)
        champion_rate, challenger_rate = c.alert_rates()
        m.alert_ratio.labels(*pair, "champion").set(champion_rate)
        m.alert_ratio.labels(*pair, "challenger").set(challenger_rate)

    def _log_disagreements(
        self,
        c: Comparison,
        decoded: DecodedBatch,
        rows: Any,
        x: Any,
        y: Any,
        disagree: Any,
        diff: Any,
    ) -> None:
        now = self._clock_s()
        self._tokens = min(
            float(self._rate), self._tokens + (now - self._refilled_s) * self._rate / 60.0
        )
        self._refilled_s = now
        allowed = min(int(self._tokens), disagree.size)
        self.suppressed += disagree.size - allowed
        if not allowed:
            return
        self._tokens -= allowed
        # The largest score differences first: the disagreements worth a look.
        top = disagree[np.argsort(-diff[disagree], kind="stable")[:allowed]]
        for i in top.tolist():
            source = decoded.records[int(rows[i])]
            log.info(
                "model_disagreement",
                champion=c.champion,
                challenger=c.challenger,
                record=f"{source.topic}[{source.partition}]@{source.offset}",
                champion_score=round(float(x[i]), 6),
                challenger_score=round(float(y[i]), 6),
            )
