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
from stream_scorer.decision import DecisionPolicy
from stream_scorer.decode import Decoder
from stream_scorer.encode import AlertEncoder, ScoreEncoder, ScoreRows
from stream_scorer.errors import ModelError
from stream_scorer.featurize import ModelInputs
from stream_scorer.flag import flag_scores
from stream_scorer.materialise import materialise_alerts
from stream_scorer.metrics import ScorerMetrics
from stream_scorer.model_set import LiveModels, LoadedModel, ModelSet
from stream_scorer.monitoring.canary import CanaryBatch
from stream_scorer.monitoring.canary import split as canary_split
from stream_scorer.monitoring.monitor import Monitor
from stream_scorer.records import (
    Batch,
    BatchOutput,
    BatchResult,
    DecodedBatch,
    Outgoing,
    Rejected,
    Scored,
    SourceRecord,
)

__all__ = [
    "SHADOW_HEADER",
    "ModelDecision",
    "Pipeline",
    "decision_policy",
    "score_and_flag",
    "score_with_bisection",
]

log = structlog.get_logger(__name__)

#: Marks a shadow's alert on ``monitoring.shadow_topic``: it was never published as an alert.
SHADOW_HEADER: tuple[str, bytes] = ("stream-scorer-role", b"shadow")


@dataclass(frozen=True, slots=True)
class ModelDecision:
    """What one model made of a decoded batch."""

    #: Batch rows with a valid score, ascending; ``scores[i]`` belongs to ``rows[i]``.
    rows: NDArray[np.intp]
    #: The decision value per row (probability, top class's probability, or value).
    scores: NDArray[np.float64]
    #: Positions in ``rows``/``scores`` whose band publishes.
    flagged: NDArray[np.intp]
    #: Valid scores in bands that do not publish.
    unflagged: int
    #: Rows the model could not take (featurize), failed on (score) or gave no probability.
    rejected: list[Rejected]
    #: True when the model failed on the whole batch and it was bisected.
    bisected: bool
    #: The policy that decided (the card's, at the model's threshold).
    policy: DecisionPolicy | None = None
    #: The band index per row.
    bands: NDArray[np.intp] | None = None
    #: Valid rows per band, by band index.
    band_counts: NDArray[np.intp] | None = None
    #: Multiclass: the top classes per row (column indices) and their probabilities.
    top: tuple[NDArray[np.intp], NDArray[np.float64]] | None = None

    def published_classes(self) -> list[tuple[tuple[str, float], ...]] | None:
        """The ``(label, probability)`` top classes of each published row (multiclass)."""
        if self.top is None or self.policy is None:
            return None
        labels = self.policy.labels
        columns, probabilities = self.top
        return [
            tuple(zip([labels[c] for c in cols], probs, strict=True))
            for cols, probs in zip(
                columns[self.flagged].tolist(), probabilities[self.flagged].tolist(), strict=True
            )
        ]


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
    scores: NDArray[np.float64] | None = None  # [n] or [n, C]: shaped by the first good half
    bad: dict[int, str] = {}
    pending: list[tuple[NDArray[np.intp], str]] = [(np.arange(n), first_error)]
    while pending:
        rows, error = pending.pop()
        if len(rows) == 1:
            bad[int(rows[0])] = error
            continue
        for half in (rows[: len(rows) // 2], rows[len(rows) // 2 :]):
            try:
                part = model.scorer.score(_take(inputs, half))
            except ModelError as exc:
                pending.append((half, str(exc)))
                continue
            if scores is None:
                scores = np.full((n, *part.shape[1:]), np.nan)
            scores[half] = part
    if len(bad) == n:
        # Every event fails alone: either they are all bad or the model is down.
        canary = model.scorer.score(model.canary)  # raises ModelError when the model is down
        scores = np.full((n, *canary.shape[1:]), np.nan)
    log.warning("model_failed_on_events", model=model.label, bad_events=len(bad), batch_size=n)
    assert scores is not None  # noqa: S101 - some half scored, or the canary did
    return scores, bad


def decision_policy(model: LoadedModel) -> DecisionPolicy:
    """The policy a model decides by: its card's, at the model's threshold (plain cards)."""
    return model.card.policy.at_threshold(model.threshold)


def score_and_flag(
    model: LoadedModel, batch: DecodedBatch, stage_s: dict[str, float] | None = None
) -> ModelDecision:
    """The scoring policy: featurize, score (bisecting a failing batch), decide by the card.

    Args:
        model: The model that decides.
        batch: Decoded columns with at least the model's bound fields.
        stage_s: Where to add the featurize, score and flag times, when given.
    """
    policy = decision_policy(model)
    tick = time.perf_counter()
    inputs, rows, rejected = model.features.build_batch_inputs(batch)
    tock = time.perf_counter()
    featurize_s, tick = tock - tick, tock

    outputs, model_bad = score_with_bisection(model, inputs, len(rows))
    tock = time.perf_counter()
    score_s, tick = tock - tick, tock

    if model_bad:
        rejected.extend(
            Rejected(batch.records[int(rows[i])], "score", "ModelError", reason)
            for i, reason in sorted(model_bad.items())
        )
        keep = np.ones(len(rows), dtype=bool)
        keep[list(model_bad)] = False
        rows, outputs = rows[keep], outputs[keep]
    decisions = flag_scores(outputs, policy)
    if decisions.invalid.size:
        what = "a probability" if policy.is_probability else "a finite value"
        rejected.extend(
            Rejected(
                batch.records[int(rows[i])],
                "score",
                "ModelError",
                f"model returned {_shown(outputs[i])}, not {what}",
            )
            for i in decisions.invalid.tolist()
        )
        keep = np.ones(len(rows), dtype=bool)
        keep[decisions.invalid] = False
        rows, outputs = rows[keep], outputs[keep]
        decisions = flag_scores(outputs, policy)
    top = policy.top_classes(outputs) if policy.output == "multiclass" else None
    if stage_s is not None:
        stage_s["featurize"] = stage_s.get("featurize", 0.0) + featurize_s
        stage_s["score"] = stage_s.get("score", 0.0) + score_s
        stage_s["flag"] = stage_s.get("flag", 0.0) + time.perf_counter() - tick
    return ModelDecision(
        rows,
        decisions.values,
        decisions.flagged,
        decisions.unflagged,
        rejected,
        bool(model_bad),
        policy,
        decisions.bands,
        decisions.band_counts,
        top,
    )


def _add_stages(stage_s: dict[str, float], more: dict[str, float]) -> None:
    for stage, seconds in more.items():
        stage_s[stage] = stage_s.get(stage, 0.0) + seconds


def _dropped(
    decoded: DecodedBatch, decision: ModelDecision, unreadable: list[Rejected]
) -> NDArray[np.intp]:
    """Positions (in ``decision.rows``) of published rows that did not decode whole."""
    if not unreadable:
        return np.empty(0, dtype=np.intp)
    sources = {r.source for r in unreadable}
    return np.array(
        [p for p in decision.flagged.tolist() if decoded.records[decision.rows[p]] in sources],
        dtype=np.intp,
    )


def _shown(output: NDArray[np.float64]) -> str:
    """One row's output as a dead letter's reason shows it."""
    return repr(float(output)) if output.ndim == 0 else repr(output.tolist())


def _materialise(
    decoded: DecodedBatch, model: LoadedModel, decided: ModelDecision, scored_time_ms: int
) -> tuple[list[Scored], list[Rejected]]:
    """The alerts of one deciding model's published rows, named by its bands."""
    policy = decided.policy
    assert policy is not None and decided.bands is not None  # noqa: S101 - set by score_and_flag
    published_bands = decided.bands[decided.flagged]
    return materialise_alerts(
        decoded,
        decided.rows[decided.flagged].tolist(),
        decided.scores[decided.flagged],
        [policy.bands[b].name for b in published_bands.tolist()],
        policy.lowers[published_bands].tolist(),
        model.name,
        model.version,
        scored_time_ms,
        decided.published_classes(),
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
        scores_topic: str | None = None,
        score_encoder: ScoreEncoder | None = None,
        monitor: Monitor | None = None,
        shadow_topic: str | None = None,
    ) -> None:
        """Wire the stages together (``dead_letters`` carries the privacy policy and the
        payload cipher; plain dead letters when not given). With ``scores_topic`` and
        ``score_encoder``, every scored event also gets a score record on that topic (of the
        champion's rows). ``monitor`` watches shadows, comparison and drift
        (:mod:`stream_scorer.monitoring`); with ``shadow_topic`` too, the shadows' flagged
        events go there as alerts marked shadow (:data:`SHADOW_HEADER`)."""
        self._monitor = monitor
        self._shadow_topic = shadow_topic
        self._monitor_fields = () if monitor is None else monitor.needed_fields
        if (scores_topic is None) != (score_encoder is None):
            msg = "a scores topic and a score encoder go together"
            raise ValueError(msg)
        self._scores_topic = scores_topic
        self._score_encoder = score_encoder
        self._decoder = decoder
        self.models = models
        self._encoder = encoder
        self._alert_topic = alert_topic
        self._dead_letter_topic = dead_letter_topic
        self._dead_letters = dead_letters or DeadLetterWriter(scorer_version)
        self._metrics = metrics
        self._clock_ms = clock_ms

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
        decoded = self._decoder.decode(
            cast(Sequence[SourceRecord], batch), self._decode_fields(models)
        )
        rejected = list(decoded.rejected)
        stage_s["decode"] = time.perf_counter() - tick

        deciders, whole = self._decide(models, decoded, stage_s)
        decision = deciders[0][1]  # the champion's
        for _, decided in deciders:
            rejected.extend(decided.rejected)

        tick = time.perf_counter()
        scored_time_ms = self._clock_ms()
        alerts: list[Scored] = []
        unreadable: list[Rejected] = []
        for model, decided in deciders:
            model_alerts, model_unreadable = _materialise(decoded, model, decided, scored_time_ms)
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
        messages.extend(self._dead_letter_messages(rejected, deciders))
        stage_s["encode"] = time.perf_counter() - tick
        dropped = _dropped(decoded, decision, unreadable)
        if self._score_encoder is not None:
            tick = time.perf_counter()
            messages.extend(self._score_messages(decoded, decision, dropped, scored_time_ms))
            stage_s["scores"] = time.perf_counter() - tick

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
        self._observe(result, champion, decision, dropped)
        # Monitoring hook (issue 11): shadows, comparison, drift on the decoded batch, after
        # the output is final; it never raises and never changes what the champion publishes
        # (the shadow topic's messages come after it).
        if self._monitor is not None:
            shadowed = self._monitor.observe(
                models, decoded, decision, stage_s, canary=whole, others=deciders[1:]
            )
            messages.extend(self._shadow_messages(decoded, shadowed, scored_time_ms))
        return BatchOutput(batch, messages, result)

    def _decode_fields(self, models: ModelSet) -> tuple[str, ...]:
        """The fields decode gathers: the set's models', plus the event id and key when score
        records are written, plus the event id when labels are joined."""
        fields = models.fields
        if self._score_encoder is not None:  # score records name every event's id and key
            fields = (*fields, *self._score_encoder.needed_fields())
        if self._monitor_fields:  # labels name events by their id
            fields = (*fields, *self._monitor_fields)
        return tuple(dict.fromkeys(fields)) if len(fields) > len(models.fields) else fields

    def _shadow_messages(
        self,
        decoded: DecodedBatch,
        shadowed: list[tuple[LoadedModel, ModelDecision]],
        scored_time_ms: int,
    ) -> list[Outgoing]:
        """The shadows' flagged events as alerts for the shadow topic (none without one),
        after everything the champion publishes (so its messages and their order never
        change). A flagged event that does not decode whole is left out (its dead letter is
        the champion's business); a failure here is counted as a monitoring error and the
        batch goes on without them."""
        if self._shadow_topic is None or not shadowed:
            return []
        assert self._monitor is not None  # noqa: S101 - shadows are scored by the monitor
        try:
            out: list[Outgoing] = []
            for model, decided in shadowed:
                alerts, _ = _materialise(decoded, model, decided, scored_time_ms)
                out.extend(
                    (self._shadow_topic, key, value, [*headers, SHADOW_HEADER])
                    for key, value, headers in self._encoder.encode_all(alerts)
                )
        except Exception:  # a shadow must never stop what the champion publishes
            log.exception("shadow_topic_failed", models=[m.label for m, _ in shadowed])
            self._monitor.count_error()
            return []
        return out

    def _dead_letter_messages(
        self, rejected: list[Rejected], deciders: list[tuple[LoadedModel, ModelDecision]]
    ) -> list[Outgoing]:
        """Dead letters, each naming the model version that decided its event (the champion,
        the version live for this batch, for those no model decided)."""
        champion = deciders[0][0]
        decided_by = {id(r): model for model, decided in deciders for r in decided.rejected}
        out: list[Outgoing] = []
        for reject in rejected:
            model = decided_by.get(id(reject), champion)
            key, value, headers = self._dead_letters.message(reject, (model.name, model.version))
            out.append((self._dead_letter_topic, key, value, headers))
        return out

    def _decide(
        self, models: ModelSet, decoded: DecodedBatch, stage_s: dict[str, float]
    ) -> tuple[list[tuple[LoadedModel, ModelDecision]], CanaryBatch | None]:
        """The models that decide this batch and what each decided, champion first.

        Canary hook (issue 11): the canary decides the events whose key hashes into its
        share; the champion the rest. Both score the whole batch: the whole decisions (and
        each model's own featurize + score time) go to the monitor's comparison and rules.
        """
        champion = models.champion
        champion_s: dict[str, float] = {}
        decision = score_and_flag(champion, decoded, champion_s)
        if decision.bisected and self._metrics is not None:
            self._metrics.model_bisections.inc()
        if models.canary is None or models.canary_fraction <= 0:
            _add_stages(stage_s, champion_s)
            return [(champion, decision)], None
        canary_s: dict[str, float] = {}
        whole = CanaryBatch(decision, score_and_flag(models.canary, decoded, canary_s),
                            champion_s, canary_s)  # fmt: skip
        _add_stages(stage_s, champion_s)
        _add_stages(stage_s, canary_s)
        decision, canary_decision = canary_split(
            whole.champion, whole.canary, decoded.records, models.canary_fraction
        )
        return [(champion, decision), (models.canary, canary_decision)], whole

    def _score_messages(
        self,
        decoded: DecodedBatch,
        decision: ModelDecision,
        dropped: NDArray[np.intp],
        scored_time_ms: int,
    ) -> list[Outgoing]:
        """One score record per scored event (not the ``dropped`` positions: published rows
        that failed to decode whole, dead letters instead), in batch order, keyed like alerts."""
        assert self._score_encoder is not None and self._scores_topic is not None  # noqa: S101
        assert decision.policy is not None and decision.bands is not None  # noqa: S101
        keep: NDArray[np.intp] | slice = slice(None)
        if dropped.size:
            keep = np.setdiff1d(np.arange(len(decision.rows)), dropped)
        top = decision.top
        encoded = self._score_encoder.encode_rows(
            ScoreRows(
                decoded.records,
                decision.rows[keep],
                decision.scores[keep],
                decision.bands[keep],
                None if top is None else (top[0][keep], top[1][keep]),
                decoded.columns,
            ),
            decision.policy,
            self.models.current.champion.name,
            self.models.current.champion.version,
            scored_time_ms,
        )
        topic = self._scores_topic
        return [(topic, key, value, headers) for key, value, headers in encoded]

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

    def _observe(
        self,
        result: BatchResult,
        model: LoadedModel,
        decision: ModelDecision,
        dropped: NDArray[np.intp],
    ) -> None:
        metrics = self._metrics
        if metrics is None:
            return
        metrics.batch_size.observe(result.consumed)
        labels = {"model_name": model.name, "model_version": model.version}
        metrics.records_scored.labels(**labels).inc(result.scored)
        metrics.records_flagged.labels(**labels).inc(result.flagged)
        if decision.policy is not None and decision.band_counts is not None:
            counts = decision.band_counts
            if dropped.size:  # published rows that did not decode whole are dead letters
                assert decision.bands is not None  # noqa: S101 - set with band_counts
                counts = counts - np.bincount(
                    decision.bands[dropped], minlength=len(counts)
                ).astype(np.intp)
            for band, count in zip(decision.policy.names, counts.tolist(), strict=True):
                if count:
                    metrics.decisions.labels(**labels, band=band).inc(count)
        for reject in result.rejected:
            metrics.records_dead_lettered.labels(
                stage=reject.stage, error_type=reject.error_type
            ).inc()
