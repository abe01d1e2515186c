"""bench/report.py: the promotion, monitoring and scores-topic rows and their targets."""

from __future__ import annotations

from typing import Any

from bench.report import evaluate_targets, format_tables


def _promotion(ratio: float | None) -> dict[str, Any]:
    """One promotion run's row as bench/promotion.summarize gives it."""
    return {
        "window_s": 60.0,
        "before": {"count": 1500, "p99_ms": 40.0},
        "around": {"count": 1490, "p99_ms": None if ratio is None else 40.0 * ratio},
        "p99_ratio": ratio,
        "alerts_by_version": {"1": 2200, "2": 790},
        "applied_after_s": 1.2,
        "serving": ["fraud/2"],
        "rolled_back": False,
        "achieved_offered_events_per_s": 4870.2,
    }


RESULTS: dict[str, Any] = {
    "promotion": {"5000": _promotion(1.2), "20000": _promotion(2.0)},
    "monitoring": {
        "summary": {
            "rounds": 3,
            "median_events_per_s": {"plain": 100_000.0, "drift": 97_000.0, "shadow": 80_000.0},
            "vs_plain": {
                "drift": {"ratio_of_medians": 0.97, "round_ratios": [0.96, 0.97, 0.98]},
                "shadow": {"ratio_of_medians": 0.8, "round_ratios": [0.8, 0.79, 0.81]},
            },
            "drift_cost": 0.03,
            "shadow_extra_us_per_event": 2.5,
            "model_us_per_event": 3.0,
            "shadow_cost_vs_model": 0.833,
            "shadow_own_us_per_event": 2.75,
            "canary_cost": None,
            "canary_fraction": 0.1,
        }
    },
    "scores_topic": {
        "repeats": 2,
        "median_events_per_s": {"alerts-only": 100_000.0, "scores-on": 65_000.0},
        "ratio": 0.65,
        "target_ratio": 0.7,
    },
}


def _verdicts(results: dict[str, Any]) -> dict[str, tuple[str, float | None]]:
    return {v["id"]: (v["status"], v["measured"]) for v in evaluate_targets(results)}


def test_targets_of_the_new_phases_pass_and_miss_on_their_thresholds() -> None:
    """1.2x passes the 1.5x promotion target and 2.0x misses; 3 % drift and 0.83x shadow
    pass; 0.65 misses the scores topic's 0.70."""
    verdicts = _verdicts(RESULTS)
    assert verdicts["promotion_5k"] == ("PASS", 1.2)
    assert verdicts["promotion_20k"] == ("MISS", 2.0)
    assert verdicts["drift_cost"] == ("PASS", 3.0)
    assert verdicts["shadow_cost"] == ("PASS", 0.833)
    assert verdicts["scores_topic"] == ("MISS", 0.65)


def test_targets_of_phases_not_run_are_not_applicable() -> None:
    """A phase skipped (or failed) gives n/a, never a made-up pass."""
    verdicts = _verdicts({})
    for target in ("promotion_5k", "promotion_20k", "drift_cost", "shadow_cost", "scores_topic"):
        assert verdicts[target] == ("n/a", None)


def test_tables_show_each_new_phase_beside_the_targets() -> None:
    """The summary has a section per new phase with its numbers, and the targets list them."""
    text = format_tables({**RESULTS, "targets": evaluate_targets(RESULTS)})
    assert "Live promotion fraud/1 -> fraud/2 (60 s windows" in text
    assert "     5,000     40.0 ms     48.0 ms   1.20x  1500/1490; 1.20 s;" in text
    assert "; fraud/2; 4,870/s" in text
    assert "Monitoring cost, 3 alternating round(s)" in text
    assert "  drift        97,000 events/s  0.970  0.96, 0.97, 0.98" in text
    assert "drift: 3.0% of throughput (target <= 5 %)" in text
    assert "2.50 µs/event extra against its model's 3.00 µs/event" in text
    assert "its own time 2.75 µs/event" in text
    assert "scores-on 65,000 events/s: 0.650x (target >= 0.7)" in text
    assert "Targets (issues 4, 10, 11, 14)" in text
    assert "MISS p99 around a promotion / before, 20,000 events/s" in text


def test_tables_mark_a_promotion_that_was_rolled_back() -> None:
    """An automatic rollback during the run is shown, since it changes what was measured."""
    row = {**_promotion(1.1), "rolled_back": True}
    assert "ROLLED BACK" in format_tables({"promotion": {"5000": row}})
