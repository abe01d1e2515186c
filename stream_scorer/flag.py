"""Stage 5: events + scores → flagged results, by threshold.

In: the scored events and their probabilities. Out: a :class:`Scored` for every event whose
score is at or above the threshold, the number left unflagged, and a :class:`Rejected` for any
score that is not a number in [0, 1] (a model that returns NaN for one event has not scored it).

A flagged event is decoded whole here, for the first time (the columnar decoder read only the
fields the model binds and walked over the rest). If that decode fails, for example invalid
UTF-8 in a string the model does not read, the event is rejected at stage ``decode`` instead of
alerting: malformed input never reaches the alert topic. No side effects.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from stream_scorer.errors import RecordError
from stream_scorer.records import Event, Rejected, Scored

__all__ = ["FLAG", "flag_events"]

#: The decision written on every published alert.
FLAG = "FLAG"


def flag_events(
    events: Sequence[Event],
    scores: NDArray[np.float64],
    threshold: float,
    model_name: str,
    model_version: str,
    scored_time_ms: int,
) -> tuple[list[Scored], int, list[Rejected]]:
    """Split scored events into flagged, unflagged (counted) and invalid scores.

    ``events`` may be lazy (see ``pipeline._ScoredRows``): ``events.source(i)`` gives a row's
    source record without decoding it, and indexing decodes the event whole.

    Returns:
        Flagged results in batch order, the count of unflagged events, and rejects for scores
        outside [0, 1] or NaN and for flagged events that do not decode whole.
    """
    source = getattr(events, "source", None)
    valid = (scores >= 0.0) & (scores <= 1.0)  # False for NaN too
    flagged_rows = np.flatnonzero(valid & (scores >= threshold))
    rejected = [
        Rejected(
            source(i) if source is not None else events[i].source,
            "score",
            "ModelError",
            f"model returned {scores[i]!r}, not a probability",
        )
        for i in np.flatnonzero(~valid).tolist()
    ]
    flagged = []
    for i in flagged_rows.tolist():
        try:
            event = events[i]  # once: a lazily decoded event costs a whole-record decode
        except RecordError as exc:
            record = source(i) if source is not None else exc.source
            assert record is not None  # noqa: S101 - lazy rows always know their source
            rejected.append(Rejected(record, exc.stage, type(exc).__name__, exc.reason))
            continue
        flagged.append(
            Scored(
                source=event.source,
                event=event.fields,
                score=float(scores[i]),
                decision=FLAG,
                threshold=threshold,
                model_name=model_name,
                model_version=model_version,
                scored_time_ms=scored_time_ms,
            )
        )
    unflagged = len(events) - len(flagged) - len(rejected)
    return flagged, unflagged, rejected
