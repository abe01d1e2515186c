"""Offline scoring (score-file): the same model, binding and threshold as the stream."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import pytest
from numpy.typing import NDArray

from stream_scorer.app import load_model
from stream_scorer.devtools.generate import TransactionGenerator
from stream_scorer.errors import ModelError
from stream_scorer.featurize import FeatureBuilder
from stream_scorer.model_card import ModelCard
from stream_scorer.model_set import LoadedModel
from stream_scorer.offline import score_events, score_file
from stream_scorer.score import OnnxScorer
from stream_scorer.settings import load_settings

REPO_ROOT = Path(__file__).resolve().parents[2]
FRAUD_MODEL = REPO_ROOT / "models" / "fraud" / "1"
N_EVENTS = 120
POISON = 13.37


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    """The shipped model as the service loads it from settings."""
    settings = load_settings(None, overrides={"model": {"path": str(FRAUD_MODEL)}}, environ={})
    reader = json.loads((REPO_ROOT / "schemas" / "transaction.avsc").read_text(encoding="utf-8"))
    return load_model(settings, reader)


@pytest.fixture(scope="module")
def events() -> list[dict[str, Any]]:
    """Seeded synthetic transactions with enough fraud to flag some."""
    generated, _ = TransactionGenerator(seed=99, fraud_rate=0.2).generate(N_EVENTS)
    return generated


@pytest.fixture
def container(tmp_path: Path, events: list[dict[str, Any]], reader_schema: dict[str, Any]) -> Path:
    """The events in an Avro object container file."""
    path = tmp_path / "events.avro"
    with path.open("wb") as fh:
        fastavro.writer(fh, fastavro.parse_schema(reader_schema), events)
    return path


def _direct_scores(events: list[dict[str, Any]]) -> NDArray[np.float64]:
    """Scores from OnnxScorer on per-field inputs built without featurize."""
    card = ModelCard.load(FRAUD_MODEL)
    inputs: dict[str, NDArray[Any]] = {}
    for binding in card.bindings:
        values = [e[binding.field] for e in events]
        if binding.dtype == "string":
            inputs[binding.input] = np.array(values, dtype=object).reshape(-1, 1)
        else:
            floats = [np.nan if v is None else float(v) for v in values]
            inputs[binding.input] = np.array(floats, dtype=np.float32).reshape(-1, 1)
    return OnnxScorer(card, intra_op_threads=1).score(inputs)


def test_score_file_writes_one_json_line_per_event(
    container: Path, model: LoadedModel, events: list[dict[str, Any]]
) -> None:
    """Each event gets a JSON line whose score equals running the model directly."""
    out = io.StringIO()

    counts = score_file(container, model, 32, out)

    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == N_EVENTS
    assert [r["index"] for r in lines] == list(range(N_EVENTS))
    assert [r["event_id"] for r in lines] == [e["transaction_id"] for e in events]
    scores = np.array([r["score"] for r in lines], dtype=np.float64)
    np.testing.assert_allclose(scores, _direct_scores(events), rtol=0, atol=1e-6)
    assert [r["flagged"] for r in lines] == [s >= model.threshold for s in scores]
    assert all(r["error"] is None for r in lines)
    assert {(r["model_name"], r["model_version"], r["threshold"]) for r in lines} == {
        ("fraud", "1", model.threshold)
    }
    assert counts == {"events": N_EVENTS, "flagged": int(np.sum(scores >= model.threshold)),
                      "errors": 0}  # fmt: skip
    assert counts["flagged"] > 0


def test_avro_output_is_readable(container: Path, model: LoadedModel, tmp_path: Path) -> None:
    """An .avro output path gets a container file of OfflineScore records with the same scores."""
    jsonl, avro = tmp_path / "scores.jsonl", tmp_path / "scores.avro"

    score_file(container, model, 50, jsonl)
    score_file(container, model, 50, avro)

    from_json = [json.loads(line) for line in jsonl.read_text(encoding="utf-8").splitlines()]
    with avro.open("rb") as fh:
        reader = fastavro.reader(fh)
        assert reader.writer_schema is not None
        assert reader.writer_schema["name"] == "io.streamscorer.results.OfflineScore"
        from_avro = list(reader)
    assert from_avro == from_json


def test_batch_size_does_not_change_results(container: Path, model: LoadedModel) -> None:
    """Batches of 1 and of everything give the same flags and (float32-equal) scores."""
    small, large = io.StringIO(), io.StringIO()

    score_file(container, model, 1, small)
    score_file(container, model, 1000, large)

    a = [json.loads(line) for line in small.getvalue().splitlines()]
    b = [json.loads(line) for line in large.getvalue().splitlines()]
    assert [r["flagged"] for r in a] == [r["flagged"] for r in b]
    np.testing.assert_allclose([r["score"] for r in a], [r["score"] for r in b], atol=1e-6)


def test_unscorable_event_reports_its_reason(
    model: LoadedModel, events: list[dict[str, Any]]
) -> None:
    """An event the stream would dead-letter (NaN amount) gets an error and no score."""
    bad = {**events[0], "amount": float("nan")}

    results = list(score_events([events[1], bad, events[2]], model, 10))

    assert [r["error"] is None for r in results] == [True, False, True]
    assert results[1]["score"] is None
    assert results[1]["flagged"] is False
    assert "field 'amount' is not finite" in results[1]["error"]


class PoisonScorer:
    """Wraps the real scorer; the whole run fails when any row has the POISON amount."""

    def __init__(self, inner: OnnxScorer) -> None:
        """Delegate to ``inner``."""
        self.inner = inner
        self.card = inner.card

    def score(self, inputs: Mapping[str, NDArray[Any]]) -> NDArray[np.float64]:
        """The real scores, or ModelError when POISON is in the batch."""
        if np.any(inputs["amount"][:, 0] == np.float32(POISON)):
            msg = "poison row"
            raise ModelError(msg)
        return self.inner.score(inputs)


def test_model_failure_is_isolated_to_the_failing_event(
    model: LoadedModel, events: list[dict[str, Any]]
) -> None:
    """When the model fails on a batch, events are scored one by one and only the bad one errs."""
    assert isinstance(model.scorer, OnnxScorer)
    poisoned = LoadedModel(
        PoisonScorer(model.scorer), FeatureBuilder(model.scorer.card), model.threshold, model.canary
    )
    batch = [events[0], {**events[1], "amount": POISON}, events[2]]

    results = list(score_events(batch, poisoned, 10))
    reference = list(score_events([events[0], events[2]], model, 10))

    assert results[1]["error"] == "poison row"
    assert results[1]["score"] is None
    assert [results[0]["score"], results[2]["score"]] == pytest.approx(
        [r["score"] for r in reference], abs=1e-6
    )
