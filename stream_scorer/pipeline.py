"""Runs stages 2–7 on one micro-batch; the only module that knows their order.

``decode → featurize → score → flag → encode → publish (results + dead letters) → flush``.
A :class:`~stream_scorer.errors.RecordError` (or a reject a stage returns) becomes a dead
letter and the batch goes on; anything else propagates and the runner stops without
committing. When the model fails on a batch, the batch is bisected to isolate the events that
make it fail; those are dead-lettered and the rest scored. When it fails on a known-good canary
row too, the model itself is down: that is fatal.

Every consumed record ends as exactly one of: published alert, unflagged (counted), or dead
letter; :meth:`Pipeline.process` checks that the three add up.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, overload

import numpy as np
import structlog
from numpy.typing import NDArray

from stream_scorer.dead_letter import dead_letter_message
from stream_scorer.decode import Decoder
from stream_scorer.encode import AlertEncoder
from stream_scorer.errors import ModelError
from stream_scorer.featurize import FeatureBuilder, ModelInputs
from stream_scorer.flag import flag_events
from stream_scorer.metrics import ScorerMetrics
from stream_scorer.records import (
    DecodedBatch,
    Event,
    Header,
    MessageBatch,
    Rejected,
    Scored,
    SourceRecord,
)
from stream_scorer.score import Scorer

__all__ = ["BatchResult", "LoadedModel", "Pipeline", "Sink", "event_timestamps_ms", "latencies_s"]

log = structlog.get_logger(__name__)


class Sink(Protocol):
    """Where results and dead letters go (the :class:`ResultPublisher`)."""

    def produce(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Sequence[Header]
    ) -> None:
        """Queue one message."""
        ...

    def poll(self) -> None:
        """Serve delivery callbacks."""
        ...

    def flush(self) -> None:
        """Wait for every acknowledgement; raise on any failure."""
        ...


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A model ready to serve: its scorer, input builder, threshold and a canary input."""

    scorer: Scorer
    features: FeatureBuilder
    threshold: float
    canary: ModelInputs

    @property
    def name(self) -> str:
        """Model name from the card."""
        return self.scorer.card.name

    @property
    def version(self) -> str:
        """Model version from the card."""
        return self.scorer.card.version


@dataclass(slots=True)
class BatchResult:
    """What one batch came to."""

    consumed: int = 0
    scored: int = 0
    flagged: int = 0
    unflagged: int = 0
    dead_lettered: int = 0
    stage_s: dict[str, float] = field(default_factory=dict)
    alerts: list[Scored] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    #: Event timestamp → results acknowledged, per record with a timestamp, in seconds.
    latencies_s: NDArray[np.float64] = field(default_factory=lambda: np.empty(0))


def event_timestamps_ms(records: Sequence[SourceRecord]) -> NDArray[np.int64]:
    """Broker timestamps of the records that have one (epoch ms)."""
    if not records:
        return np.empty(0, np.int64)
    if isinstance(records, MessageBatch):
        timestamps = records.timestamps_ms
    else:  # transposed in C: one pass of zip instead of a generator over every record
        timestamps = np.asarray(tuple(zip(*records, strict=True))[6], dtype=np.int64)
    return timestamps[timestamps > 0]


def latencies_s(records: Sequence[SourceRecord], now_ms: int) -> NDArray[np.float64]:
    """Event timestamp → ``now_ms`` per record with a timestamp, in seconds."""
    return (now_ms - event_timestamps_ms(records)) / 1000.0


def _take(inputs: ModelInputs, rows: NDArray[np.intp]) -> ModelInputs:
    return {name: array[rows] for name, array in inputs.items()}


class _ScoredRows(Sequence[Event]):
    """The events behind the model's rows; each is decoded whole only when touched (flagged
    or dead-lettered), which is the point of decoding columns first."""

    def __init__(self, batch: DecodedBatch, rows: NDArray[np.intp]) -> None:
        self._batch = batch
        self._rows: list[int] = rows.tolist()

    def __len__(self) -> int:
        return len(self._rows)

    @overload
    def __getitem__(self, index: int) -> Event: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Event]: ...
    def __getitem__(self, index: int | slice) -> Event | Sequence[Event]:
        if isinstance(index, slice):
            return [self._batch.event_at(row) for row in self._rows[index]]
        return self._batch.event_at(self._rows[index])

    def source(self, index: int) -> SourceRecord:
        """The source record of row ``index``, without decoding the event."""
        return self._batch.records[self._rows[index]]

    def without(self, rows: NDArray[np.bool_]) -> _ScoredRows:
        """The same view minus the rows where ``rows`` is False."""
        return _ScoredRows(self._batch, np.asarray(self._rows, dtype=np.intp)[rows])


