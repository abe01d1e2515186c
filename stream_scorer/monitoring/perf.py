"""Performance before labels: expected precision and recall at the threshold (CBPE-style).

If the scores are calibrated probabilities (an event scored 0.9 is fraud 9 times in 10), the
expected number of true positives among the flagged events is the sum of their scores, and the
expected number of positives among all scored events is the sum of all scores. So, per window:

- expected precision = Σ score over flagged / number flagged,
- expected recall = Σ score over flagged / Σ score over all scored.

Assumptions, as NannyML's CBPE states them: the scores are calibrated on the live population,
and only the inputs' distribution has moved (covariate shift), not the relation between inputs
and outcome (concept drift, which no label-free estimate can see). How well the first holds is
recorded in the card (``reference.calibration``: expected vs realized precision and recall on
the holdout). For ``fraud/1`` the estimate runs high, its boosted trees being over-confident at
the top: on the holdout 0.94 expected against 0.80 realized precision (the threshold was chosen
there, at precision 0.8), on 100,000 fresh synthetic events 0.93-0.94 against 0.80-0.86, and
recall 0.40-0.42 against 0.35-0.37 (twelve seeds, docs/model-monitoring.md). That gap is bias,
not noise, so the stated tolerance is one-sided: the estimate is above the realized value by at
most 0.15 in precision and 0.08 in recall. Read the expected precision as an upper bound.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge

__all__ = ["PerformanceMetrics", "expected_performance"]


def expected_performance(
    flagged: int, flagged_score_sum: float, score_sum: float
) -> tuple[float | None, float | None]:
    """``(expected precision, expected recall)``; None where it is undefined (nothing flagged,
    or no expected positive at all)."""
    precision = flagged_score_sum / flagged if flagged else None
    recall = flagged_score_sum / score_sum if score_sum > 0 else None
    return precision, recall


class PerformanceMetrics:
    """Expected precision and recall per model version, for the last closed window."""

    def __init__(self, registry: CollectorRegistry) -> None:
        """Create the gauges in ``registry``."""
        model = ["model_name", "model_version"]
        self.precision = Gauge(
            "stream_scorer_expected_precision",
            "Precision at the threshold expected from the scores (calibrated scores assumed).",
            model, registry=registry,
        )  # fmt: skip
        self.recall = Gauge(
            "stream_scorer_expected_recall",
            "Recall at the threshold expected from the scores (calibrated scores assumed).",
            model, registry=registry,
        )  # fmt: skip

    def set(self, name: str, version: str, precision: float | None, recall: float | None) -> None:
        """Export one window's estimates (an undefined one is left as it was)."""
        if precision is not None:
            self.precision.labels(name, version).set(precision)
        if recall is not None:
            self.recall.labels(name, version).set(recall)
