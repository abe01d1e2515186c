"""The decision policy as data: parsing the card's output type and bands, assigning bands."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from stream_scorer.decision import FLAG, PASS, DecisionPolicy, parse_policy, threshold_policy

BANDS: list[dict[str, Any]] = [
    {"name": "APPROVE", "publish": False},
    {"name": "REVIEW", "from": 0.4, "publish": True},
    {"name": "DECLINE", "from": 0.8, "publish": True},
]


def _policy(**card: Any) -> DecisionPolicy:
    return parse_policy(card)


def test_card_without_decision_is_the_plain_threshold() -> None:
    """No decision section: PASS below the threshold (not published), FLAG at or above."""
    policy = _policy(threshold=0.3)

    assert policy == threshold_policy(0.3)
    assert policy.from_threshold
    assert (policy.output, policy.names, policy.threshold) == ("binary", (PASS, FLAG), 0.3)
    assert policy.published.tolist() == [False, True]
    assert policy.assign(np.array([0.0, 0.2999, 0.3, 1.0])).tolist() == [0, 0, 1, 1]


def test_bands_split_scores_at_their_lower_edges() -> None:
    """A value at a band's 'from' is in that band; the first band starts at 0."""
    policy = _policy(decision={"bands": BANDS})

    values = np.array([0.0, 0.39999, 0.4, 0.79, 0.8, 1.0])
    assert policy.assign(values).tolist() == [0, 0, 1, 1, 2, 2]
    assert policy.lowers.tolist() == [0.0, 0.4, 0.8]
    assert policy.threshold == 0.4  # the lowest published edge
    assert not policy.from_threshold


def test_regression_bands_start_at_minus_infinity_and_accept_any_finite_value() -> None:
    """Regression bands are over the value: negative values fall in the first band."""
    policy = _policy(
        output={"type": "regression"},
        decision={
            "bands": [
                {"name": "LOW", "publish": False},
                {"name": "HIGH", "from": 250.0, "publish": True},
            ]
        },
    )

    values = np.array([-1e9, 0.0, 249.99, 250.0, 1e12])
    assert policy.assign(values).tolist() == [0, 0, 0, 1, 1]
    assert policy.lowers[0] == -math.inf
    assert policy.valid(np.array([1.0, np.nan, np.inf, -5.0])).tolist() == [
        True,
        False,
        False,
        True,
    ]


def test_multiclass_decides_on_the_top_class_and_ranks_top_k() -> None:
    """The decision value is the top class's probability; top_k ranks the most likely."""
    policy = _policy(
        output={"type": "multiclass", "labels": ["a", "b", "c", "d"]},
        decision={
            "top_k": 2,
            "bands": [
                {"name": "LOW", "publish": False},
                {"name": "RECOMMEND", "from": 0.5, "publish": True},
            ],
        },
    )
    outputs = np.array([[0.1, 0.6, 0.2, 0.1], [0.3, 0.3, 0.2, 0.2]])

    assert policy.decision_values(outputs).tolist() == [0.6, 0.3]
    columns, probabilities = policy.top_classes(outputs)
    assert columns.tolist() == [[1, 2], [0, 1]]  # a tie goes to the lower column
    assert probabilities.tolist() == [[0.6, 0.2], [0.3, 0.3]]
    assert policy.valid(np.array([[0.5, 0.5, 0, 0], [0.5, np.nan, 0, 0]])).tolist() == [
        True,
        False,
    ]


def test_threshold_override_applies_to_plain_cards_only() -> None:
    """model.threshold replaces a plain threshold; it cannot replace declared bands."""
    assert threshold_policy(0.5).at_threshold(0.7) == threshold_policy(0.7)
    banded = _policy(decision={"bands": BANDS})
    assert banded.at_threshold(banded.threshold) is banded
    with pytest.raises(ValueError, match="declares decision bands"):
        banded.at_threshold(0.9)


@pytest.mark.parametrize(
    ("card", "fragment"),
    [
        ({"output": {"type": "ranking"}, "threshold": 0.5}, "output.type must be one of"),
        ({"output": {"type": "multiclass"}, "threshold": 0.5}, "output.labels must list"),
        (
            {"output": {"type": "regression"}, "threshold": 0.5},
            "needs a decision section with bands",
        ),
        ({"threshold": 1.5}, "threshold must be in [0, 1]"),
        ({"threshold": 0.5, "decision": {"bands": BANDS}}, "not both"),
        ({"decision": {"bands": []}}, "non-empty list"),
        ({"decision": {"bands": BANDS, "colour": 1}}, "unknown key(s) ['colour']"),
        (
            {"decision": {"bands": [{"name": "A", "from": 0.1, "publish": True}]}},
            "takes no 'from'",
        ),
        (
            {"decision": {"bands": [BANDS[0], {"name": "B", "publish": True}]}},
            "decision.bands[1].from must be a number",
        ),
        (
            {"decision": {"bands": [BANDS[0], BANDS[2], BANDS[1]]}},
            "decision.bands[2].from (0.4) must be above",
        ),
        (
            {"decision": {"bands": [BANDS[0], {"name": "B", "from": 1.5, "publish": True}]}},
            "must be in (0, 1]",
        ),
        (
            {"decision": {"bands": [BANDS[0], {"name": "APPROVE", "from": 0.5, "publish": 1}]}},
            "publish must be true or false",
        ),
        (
            {"decision": {"bands": [BANDS[0], {"name": "APPROVE", "from": 0.5, "publish": True}]}},
            "used twice",
        ),
        ({"decision": {"bands": [{"name": "no spaces", "publish": True}]}}, "Avro name"),
        ({"decision": {"bands": BANDS, "top_k": 2}}, "top_k applies to multiclass"),
        (
            {
                "output": {"type": "multiclass", "labels": ["a", "b"]},
                "decision": {"bands": BANDS, "top_k": 3},
            },
            "top_k must be an integer in [1, 2]",
        ),
        (
            {"output": {"type": "multiclass", "labels": ["a", "a"]}, "decision": {"bands": BANDS}},
            "must be unique",
        ),
        ({"output": {"labels": ["a", "b"]}, "threshold": 0.5}, "multiclass outputs only"),
    ],
)
def test_bad_policy_is_refused_naming_the_key(card: dict[str, Any], fragment: str) -> None:
    """Every malformed output or decision section is refused with a message naming the key."""
    with pytest.raises((ValueError, TypeError)) as caught:
        parse_policy(card)

    assert fragment in str(caught.value)


def test_describe_names_output_type_and_published_bands() -> None:
    """config check's line: the output type, the bands in order, published ones starred."""
    policy = _policy(decision={"bands": BANDS})

    assert policy.describe() == (
        "output binary; bands APPROVE < REVIEW* from 0.4 < DECLINE* from 0.8 (* published)"
    )
