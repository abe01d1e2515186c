"""Performance before labels: expected precision and recall from the scores (CBPE-style)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from stream_scorer.devtools.generate import TransactionGenerator
from stream_scorer.model_set import load_model
from stream_scorer.monitoring.drift import DriftConfig, DriftMetrics, DriftMonitor
from stream_scorer.monitoring.perf import expected_performance
from stream_scorer.pipeline import score_and_flag
from stream_scorer.records import DecodedBatch, Event, SourceRecord

REPO_ROOT = Path(__file__).resolve().parents[2]
READER = json.loads((REPO_ROOT / "schemas" / "transaction.avsc").read_text(encoding="utf-8"))
N = 100_000
#: The stated tolerance of the estimate for fraud/1 on fresh synthetic data: one-sided, as its
#: scores run high at the top (the card's calibration check shows the same on the holdout); over
#: twelve seeds the estimate exceeded the realized value by 0.08-0.14 (precision) and 0.04-0.07
#: (recall), see docs/model-monitoring.md.
PRECISION_TOLERANCE = 0.15
RECALL_TOLERANCE = 0.08


def test_expected_performance_is_the_calibrated_expectation() -> None:
    """Σ flagged scores / flagged and Σ flagged scores / Σ scores; undefined when empty."""
    assert expected_performance(2, 1.5, 3.0) == (0.75, 0.5)
    assert expected_performance(0, 0.0, 3.0) == (None, 0.0)
    assert expected_performance(0, 0.0, 0.0) == (None, None)


def test_estimate_is_within_the_stated_tolerance_of_the_realized_precision() -> None:
    """On 100,000 fresh synthetic events (which carry labels) the window's expected precision
    and recall are within the stated tolerance of the realized ones, and are exported."""
    model = load_model(REPO_ROOT / "models" / "fraud" / "1", READER)
    events, labels = TransactionGenerator(seed=555, fraud_rate=0.01).generate(N)
    registry = CollectorRegistry()
    monitor = DriftMonitor(DriftConfig(window_events=N, window_seconds=0), DriftMetrics(registry))
    tp = flagged = 0
    report = None
    y = np.asarray(labels)
    for start in range(0, N, 5000):
        chunk = [
            Event(SourceRecord("t", 0, start + i, None, None), e)
            for i, e in enumerate(events[start : start + 5000])
        ]
        decoded = DecodedBatch.from_events(chunk, model.features.fields)
        decision = score_and_flag(model, decoded)
        hits = y[start + decision.rows[decision.flagged]]
        tp += int(hits.sum())
        flagged += len(hits)
        report = monitor.observe(model, decoded, decision) or report
    assert report is not None and report.expected_precision is not None
    assert report.expected_recall is not None
    realized_precision, realized_recall = tp / flagged, tp / int(y.sum())
    print(
        f"expected precision {report.expected_precision:.3f} vs realized "
        f"{realized_precision:.3f}; recall {report.expected_recall:.3f} vs {realized_recall:.3f}"
    )
    # Above the realized value (the known over-confidence), and by no more than stated.
    assert 0 <= report.expected_precision - realized_precision <= PRECISION_TOLERANCE
    assert 0 <= report.expected_recall - realized_recall <= RECALL_TOLERANCE
    labels_ = {"model_name": "fraud", "model_version": "1"}
    exported = registry.get_sample_value("stream_scorer_expected_precision", labels_)
    assert exported == pytest.approx(report.expected_precision)


def test_card_records_its_calibration_check() -> None:
    """fraud/1's card carries expected vs realized precision and recall on the holdout."""
    card = json.loads((REPO_ROOT / "models/fraud/1/model.json").read_text(encoding="utf-8"))
    check = card["reference"]["calibration"]
    assert check["threshold"] == card["threshold"]
    assert check["realized_precision"] == card["metrics"]["precision_at_threshold"]
    assert 0 < check["expected_precision"] <= 1 and 0 < check["expected_recall"] <= 1