class Pipeline:
    """Scores micro-batches; the model can be swapped between batches."""

    def __init__(
        self,
        decoder: Decoder,
        model: LoadedModel,
        encoder: AlertEncoder,
        sink: Sink,
        alert_topic: str,
        dead_letter_topic: str,
        scorer_version: str,
        metrics: ScorerMetrics | None = None,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        """Wire the stages together."""
        self._decoder = decoder
        self._model = model
        self._encoder = encoder
        self._sink = sink
        self._alert_topic = alert_topic
        self._dead_letter_topic = dead_letter_topic
        self._scorer_version = scorer_version
        self._metrics = metrics
        self._clock_ms = clock_ms

    @property
    def model(self) -> LoadedModel:
        """The model serving now."""
        return self._model

    def swap_model(self, model: LoadedModel) -> None:
        """Serve ``model`` from the next batch on (a batch reads the model once)."""
        self._model = model

    def _score(
        self, model: LoadedModel, inputs: ModelInputs, n: int
    ) -> tuple[NDArray[np.float64], dict[int, str]]:
        """Scores for all rows; rows the model fails on get NaN and a reason."""
        try:
            return model.scorer.score(inputs), {}
        except ModelError as exc:
            first_error = str(exc)
        if self._metrics is not None:
            self._metrics.model_bisections.inc()
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
        log.warning("model_failed_on_events", bad_events=len(bad), batch_size=n)
        return scores, bad

    def process(self, records: Sequence[SourceRecord], wait_acks: bool = True) -> BatchResult:
        """Score one batch, publish its alerts and dead letters, and wait for every ack.

        With ``wait_acks=False`` the messages are only queued: the caller tracks their
        acknowledgements (the pipelined run loop) and the result's latencies stay empty, to be
        measured when the batch is acknowledged.

        Raises:
            FatalError: Model down, publish failure, unreachable registry: do not commit.
        """
        result = BatchResult(consumed=len(records))
        if not records:
            return result
        model = self._model  # read once: a swap takes effect at the next batch
        stage_s = result.stage_s
        tick = time.perf_counter()

        batch = self._decoder.decode(records, model.features.fields)
        rejected = list(batch.rejected)
        tock = time.perf_counter()
        stage_s["decode"], tick = tock - tick, tock

        inputs, rows, feature_rejects = model.features.build_batch_inputs(batch)
        events = _ScoredRows(batch, rows)
        rejected.extend(feature_rejects)
        tock = time.perf_counter()
        stage_s["featurize"], tick = tock - tick, tock

        scores, model_bad = self._score(model, inputs, len(events))
        tock = time.perf_counter()
        stage_s["score"], tick = tock - tick, tock

        if model_bad:
            rejected.extend(
                Rejected(events.source(i), "score", "ModelError", reason)
                for i, reason in sorted(model_bad.items())
            )
            keep = np.ones(len(events), dtype=bool)
            keep[list(model_bad)] = False
            events = events.without(keep)
            scores = scores[keep]
        flagged, unflagged, score_rejects = flag_events(
            events, scores, model.threshold, model.name, model.version, self._clock_ms()
        )
        rejected.extend(score_rejects)
        tock = time.perf_counter()
        stage_s["flag"], tick = tock - tick, tock

        outgoing = [self._encoder.encode(scored) for scored in flagged]
        tock = time.perf_counter()
        stage_s["encode"], tick = tock - tick, tock

        self._publish(outgoing, rejected, wait_acks)
        tock = time.perf_counter()
        stage_s["publish"] = tock - tick

        result.scored = len(events) - len(score_rejects)
        result.flagged = len(flagged)
        result.unflagged = unflagged
        result.dead_lettered = len(rejected)
        result.alerts = flagged
        result.rejected = rejected
        accounted = result.flagged + result.unflagged + result.dead_lettered
        if accounted != result.consumed:  # a bug, never bad input: stop before committing
            msg = f"batch accounting: {result.consumed} consumed but {accounted} accounted for"
            raise AssertionError(msg)
        if wait_acks:
            result.latencies_s = latencies_s(records, self._clock_ms())
        self._observe(result, model)
        return result

    def _publish(self, outgoing: list[Any], rejected: list[Rejected], wait_acks: bool) -> None:
        for key, value, headers in outgoing:
            self._sink.produce(self._alert_topic, key, value, headers)
        for reject in rejected:
            key, value, headers = dead_letter_message(reject, self._scorer_version)
            self._sink.produce(self._dead_letter_topic, key, value, headers)
            log.warning(
                "record_rejected",
                partition=f"{reject.source.topic}[{reject.source.partition}]",
                offset=reject.source.offset,
                stage=reject.stage,
                error_type=reject.error_type,
                reason=reject.message[:200],
            )
        if wait_acks:
            self._sink.flush()

    def _observe(self, result: BatchResult, model: LoadedModel) -> None:
        metrics = self._metrics
        if metrics is None:
            return
        metrics.batch_size.observe(result.consumed)
        for stage, seconds in result.stage_s.items():
            metrics.stage_duration.labels(stage=stage).observe(seconds)
        labels: Mapping[str, str] = {"model_name": model.name, "model_version": model.version}
        metrics.records_scored.labels(**labels).inc(result.scored)
        metrics.records_flagged.labels(**labels).inc(result.flagged)
        for reject in result.rejected:
            metrics.records_dead_lettered.labels(
                stage=reject.stage, error_type=reject.error_type
            ).inc()
        metrics.end_to_end_latency.observe_many(result.latencies_s)
