"""Offline scoring behind ``stream-scorer score-file``: the same scores the stream gives.

Reads an Avro object container file, runs the same featurize → score → flag stages with the
same model, binding and threshold the service builds from the same settings, in batches of
``batch.max_size``, and writes one result per event as JSON lines or an Avro container file.
Events the stream would dead-letter are reported with their reason instead of a score. Tests
use it as the reference the stream is checked against.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import fastavro
import numpy as np

from stream_scorer.encode import EVENT_ID_FIELD
from stream_scorer.errors import ModelError
from stream_scorer.pipeline import LoadedModel
from stream_scorer.records import Event, SourceRecord

__all__ = ["SCORE_SCHEMA", "OfflineResult", "score_events", "score_file"]

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
    events: Iterable[dict[str, Any]], model: LoadedModel, batch_size: int
) -> Iterator[OfflineResult]:
    """Score decoded events in batches; yield one result dict per event, in input order."""
    index = 0
    for chunk in _batches(events, batch_size):
        wrapped = [
            Event(SourceRecord(FILE_TOPIC, 0, index + i, None, None), fields)
            for i, fields in enumerate(chunk)
        ]
        yield from _score_chunk(wrapped, model)
        index += len(chunk)


def _score_chunk(events: Sequence[Event], model: LoadedModel) -> Iterator[OfflineResult]:
    inputs, kept, rejected = model.features.build_inputs(events)
    reasons = {r.source.offset: r.message for r in rejected}
    try:
        scores = model.scorer.score(inputs)
        by_offset = {e.source.offset: float(s) for e, s in zip(kept, scores, strict=True)}
    except ModelError:
        # Same policy as the stream: score what the model takes, one event at a time.
        by_offset = {}
        for event in kept:
            single, _, _ = model.features.build_inputs([event])
            try:
                by_offset[event.source.offset] = float(model.scorer.score(single)[0])
            except ModelError as exc:
                reasons[event.source.offset] = str(exc)
    for event in events:
        offset = event.source.offset
        score = by_offset.get(offset)
        valid = score is not None and bool(np.isfinite(score)) and 0.0 <= score <= 1.0
        yield {
            "index": offset,
            "event_id": _event_id(event.fields),
            "score": score if valid else None,
            "flagged": bool(valid and score is not None and score >= model.threshold),
            "threshold": model.threshold,
            "model_name": model.name,
            "model_version": model.version,
            "error": None if valid else reasons.get(offset, f"model returned {score!r}"),
        }


def _event_id(fields: dict[str, Any]) -> str | None:
    value = fields.get(EVENT_ID_FIELD)
    return None if value is None else str(value)


def score_file(
    source: Path, model: LoadedModel, batch_size: int, out: IO[str] | Path | None
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
        results = counted(score_events(events, model, batch_size))
        if isinstance(out, Path) and out.suffix == ".avro":
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
