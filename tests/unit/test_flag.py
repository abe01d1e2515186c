"""Stage 5, flag: the threshold decides; invalid scores become rejects; counts add up."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from stream_scorer.flag import FLAG, flag_events
from stream_scorer.records import Event, SourceRecord

MakeRecord = Callable[..., SourceRecord]


@pytest.fixture
def events(make_record: MakeRecord) -> Callable[[int], list[Event]]:
    """``events(n)`` → n events with offsets 0..n-1 and a distinct id field."""

    def build(n: int) -> list[Event]:
        return [Event(make_record(b"", offset=i), {"transaction_id": f"t{i}"}) for i in range(n)]

    return build


def _flag(batch: list[Event], scores: list[float], threshold: float = 0.5) -> Any:
    return flag_events(batch, np.array(scores, dtype=np.float64), threshold, "m", "7", 123)


def test_score_equal_to_threshold_is_flagged(events: Callable[[int], list[Event]]) -> None:
    """A score exactly at the threshold is flagged; just below is not."""
    below = np.nextafter(0.5, 0.0)
    flagged, unflagged, rejected = _flag(events(3), [below, 0.5, 0.75])

    assert [s.source.offset for s in flagged] == [1, 2]
    assert unflagged == 1
    assert rejected == []


def test_flagged_results_carry_the_decision_and_model(
    events: Callable[[int], list[Event]],
) -> None:
    """Each Scored names its source, event, score, FLAG, threshold, model and scoring time."""
    batch = events(2)
    flagged, _, _ = _flag(batch, [0.9, 0.1], threshold=0.3)

    (scored,) = flagged
    assert scored.source is batch[0].source
    assert scored.event == {"transaction_id": "t0"}
    assert scored.score == 0.9
    assert isinstance(scored.score, float)
    assert (scored.decision, scored.threshold) == (FLAG, 0.3)
    assert (scored.model_name, scored.model_version, scored.scored_time_ms) == ("m", "7", 123)


@pytest.mark.parametrize(
    "bad_score", [float("nan"), -0.01, 1.01, float("inf"), float("-inf")], ids=str
)
def test_invalid_score_becomes_a_reject(
    bad_score: float, events: Callable[[int], list[Event]]
) -> None:
    """A score that is NaN or outside [0, 1] is a score-stage reject, never an alert."""
    batch = events(3)
    flagged, unflagged, rejected = _flag(batch, [0.9, bad_score, 0.1])

    assert [s.source.offset for s in flagged] == [0]
    assert unflagged == 1
    assert len(rejected) == 1
    reject = rejected[0]
    assert reject.source is batch[1].source
    assert (reject.stage, reject.error_type) == ("score", "ModelError")
    assert "not a probability" in reject.message


@pytest.mark.parametrize(
    ("threshold", "scores", "expected_flagged"),
    [
        (0.0, [0.0, 0.2, 1.0], [0, 1, 2]),
        (1.0, [0.0, 0.999, 1.0], [2]),
        (0.5, [0.1, 0.2, 0.3], []),
    ],
)
def test_threshold_extremes(
    threshold: float,
    scores: list[float],
    expected_flagged: list[int],
    events: Callable[[int], list[Event]],
) -> None:
    """Threshold 0 flags every valid score; threshold 1 flags only a score of exactly 1."""
    flagged, unflagged, _ = _flag(events(len(scores)), scores, threshold)

    assert [s.source.offset for s in flagged] == expected_flagged
    assert unflagged == len(scores) - len(expected_flagged)


def test_counts_add_up(events: Callable[[int], list[Event]]) -> None:
    """Flagged + unflagged + rejected equals the number of events, in batch order."""
    rng = np.random.default_rng(5)
    scores = rng.uniform(-0.2, 1.2, size=200)
    scores[::17] = np.nan

    flagged, unflagged, rejected = flag_events(events(200), scores, 0.6, "m", "1", 0)

    assert len(flagged) + unflagged + len(rejected) == 200
    assert len(flagged) == int(np.sum((scores >= 0.6) & (scores <= 1.0)))
    offsets = [s.source.offset for s in flagged]
    assert offsets == sorted(offsets)


def test_empty_batch(events: Callable[[int], list[Event]]) -> None:
    """No events give no alerts, zero unflagged and no rejects."""
    assert _flag(events(0), []) == ([], 0, [])
