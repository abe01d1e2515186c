"""Stage 5: model outputs → decisions, by the card's policy. A pure function of both.

In: one model's outputs for the rows it scored (``[N]`` for binary and regression, ``[N, C]``
for multiclass) and its :class:`~stream_scorer.decision.DecisionPolicy` (or a bare threshold,
the plain policy). Out: the band of every row, which rows are published (their band publishes),
and which outputs are not usable at all (a probability that is NaN or outside [0, 1], a value
that is not finite: a model that returns NaN for one event has not scored it; the pipeline
dead-letters those rows). Everything is vectorised: one ``searchsorted`` assigns the bands.
Nothing is decoded and nothing is built here: turning published rows into whole events is
:mod:`stream_scorer.materialise`'s job. No side effects.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from stream_scorer.decision import FLAG, DecisionPolicy, threshold_policy

__all__ = ["FLAG", "Decisions", "flag_scores"]


@dataclass(frozen=True, slots=True)
class Decisions:
    """What a policy made of one model's outputs; indices are positions in the outputs."""

    #: Positions whose output is valid and whose band publishes, ascending.
    flagged: NDArray[np.intp]
    #: Positions whose output is not usable (NaN, a probability outside [0, 1]), ascending.
    invalid: NDArray[np.intp]
    #: Positions with a valid output in a band that does not publish (counted only).
    unflagged: int
    #: The decision value per position (the top class's probability for multiclass).
    values: NDArray[np.float64]
    #: The band index per position (meaningless at invalid positions).
    bands: NDArray[np.intp]
    #: Valid rows per band, by band index.
    band_counts: NDArray[np.intp]


def flag_scores(outputs: NDArray[np.float64], policy: DecisionPolicy | float) -> Decisions:
    """Assign every output its band; split positions into published, invalid and counted."""
    if not isinstance(policy, DecisionPolicy):
        policy = threshold_policy(policy)
    values = policy.decision_values(outputs)
    valid = policy.valid(outputs)
    bands = policy.assign(values)
    flagged = np.flatnonzero(valid & policy.published[bands])
    invalid = np.flatnonzero(~valid)
    counts = np.bincount(bands[valid], minlength=len(policy.bands)).astype(np.intp)
    unflagged = len(values) - len(flagged) - len(invalid)
    return Decisions(flagged, invalid, unflagged, values, bands, counts)
