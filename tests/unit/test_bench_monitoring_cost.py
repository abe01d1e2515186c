"""bench/monitoring_cost.py: run order, the same-size shadow and what the rounds come to."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.alternate import run_order
from bench.monitoring_cost import (
    CANARY_FRACTION,
    VARIANTS,
    model_us_per_event,
    overrides,
    rotation_order,
    summarize,
    write_same_size_shadow,
)
from stream_scorer.model_card import ModelCard

REPO = Path(__file__).resolve().parents[2]


def test_rotation_order_reverses_every_round() -> None:
    """Rounds run forwards then backwards, so every variant's mean position is the same."""
    order = rotation_order(2, ("a", "b", "c"))
    assert order == [(0, "a"), (0, "b"), (0, "c"), (1, "c"), (1, "b"), (1, "a")]
    positions = {name: [i for i, (_, n) in enumerate(order) if n == name] for name in "abc"}
    assert len({sum(p) for p in positions.values()}) == 1


def test_rotation_order_of_two_is_the_pairwise_order() -> None:
    """With two variants it is bench.alternate's A B, B A, ... order."""
    assert rotation_order(3, ("a", "b")) == run_order(3, "a", "b")


def test_rotation_order_needs_rounds_and_variants() -> None:
    """Zero rounds or no variant is a clear error."""
    with pytest.raises(ValueError, match="at least one round"):
        rotation_order(0, VARIANTS)
    with pytest.raises(ValueError, match="at least one round"):
        rotation_order(1, ())


def test_same_size_shadow_is_the_champions_graph_under_another_version(tmp_path: Path) -> None:
    """The shadow loads as a card of its own version, with the champion's very ONNX file."""
    champion = REPO / "models" / "fraud" / "1"
    folder = write_same_size_shadow(champion, tmp_path)
    card = ModelCard.load(folder)
    assert (card.name, card.version) == ("fraud", "1-shadow")
    assert (folder / "model.onnx").read_bytes() == (champion / "model.onnx").read_bytes()
    original = json.loads((champion / "model.json").read_text(encoding="utf-8"))
    assert original["version"] == "1"


def test_overrides_turn_drift_off_except_in_the_drift_variant(tmp_path: Path) -> None:
    """Only the drift variant watches drift; the shadow cannot be dropped; canary at 10 %."""
    sections = overrides(tmp_path / "s", tmp_path / "c")
    assert set(sections) == set(VARIANTS)
    drift = {name: sections[name]["monitoring"]["drift"] for name in VARIANTS}
    assert drift == {"plain": False, "drift": True, "shadow": False, "canary": False}
    assert sections["shadow"]["monitoring"]["shadows"] == [str(tmp_path / "s")]
    assert sections["shadow"]["monitoring"]["shadow_max_ratio"] >= 100
    assert sections["canary"]["monitoring"]["canary"] == str(tmp_path / "c")
    assert sections["canary"]["monitoring"]["canary_fraction"] == CANARY_FRACTION


def test_model_us_per_event_adds_featurize_and_score_only() -> None:
    """Model time is featurize + score over consumed events; decode is not the model's."""
    stages = {"decode": {"seconds": 9.0}, "featurize": {"seconds": 1.0}, "score": {"seconds": 2.0}}
    assert model_us_per_event(stages, 1_000_000) == pytest.approx(3.0)
    assert model_us_per_event(stages, 0) is None


def test_summarize_drift_cost_and_shadow_against_model_time() -> None:
    """Drift at 97 % of plain costs 3 %; a shadow adding 2 µs/event on 4 µs of model passes."""
    plain = [100_000.0, 100_000.0, 100_000.0]
    # 10 µs/event plain; 12 µs/event with the shadow: 2 µs extra.
    shadow = [1e6 / 12] * 3
    result = summarize(
        {"plain": plain, "drift": [97_000.0] * 3, "shadow": shadow, "canary": [90_000.0] * 3},
        [4.0, 4.2, 3.8],
        [3.0, None, 5.0],
    )
    assert result["drift_cost"] == pytest.approx(0.03)
    assert result["drift_verdict"] == "PASS"
    assert result["model_us_per_event"] == 4.0
    assert result["shadow_extra_us_per_event"] == pytest.approx(2.0)
    assert result["shadow_cost_vs_model"] == 0.5
    assert result["shadow_verdict"] == "PASS"
    assert result["shadow_own_us_per_event"] == 4.0
    assert result["canary_cost"] == pytest.approx(0.1)
    assert result["vs_plain"]["drift"]["round_ratios"] == [0.97, 0.97, 0.97]


def test_summarize_misses_targets_it_does_not_meet() -> None:
    """Drift costing 10 % and a shadow costing twice its model both miss."""
    result = summarize({"plain": [100_000.0], "drift": [90_000.0], "shadow": [1e6 / 18]}, [4.0])
    assert result["drift_verdict"] == "MISS"
    assert result["shadow_cost_vs_model"] == 2.0
    assert result["shadow_verdict"] == "MISS"
    assert result["canary_cost"] is None
    assert result["shadow_own_us_per_event"] is None


def test_summarize_uses_the_median_and_skips_missing_runs() -> None:
    """A run that gave no rate is left out; the median resists one noisy round."""
    result = summarize(
        {
            "plain": [100_000.0, None, 100_000.0, 20_000.0],
            "drift": [96_000.0, 96_000.0, None, 96_000.0],
        },
        [None, 4.0, 4.0, 4.0],
    )
    assert result["median_events_per_s"]["plain"] == 100_000.0
    assert result["drift_cost"] == pytest.approx(0.04)
    assert result["shadow_cost_vs_model"] is None
    assert result["shadow_verdict"] == "n/a"


def test_summarize_needs_the_plain_runs() -> None:
    """Without the reference there is nothing to compare with: a clear error."""
    with pytest.raises(ValueError, match="needs the plain runs"):
        summarize({"drift": [1.0]}, [])
