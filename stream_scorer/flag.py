"""Stage 5: scores → decisions, by threshold. A pure function of scores and a threshold.

In: one model's scores for the rows it scored, and its threshold. Out: which of those rows are
flagged (score at or above the threshold) and which scores are not a probability at all (NaN,
or outside [0, 1]: a model that returns NaN for one event has not scored it; the pipeline
dead-letters those rows). Nothing is decoded and nothing is built here: turning flagged rows into
whole events is :mod:`stream_scorer.materialise`'s job. No side effects.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = ["FLAG", "Decisions", "flag_scores"]

#: The decision written on every published alert.
FLAG = "FLAG"


@dataclass(frozen=True, slots=True)
class Decisions:
    """What a threshold made of one model's scores; indices are positions in the scores."""

    #: Positions whose score is a probability at or above the threshold, ascending.
    flagged: NDArray[np.intp]
    #: Positions whose score is not a probability (NaN, below 0, above 1), ascending.
    invalid: NDArray[np.intp]
    #: Positions with a valid score below the threshold (counted only).
    unflagged: int


def flag_scores(scores: NDArray[np.float64], threshold: float) -> Decisions:
    """Split scores into flagged, invalid and (counted) unflagged positions."""
    valid = (scores >= 0.0) & (scores <= 1.0)  # False for NaN too
    flagged = np.flatnonzero(valid & (scores >= threshold))
    invalid = np.flatnonzero(~valid)
    return Decisions(flagged, invalid, len(scores) - len(flagged) - len(invalid))
