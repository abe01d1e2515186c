"""bench/alternate.py: alternating run order and what rounds of two variants come to."""

from __future__ import annotations

import pytest

from bench.alternate import NOISE, TOO_FEW, compare, run_order, spread


def test_run_order_swaps_the_pair_every_round() -> None:
    """Rounds run A B, B A, A B: neither variant always goes first."""
    assert run_order(3, "a", "b") == [
        (0, "a"), (0, "b"), (1, "b"), (1, "a"), (2, "a"), (2, "b"),
    ]  # fmt: skip


def test_run_order_needs_a_round() -> None:
    """Zero rounds is a clear error, not an empty comparison."""
    with pytest.raises(ValueError, match="rounds must be at least 1"):
        run_order(0, "a", "b")


def test_spread_reports_median_and_range() -> None:
    """The spread of a metric is its median, minimum, maximum and values."""
    assert spread([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "values": [3, 1, 2]}


def test_compare_names_the_winner_when_every_round_agrees() -> None:
    """A variant better in every round wins; ratios are first over second."""
    result = compare("a", "b", [110.0, 105.0, 120.0], [100.0, 100.0, 100.0], "higher")
    assert result["winner"] == "a"
    assert result["round_ratios"] == [1.1, 1.05, 1.2]
    assert result["ratio_of_medians"] == pytest.approx(1.1)
    assert result["a"]["median"] == 110.0


def test_compare_lower_is_better_for_latency() -> None:
    """For latency the lower value wins."""
    result = compare("a", "b", [30.0, 28.0, 35.0], [20.0, 22.0, 19.0], "lower")
    assert result["winner"] == "b"


def test_compare_calls_disagreeing_rounds_noise() -> None:
    """When the rounds disagree, no variant wins: the difference is within the run's noise."""
    result = compare("a", "b", [110.0, 95.0, 101.0], [100.0, 100.0, 100.0], "higher")
    assert result["winner"] == NOISE


def test_compare_leaves_out_incomplete_rounds() -> None:
    """A round where one run gave no value is left out of medians, ratios and the verdict."""
    result = compare("a", "b", [110.0, None, 120.0, 90.0], [100.0, 100.0, 200.0, 100.0], "higher")
    assert result["rounds"] == 3
    assert result["round_ratios"] == [1.1, 0.6, 0.9]
    assert result["b"]["values"] == [100.0, 200.0, 100.0]


def test_compare_names_no_winner_from_too_few_rounds() -> None:
    """Two rounds that agree are not a verdict: pure noise agrees that often."""
    result = compare("a", "b", [110.0, 120.0], [100.0, 100.0], "higher")
    assert result["winner"] == TOO_FEW


@pytest.mark.parametrize(
    ("values_a", "values_b", "message"),
    [([1.0, 2.0], [1.0], "2 rounds of a against 1 of b"), ([None], [1.0], "no round")],
)
def test_compare_rejects_unmatched_rounds(
    values_a: list[float | None], values_b: list[float | None], message: str
) -> None:
    """Rounds that do not pair up are a clear error."""
    with pytest.raises(ValueError, match=message):
        compare("a", "b", values_a, values_b, "higher")
