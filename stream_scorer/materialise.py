"""Materialise: the few rows that need whole events (flagged ones) → :class:`Scored` values.

In: a decoded batch, the batch rows a model published, their scores, the band (decision) and
band edge (threshold) of each (or one for all), the top classes of each for multiclass models,
and the model. Out: one
:class:`~stream_scorer.records.Scored` per flagged row, carrying the whole decoded event (so the
encoder can read its id, time, key and projected fields), and a
:class:`~stream_scorer.records.Rejected` for each flagged row whose record does not decode whole.

The columnar decoder reads only the fields the models bind and walks over the rest; a flagged
event is decoded whole here, for the first time (``DecodedBatch.event_at``). If that fails, for
example invalid UTF-8 in a string no model reads, the event is rejected at stage ``decode``
instead of alerting: malformed input never reaches the alert topic. Dead letters need no
materialising: a :class:`Rejected` already holds its source record.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import repeat

import numpy as np
from numpy.typing import NDArray

from stream_scorer.errors import RecordError
from stream_scorer.records import DecodedBatch, Rejected, Scored

__all__ = ["materialise_alerts"]


def materialise_alerts(
    batch: DecodedBatch,
    rows: Sequence[int],
    scores: NDArray[np.float64],
    decision: str | Sequence[str],
    threshold: float | Sequence[float],
    model_name: str,
    model_version: str,
    scored_time_ms: int,
    classes: Sequence[tuple[tuple[str, float], ...]] | None = None,
) -> tuple[list[Scored], list[Rejected]]:
    """Whole events for the published ``rows`` of ``batch`` (``scores[i]`` is row ``rows[i]``'s).

    ``decision`` and ``threshold`` are one value for every row or one per row (the band of each
    and its lower edge); ``classes`` gives each row's top classes (multiclass models).

    Returns:
        The alerts in batch order, and rejects for rows that do not decode whole.
    """
    alerts: list[Scored] = []
    rejected: list[Rejected] = []
    decisions = repeat(decision) if isinstance(decision, str) else iter(decision)
    thresholds = repeat(threshold) if isinstance(threshold, float | int) else iter(threshold)
    tops = repeat(()) if classes is None else iter(classes)
    for row, score in zip(rows, scores.tolist(), strict=True):
        band, edge, top = next(decisions), next(thresholds), next(tops)
        try:
            event = batch.event_at(row)  # once: a whole-record decode
        except RecordError as exc:
            rejected.append(Rejected(batch.records[row], exc.stage, type(exc).__name__, exc.reason))
            continue
        alerts.append(
            Scored(
                source=event.source,
                event=event.fields,
                score=score,
                decision=band,
                threshold=edge,
                model_name=model_name,
                model_version=model_version,
                scored_time_ms=scored_time_ms,
                classes=top,
            )
        )
    return alerts, rejected
