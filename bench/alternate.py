"""Side-by-side comparisons on a noisy machine: the run order and what the runs come to.

Two variants (two configurations of the service, or two commits) are measured in rounds, each
round one run of each, the order swapped every round (A B, B A, A B, ...): a slow drift of the
machine's load then falls on both alike, and a neighbour's burst hits one run, not one variant.
:func:`compare` reduces the runs to medians with their spread, the ratio of the medians and the
ratio within each round (adjacent runs share the machine's state best), and names a winner
only when every round agrees; otherwise the difference is within the noise of the run.
Nothing here measures: :mod:`bench.run` and :mod:`bench.compare_commits` do.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any, Literal

__all__ = ["MIN_ROUNDS", "NOISE", "TOO_FEW", "compare", "run_order", "spread"]

#: The verdict when the rounds disagree about which variant is better.
NOISE = "within noise"
#: Fewest complete rounds for a verdict: under pure noise, all of 3 rounds agree 1 time in 4.
MIN_ROUNDS = 3
#: The verdict with fewer rounds than that.
TOO_FEW = "too few rounds"


def run_order(rounds: int, a: str, b: str) -> list[tuple[int, str]]:
    """``(round, variant)`` in run order: A B, then B A, then A B, ...

    Args:
        rounds: Runs of each variant.
        a: The first variant's name.
        b: The second variant's name.

    Returns:
        ``2 * rounds`` pairs.

    Raises:
        ValueError: ``rounds`` is below 1.
    """
    if rounds < 1:
        msg = f"rounds must be at least 1, got {rounds}"
        raise ValueError(msg)
    order: list[tuple[int, str]] = []
    for i in range(rounds):
        pair = (a, b) if i % 2 == 0 else (b, a)
        order.extend((i, name) for name in pair)
    return order


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Median, minimum, maximum and the values themselves (rounded for the results file)."""
    return {
        "median": round(statistics.median(values), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
        "values": [round(v, 2) for v in values],
    }


def compare(
    a: str,
    b: str,
    values_a: Sequence[float | None],
    values_b: Sequence[float | None],
    better: Literal["higher", "lower"],
) -> dict[str, Any]:
    """What rounds of two variants come to, for one metric.

    Args:
        a: The first variant's name (the numerator of every ratio).
        b: The second variant's name.
        values_a: ``a``'s value per round (None where a run gave none).
        values_b: ``b``'s value per round, same rounds.
        better: Whether a higher or a lower value is better (throughput, latency).

    Returns:
        ``{a: spread, b: spread, "ratio_of_medians", "round_ratios", "winner"}``; the winner
        is the better variant when every complete round agrees, else :data:`NOISE`
        (:data:`TOO_FEW` under :data:`MIN_ROUNDS` rounds). Rounds where either run gave no
        value are left out of everything.

    Raises:
        ValueError: The two sequences differ in length, or no round is complete.
    """
    if len(values_a) != len(values_b):
        msg = f"{len(values_a)} rounds of {a} against {len(values_b)} of {b}"
        raise ValueError(msg)
    pairs = [(x, y) for x, y in zip(values_a, values_b, strict=True) if x and y]
    if not pairs:
        msg = f"no round with a value for both {a} and {b}"
        raise ValueError(msg)
    xs = [x for x, _ in pairs]
    ys = [y for _, y in pairs]
    ratios = [x / y for x, y in pairs]
    a_better = [(r > 1) if better == "higher" else (r < 1) for r in ratios]
    winner = a if all(a_better) else b if not any(a_better) else NOISE
    if len(pairs) < MIN_ROUNDS:
        winner = TOO_FEW
    return {
        a: spread(xs),
        b: spread(ys),
        "ratio_of_medians": round(statistics.median(xs) / statistics.median(ys), 3),
        "round_ratios": [round(r, 3) for r in ratios],
        "rounds": len(pairs),
        "better": better,
        "winner": winner,
    }
