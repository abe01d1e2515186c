"""Runs stages 2–6 on one micro-batch and returns what to publish; the only module that knows
their order.

``decode → featurize → score → flag → materialise → encode`` (+ dead letters). The pipeline
never publishes and never waits for acknowledgements: it returns a
:class:`~stream_scorer.records.BatchOutput` (the messages to publish, in order, and the batch's
result) for the delivery strategy (:mod:`stream_scorer.delivery`).

The models come from :class:`~stream_scorer.model_set.LiveModels`, read once per batch, so a
swap takes effect at the next batch; decode delivers the union of the fields the set's models
bind, once. A :class:`~stream_scorer.errors.RecordError` (or a reject a stage returns) becomes a
dead letter and the batch goes on; anything else propagates and the runner stops without
committing. When the model fails on a batch, the batch is bisected to isolate the events that
make it fail; those are dead-lettered and the rest scored. When it fails on a known-good canary
row too, the model itself is down: that is fatal.

:func:`score_and_flag` is the scoring policy (featurize, score with bisection, flag) shared with
offline scoring (:mod:`stream_scorer.offline`), so ``score-file`` gives the stream's decisions.

Every consumed record ends as exactly one of: published alert, unflagged (counted), or dead
letter; :meth:`Pipeline.process` checks that the three add up.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import structlog
from numpy.typing import NDArray

from stream_scorer.dead_letter import DeadLetterWriter
from stream_scorer.decode import Decoder
from stream_scorer.encode import AlertEncoder
from stream_scorer.errors import ModelError
from stream_scorer.featurize import ModelInputs
from stream_scorer.flag import FLAG, flag_scores
from stream_scorer.materialise import materialise_alerts
from stream_scorer.metrics import ScorerMetrics
from stream_scorer.model_set import LiveModels, LoadedModel
from stream_scorer.monitoring.canary import split as canary_split
from stream_scorer.monitoring.monitor import Monitor
from stream_scorer.records import (
    Batch,
    BatchOutput,
    BatchResult,
    DecodedBatch,
    Outgoing,
    Rejected,
    SourceRecord,
)

__all__ = ["ModelDecision", "Pipeline", "score_and_flag", "score_with_bisection"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class ModelDecision:
    """What one model made of a decoded batch."""

    #: Batch rows with a valid score, ascending; ``scores[i]`` belongs to ``rows[i]``.
    rows: NDArray[np.intp]
    scores: NDArray[np.float64]
    #: Positions in ``rows``/``scores`` at or above the threshold.
    flagged: NDArray[np.intp]
    #: Valid scores below the threshold.
    unflagged: int
    #: Rows the model could not take (featurize), failed on (score) or gave no probability.
    rejected: list[Rejected]
    #: True when the model failed on the whole batch and it was bisected.
    bisected: bool


def _take(inputs: ModelInputs, rows: NDArray[np.intp]) -> ModelInputs:
    return {name: array[rows] for name, array in inputs.items()}


def score_with_bisection(
    model: LoadedModel, inputs: ModelInputs, n: int
) -> tuple[NDArray[np.float64], dict[int, str]]:
    """Scores for all ``n`` rows; rows the model fails on alone get NaN and a reason.

    Raises:
        ModelError: Every row fails and so does the canary batch: the model is down.
    """
    try:
        return model.scorer.score(inputs), {}
    except ModelError as exc:
        first_error = str(exc)
    scores = np.full(n, np.nan)
    bad: dict[int, str] = {}
    pending: list[tuple[NDArray[np.intp], str]] = [(np.arange(n), first_error)]
    while pending:
        rows, error = pending.pop()
        if len(rows) == 1:
            bad[int(rows[0])] = error
            continue
        for half in (rows[: len(rows) // 2], rows[len(rows) // 2 :]):
            try:
                scores[half] = model.scorer.score(_take(inputs, half))
            except ModelError as exc:
                pending.append((half, str(exc)))
    if len(bad) == n:
        # Every event fails alone: either they are all bad or the model is down.
        model.scorer.score(model.canary)  # raises ModelError when the model is down
    log.warning("model_failed_on_events", model=model.label, bad_events=len(bad), batch_size=n)
    return scores, bad


def score_and_flag(
    model: LoadedModel, batch: DecodedBatch, stage_s: dict[str, float] | None = None
) -> ModelDecision:
    """The scoring policy: featurize, score (bisecting a failing batch), flag by threshold.

    Args:
        model: The model that decides.
        batch: Decoded columns with at least the model's bound fields.
        stage_s: Where to add the featurize, score and flag times, when given.
    """
    tick = time.perf_counter()
    inputs, rows, rejected = model.features.build_batch_inputs(batch)
    tock = time.perf_counter()
    featurize_s, tick = tock - tick, tock

    scores, model_bad = score_with_bisection(model, inputs, len(rows))
    tock = time.perf_counter()
    score_s, tick = tock - tick, tock

    if model_bad:
        rejected.extend(
            Rejected(batch.records[int(rows[i])], "score", "ModelError", reason)
            for i, reason in sorted(model_bad.items())
        )
        keep = np.ones(len(rows), dtype=bool)
        keep[list(model_bad)] = False
        rows, scores = rows[keep], scores[keep]
    decisions = flag_scores(scores, model.threshold)
    if decisions.invalid.size:
        rejected.extend(
            Rejected(
                batch.records[int(rows[i])],
                "score",
                "ModelError",
                f"model returned {scores[i]!r}, not a probability",
            )
            for i in decisions.invalid.tolist()
        )
        keep = np.ones(len(rows), dtype=bool)
        keep[decisions.invalid] = False
        rows, scores = rows[keep], scores[keep]
        decisions = flag_scores(scores, model.threshold)
    if stage_s is not None:
        stage_s["featurize"] = stage_s.get("featurize", 0.0) + featurize_s
        stage_s["score"] = stage_s.get("score", 0.0) + score_s
        stage_s["flag"] = stage_s.get("flag", 0.0) + time.perf_counter() - tick
    return ModelDecision(
        rows, scores, decisions.flagged, decisions.unflagged, rejected, bool(model_bad)
    )


class Pipeline:
    """Scores micro-batches with the live model set; returns what to publish."""

    def __init__(
        self,
        decoder: Decoder,
        models: LiveModels,
        encoder: AlertEncoder,
        alert_topic: str,
        dead_letter_topic: str,
        scorer_version: str,
        metrics: ScorerMetrics | None = None,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        dead_letters: DeadLetterWriter | None = None,
        monitor: Monitor | None = None,
    ) -> None:
        """Wire the stages together (``dead_letters`` carries the privacy policy and the
        payload cipher; plain dead letters when not given; ``monitor`` watches shadows,
        comparison and drift, :mod:`stream_scorer.monitoring`)."""
        self._decoder = decoder
        self.models = models
        self._encoder = encoder
        self._alert_topic = alert_topic
        self._dead_letter_topic = dead_letter_topic
        self._dead_letters = dead_letters or DeadLetterWriter(scorer_version)
        self._metrics = metrics
        self._clock_ms = clock_ms
        self._monitor = monitor

    def process(self, batch: Batch) -> BatchOutput:
        """Score one batch; return its alerts and dead letters to publish, and its result.

        Raises:
            FatalError: Model down, unreachable registry: do not commit.
        """
        result = BatchResult(consumed=len(batch))
        if not len(batch):
            return BatchOutput(batch, [], result)
        models = self.models.current  # read once: a swap takes effect at the next batch
        champion = models.champion
        stage_s = result.stage_s
        tick = time.perf_counter()
        decoded = self._decoder.decode(cast(Sequence[SourceRecord], batch), models.fields)
        rejected = list(decoded.rejected)
        stage_s["decode"] = time.perf_counter() - tick

        decision = score_and_flag(champion, decoded, stage_s)
        # Canary hook (issue 11): the canary decides the events whose key hashes into its share.
        deciders = [(champion, decision)]
        if models.canary is not None and models.canary_fraction > 0:
            decision, canary_decision = canary_split(
                decision,
                score_and_flag(models.canary, decoded, stage_s),
                decoded.records,
                models.canary_fraction,
            )
            deciders = [(champion, decision), (models.canary, canary_decision)]
        for _, decided in deciders:
            rejected.extend(decided.rejected)
        if decision.bisected and self._metrics is not None:
            self._metrics.model_bisections.inc()

        tick = time.perf_counter()
        alerts, unreadable = [], []
        result.scored_by = {}
        for model, decided in deciders:
            flagged_rows = decided.rows[decided.flagged]
            model_alerts, model_unreadable = materialise_alerts(
                decoded,
                flagged_rows.tolist(),
                decided.scores[decided.flagged],
                FLAG,
                model.threshold,
                model.name,
                model.version,
                self._clock_ms(),
            )
            alerts.extend(model_alerts)
            unreadable.extend(model_unreadable)
            result.scored_by[model.label] = len(decided.rows) - len(model_unreadable)
        rejected.extend(unreadable)
        tock = time.perf_counter()
        stage_s["materialise"], tick = tock - tick, tock

        messages: list[Outgoing] = [
            (self._alert_topic, key, value, headers)
            for key, value, headers in self._encoder.encode_all(alerts)
        ]
        for reject in rejected:
            key, value, headers = self._dead_letters.message(reject)
            messages.append((self._dead_letter_topic, key, value, headers))
        stage_s["encode"] = time.perf_counter() - tick

        result.scored = sum(len(d.rows) for _, d in deciders) - len(unreadable)
        result.flagged = len(alerts)
        result.unflagged = sum(d.unflagged for _, d in deciders)
        result.dead_lettered = len(rejected)
        result.alerts = alerts
        result.rejected = rejected
        accounted = result.flagged + result.unflagged + result.dead_lettered
        if accounted != result.consumed:  # a bug, never bad input: stop before committing
            msg = f"batch accounting: {result.consumed} consumed but {accounted} accounted for"
            raise AssertionError(msg)
        self._log_rejects(rejected)
        self._observe(result, champion)
        # Monitoring hook (issue 11): shadows, comparison, drift on the decoded batch, after
        # the output is final; it never raises and never changes what is published.
        if self._monitor is not None:
            self._monitor.observe(models, decoded, decision, stage_s)
        return BatchOutput(batch, messages, result)

    @staticmethod
    def _log_rejects(rejected: list[Rejected]) -> None:
        for reject in rejected:
            log.warning(
                "record_rejected",
                partition=f"{reject.source.topic}[{reject.source.partition}]",
                offset=reject.source.offset,
                stage=reject.stage,
                error_type=reject.error_type,
                reason=reject.message[:200],
            )

    def _observe(self, result: BatchResult, model: LoadedModel) -> None:
        metrics = self._metrics
        if metrics is None:
            return
        metrics.batch_size.observe(result.consumed)
        labels = {"model_name": model.name, "model_version": model.version}
        metrics.records_scored.labels(**labels).inc(result.scored)
        metrics.records_flagged.labels(**labels).inc(result.flagged)
        for reject in result.rejected:
            metrics.records_dead_lettered.labels(
                stage=reject.stage, error_type=reject.error_type
            ).inc()
