"""Stage 5, flag: a pure function of scores and the policy (a threshold or bands); invalid
scores are named."""

from __future__ import annotations

import numpy as np
import pytest

from stream_scorer.decision import parse_policy, threshold_policy
from stream_scorer.flag import flag_scores


def _flag(scores: list[float], threshold: float = 0.5) -> tuple[list[int], list[int], int]:
    decisions = flag_scores(np.array(scores, dtype=np.float64), threshold)
    return decisions.flagged.tolist(), decisions.invalid.tolist(), decisions.unflagged


def test_score_equal_to_threshold_is_flagged() -> None:
    """A score exactly at the threshold is flagged; just below is not."""
    below = float(np.nextafter(0.5, 0.0))

    assert _flag([below, 0.5, 0.75]) == ([1, 2], [], 1)


@pytest.mark.parametrize(
    "bad_score", [float("nan"), -0.01, 1.01, float("inf"), float("-inf")], ids=str
)
def test_invalid_score_is_neither_flagged_nor_unflagged(bad_score: float) -> None:
    """A score that is NaN or outside [0, 1] is invalid, never flagged (never an alert)."""
    assert _flag([0.9, bad_score, 0.1]) == ([0], [1], 1)


@pytest.mark.parametrize(
    ("threshold", "scores", "expected_flagged"),
    [
        (0.0, [0.0, 0.2, 1.0], [0, 1, 2]),
        (1.0, [0.0, 0.999, 1.0], [2]),
        (0.5, [0.1, 0.2, 0.3], []),
    ],
)
def test_threshold_extremes(
    threshold: float, scores: list[float], expected_flagged: list[int]
) -> None:
    """Threshold 0 flags every valid score; threshold 1 flags only a score of exactly 1."""
    flagged, invalid, unflagged = _flag(scores, threshold)

    assert flagged == expected_flagged
    assert invalid == []
    assert unflagged == len(scores) - len(expected_flagged)


def test_counts_add_up() -> None:
    """Flagged + invalid + unflagged equals the number of scores; positions ascend."""
    rng = np.random.default_rng(5)
    scores = rng.uniform(-0.2, 1.2, size=200)
    scores[::17] = np.nan

    decisions = flag_scores(scores, 0.6)

    assert len(decisions.flagged) + len(decisions.invalid) + decisions.unflagged == 200
    assert len(decisions.flagged) == int(np.sum((scores >= 0.6) & (scores <= 1.0)))
    assert decisions.flagged.tolist() == sorted(decisions.flagged.tolist())
    assert set(decisions.invalid.tolist()) == set(np.flatnonzero(~((scores >= 0) & (scores <= 1))))


def test_empty_batch() -> None:
    """No scores give no flags, no invalid scores and zero unflagged."""
    assert _flag([]) == ([], [], 0)


def test_bands_publish_only_their_publishing_bands() -> None:
    """With bands, rows in publishing bands are flagged; every valid row gets its band."""
    policy = parse_policy(
        {
            "decision": {
                "bands": [
                    {"name": "APPROVE", "publish": False},
                    {"name": "REVIEW", "from": 0.4, "publish": True},
                    {"name": "DECLINE", "from": 0.8, "publish": True},
                ]
            }
        }
    )
    scores = np.array([0.1, 0.5, np.nan, 0.9, 0.39])

    decisions = flag_scores(scores, policy)

    assert decisions.flagged.tolist() == [1, 3]
    assert decisions.invalid.tolist() == [2]
    assert decisions.unflagged == 2
    assert decisions.bands[[0, 1, 3, 4]].tolist() == [0, 1, 2, 0]
    assert decisions.band_counts.tolist() == [2, 1, 1]


def test_a_threshold_is_the_two_band_policy() -> None:
    """A bare threshold decides exactly like its plain policy: FLAG band published."""
    rng = np.random.default_rng(11)
    scores = rng.uniform(0, 1, size=300)

    bare, plain = flag_scores(scores, 0.42), flag_scores(scores, threshold_policy(0.42))

    assert bare.flagged.tolist() == plain.flagged.tolist()
    assert bare.band_counts.tolist() == [300 - len(bare.flagged), len(bare.flagged)]
    assert (bare.bands[bare.flagged] == 1).all()


def test_multiclass_rows_are_invalid_when_any_class_is_not_a_probability() -> None:
    """A [N, C] output is judged per row on every class; the value is the top class's."""
    policy = parse_policy(
        {
            "output": {"type": "multiclass", "labels": ["a", "b", "c"]},
            "decision": {
                "top_k": 1,
                "bands": [
                    {"name": "LOW", "publish": False},
                    {"name": "HIGH", "from": 0.5, "publish": True},
                ],
            },
        }
    )
    outputs = np.array([[0.2, 0.7, 0.1], [0.4, 0.3, 0.3], [0.9, -0.1, 0.2]])

    decisions = flag_scores(outputs, policy)

    assert decisions.flagged.tolist() == [0]
    assert decisions.invalid.tolist() == [2]
    assert decisions.values[:2].tolist() == [0.7, 0.4]
