"""Canary routing: a configured share of events, chosen by key hash, decided by the canary.

An event goes to the canary when the CRC-32 of its Kafka key falls in the first
``fraction × 10,000`` of 10,000 buckets. The choice depends on the key alone, so it is sticky:
every event of one entity (the key is the card id) is decided by the same model, and an
entity's alerts keep their order. Events without a key stay with the champion. CRC-32 is
stable across processes and Python versions (``hash()`` is salted per process), so every
instance of a group routes a key the same way.

The pipeline scores the batch with both models and keeps, per row, the decision of the model
the row is routed to (:func:`split`): the canary costs the time of its model on the whole
batch, like a shadow, and publishes only its share, labelled with its own name and version.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from stream_scorer.records import SourceRecord

if TYPE_CHECKING:  # the pipeline imports this package: no import cycle at run time
    from stream_scorer.pipeline import ModelDecision

__all__ = ["BUCKETS", "CanaryBatch", "in_canary", "routed", "split"]

#: Hash buckets a key falls in; the canary takes the first ``fraction * BUCKETS``.
BUCKETS = 10_000


@dataclasses.dataclass(frozen=True, slots=True)
class CanaryBatch:
    """What champion and canary each made of the whole batch, before :func:`split` (the
    comparison and the canary's rollback rules judge them on the same events)."""

    champion: ModelDecision
    canary: ModelDecision
    #: The champion's featurize / score / flag seconds on this batch.
    champion_s: dict[str, float]
    #: The canary's, on the same batch.
    canary_s: dict[str, float]


def in_canary(key: bytes | None, fraction: float) -> bool:
    """Whether the event with ``key`` goes to the canary."""
    return key is not None and zlib.crc32(key) % BUCKETS < round(fraction * BUCKETS)


def routed(records: Sequence[SourceRecord], fraction: float) -> NDArray[np.bool_]:
    """Per row of ``records``: True where the canary decides."""
    cut = round(fraction * BUCKETS)
    buckets = np.fromiter(
        (-1 if r.key is None else zlib.crc32(r.key) % BUCKETS for r in records),
        dtype=np.int64,
        count=len(records),
    )
    return (buckets >= 0) & (buckets < cut)


def _restrict(decision: ModelDecision, keep_row: NDArray[np.bool_], keep_rejected: bool,
              fraction: float) -> ModelDecision:  # fmt: skip
    keep = keep_row[decision.rows]
    flagged_mask = np.zeros(len(decision.rows), dtype=bool)
    flagged_mask[decision.flagged] = True
    rows, scores, flagged_mask = decision.rows[keep], decision.scores[keep], flagged_mask[keep]
    rejected = [r for r in decision.rejected if in_canary(r.source.key, fraction) == keep_rejected]
    bands = None if decision.bands is None else decision.bands[keep]
    band_counts = None
    if bands is not None and decision.band_counts is not None:
        band_counts = np.bincount(bands, minlength=len(decision.band_counts)).astype(np.intp)
    top = None if decision.top is None else (decision.top[0][keep], decision.top[1][keep])
    return dataclasses.replace(
        decision,
        rows=rows,
        scores=scores,
        flagged=np.flatnonzero(flagged_mask),
        unflagged=int(np.count_nonzero(~flagged_mask)),
        rejected=rejected,
        bands=bands,
        band_counts=band_counts,
        top=top,
    )


def split(
    champion: ModelDecision,
    canary: ModelDecision,
    records: Sequence[SourceRecord],
    fraction: float,
) -> tuple[ModelDecision, ModelDecision]:
    """The champion's decisions on its rows and the canary's on the canary's rows.

    Rows one model rejected are kept as rejects only where that model decides, so every row
    ends with exactly one model's outcome.
    """
    to_canary = routed(records, fraction)
    return (
        _restrict(champion, ~to_canary, False, fraction),
        _restrict(canary, to_canary, True, fraction),
    )
