"""Offline scoring behind ``stream-scorer score-file``: the same scores the stream gives.

Reads an Avro object container file, runs the stream's scoring policy
(:func:`~stream_scorer.pipeline.score_and_flag`: featurize, score with the same bisection, the
card's decision policy: bands, top-k classes, regression values) with the same model, binding,
threshold and event fields the service builds from the same settings, in batches of
``batch.max_size``, and writes one result per event (score, band, published or not, top classes)
as JSON lines or an Avro container file. Events the stream would dead-letter are reported with
their reason instead of a score. Tests use it as the reference the stream is checked against.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import fastavro

from stream_scorer.encode import EventFields
from stream_scorer.model_set import LoadedModel
from stream_scorer.pipeline import ModelDecision, score_and_flag
from stream_scorer.records import DecodedBatch, Event, SourceRecord

__all__ = ["SCORE_SCHEMA", "OfflineResult", "decision_results", "score_events", "score_file"]

#: Schema of ``score-file``'s Avro output: one record per input event.
SCORE_SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "OfflineScore",
    "namespace": "io.streamscorer.results",
    "fields": [
        {"name": "index", "type": "long"},
        {"name": "event_id", "type": ["null", "string"], "default": None},
        {"name": "score", "type": ["null", "double"], "default": None},
        {"name": "flagged", "type": "boolean"},
        {"name": "threshold", "type": "double"},
        {"name": "band", "type": ["null", "string"], "default": None},
        {
            "name": "classes",
            "type": {
                "type": "array",
                "items": {
                    "type": "record",
                    "name": "OfflineClass",
                    "fields": [
                        {"name": "label", "type": "string"},
                        {"name": "probability", "type": "double"},
                    ],
                },
            },
            "default": [],
        },
        {"name": "model_name", "type": "string"},
        {"name": "model_version", "type": "string"},
        {"name": "error", "type": ["null", "string"], "default": None},
    ],
}
#: Pseudo-topic naming the file in lineage of offline results.
FILE_TOPIC = "score-file"

OfflineResult = dict[str, Any]


def _batches(items: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def score_events(
    events: Iterable[dict[str, Any]],
    model: LoadedModel,
    batch_size: int,
    fields: EventFields | None = None,
) -> Iterator[OfflineResult]:
    """Score decoded events in batches; yield one result dict per event, in input order.

    ``fields`` names the event-id field (as the stream's alerts do); without it the event id
    is the model card's ``event.id_field``, if any.
    """
    if fields is None:
        fields = EventFields(id_field=model.card.event_id_field)
    index = 0
    for chunk in _batches(events, batch_size):
        wrapped = [
            Event(SourceRecord(FILE_TOPIC, 0, index + i, None, None), event)
            for i, event in enumerate(chunk)
        ]
        yield from _score_chunk(wrapped, model, fields)
        index += len(chunk)


def _score_chunk(
    events: Sequence[Event], model: LoadedModel, fields: EventFields
) -> Iterator[OfflineResult]:
    """The stream's policy (:func:`~stream_scorer.pipeline.score_and_flag`) on one chunk."""
    decoded = DecodedBatch.from_events(events, model.features.fields)
    decision = score_and_flag(model, decoded)
    reasons = {r.source.offset - events[0].source.offset: r.message for r in decision.rejected}
    yield from decision_results(
        model,
        decision,
        [event.source.offset for event in events],
        [_event_id(event, fields) for event in events],
        reasons,
    )


def decision_results(
    model: LoadedModel,
    decision: ModelDecision,
    indices: Sequence[int],
    ids: Sequence[str | None],
    reasons: Mapping[int, str],
) -> list[OfflineResult]:
    """``score-file``'s result for every row of a scored batch, from the model's decision.

    Args:
        model: The model that decided.
        decision: Its decision (:func:`~stream_scorer.pipeline.score_and_flag`).
        indices: Each row's ``index`` field.
        ids: Each row's event id (None where the event has none).
        reasons: Why a row has no score, by row (rejected by featurize or the model).
    """
    policy = decision.policy
    assert policy is not None and decision.bands is not None  # noqa: S101 - set by score_and_flag
    rows = decision.rows.tolist()
    scores: dict[int, float] = dict(zip(rows, decision.scores.tolist(), strict=True))
    bands = dict(zip(rows, [policy.names[b] for b in decision.bands.tolist()], strict=True))
    classes: dict[int, list[dict[str, Any]]] = {}
    if decision.top is not None:
        columns, probabilities = decision.top
        for row, cols, probs in zip(rows, columns.tolist(), probabilities.tolist(), strict=True):
            classes[row] = [
                {"label": policy.labels[c], "probability": p}
                for c, p in zip(cols, probs, strict=True)
            ]
    flagged = set(decision.rows[decision.flagged].tolist())
    out: list[OfflineResult] = []
    for row, (index, event_id) in enumerate(zip(indices, ids, strict=True)):
        score = scores.get(row)
        out.append({
            "index": index,
            "event_id": event_id,
            "score": score,
            "flagged": row in flagged,
            "threshold": policy.threshold,
            "band": bands.get(row),
            "classes": classes.get(row, []),
            "model_name": model.name,
            "model_version": model.version,
            "error": None if score is not None else reasons.get(row, "not scored"),
        })  # fmt: skip
    return out


def _event_id(event: Event, fields: EventFields) -> str | None:
    if fields.id_field is None:
        return None
    value = event.fields.get(fields.id_field)
    return None if value is None else str(value)


def score_file(
    source: Path,
    model: LoadedModel,
    batch_size: int,
    out: IO[str] | Path | None,
    fields: EventFields | None = None,
) -> dict[str, int]:
    """Score an Avro container file; write JSON lines to a stream or an ``.avro``/``.jsonl`` path.

    Returns:
        Counts: events, flagged, errors.
    """
    counts = {"events": 0, "flagged": 0, "errors": 0}

    def counted(results: Iterator[OfflineResult]) -> Iterator[OfflineResult]:
        for result in results:
            counts["events"] += 1
            counts["flagged"] += result["flagged"]
            counts["errors"] += result["error"] is not None
            yield result

    with source.open("rb") as fh:
        events: Iterable[dict[str, Any]] = fastavro.reader(fh)  # type: ignore[assignment]  # records of a record schema are dicts
        results = counted(score_events(events, model, batch_size, fields))
        if isinstance(out, Path) and out.suffix.lower() == ".avro":
            with out.open("wb") as avro_sink:
                fastavro.writer(avro_sink, fastavro.parse_schema(SCORE_SCHEMA), results)
        elif isinstance(out, Path):
            with out.open("w", encoding="utf-8") as text_sink:
                _write_jsonl(results, text_sink)
        elif out is not None:
            _write_jsonl(results, out)
    return counts


def _write_jsonl(results: Iterable[OfflineResult], sink: IO[str]) -> None:
    for result in results:
        sink.write(json.dumps(result) + "\n")
