"""Output types against real graphs: the shipped recommender (multiclass) and expected-loss
(regression) models load as declared, a card that does not match its graph is refused, and
score-file applies their policies."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

import fastavro
import numpy as np
import pytest

from stream_scorer.app import load_schema
from stream_scorer.errors import ConfigurationError
from stream_scorer.model_card import ModelCard
from stream_scorer.model_set import load_model
from stream_scorer.offline import score_file
from stream_scorer.score import OnnxScorer

REPO = Path(__file__).resolve().parents[2]
RECOMMENDER = REPO / "models" / "recommender" / "1"
EXPECTED_LOSS = REPO / "models" / "expected_loss" / "1"
FRAUD = REPO / "models" / "fraud" / "1"


def example_events() -> ModuleType:
    """``models/example_events.py``, the examples' seeded generators (numpy only)."""
    spec = importlib.util.spec_from_file_location(
        "example_events", REPO / "models" / "example_events.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _copy(tmp_path: Path, src: Path, **changes: Any) -> Path:
    dst = tmp_path / src.parent.name
    shutil.copytree(src, dst)
    card = json.loads((dst / "model.json").read_text(encoding="utf-8"))
    card.update(changes)
    card = {k: v for k, v in card.items() if v is not None}
    (dst / "model.json").write_text(json.dumps(card), encoding="utf-8")
    return dst


def test_shipped_examples_load_as_their_declared_output_types() -> None:
    """The recommender scores [N, 6] class probabilities, the regressor one value per row."""
    recommender = OnnxScorer(ModelCard.load(RECOMMENDER))
    regressor = OnnxScorer(ModelCard.load(EXPECTED_LOSS))

    assert recommender.card.policy.output == "multiclass"
    assert recommender.card.policy.labels[:2] == ("electronics", "books")
    assert regressor.card.policy.output == "regression"
    assert regressor.output_name == "variable"


@pytest.mark.parametrize(
    ("src", "changes", "fragment"),
    [
        # A multiclass graph declared binary: refused, not silently read as one column.
        (
            RECOMMENDER,
            {"output": {"name": "probabilities"}, "decision": None, "threshold": 0.5},
            "has 6 classes",
        ),
        # Labels that do not match the graph's class count.
        (
            RECOMMENDER,
            {
                "output": {
                    "name": "probabilities",
                    "type": "multiclass",
                    "labels": ["a", "b", "c", "d"],
                }
            },
            "needs [N, 4]",
        ),
        # A regression card over a classifier's [N, 2] probabilities.
        (
            FRAUD,
            {
                "output": {"name": "probabilities", "type": "regression"},
                "threshold": None,
                "decision": {"bands": [{"name": "LOW", "publish": False}]},
            },
            "needs one value per event",
        ),
        # A binary card over a regressor: no probability output.
        (
            EXPECTED_LOSS,
            {"output": {}, "decision": None, "threshold": 0.5},
            "no probability output",
        ),
    ],
    ids=["multiclass-as-binary", "wrong-labels", "classifier-as-regression", "regressor-as-binary"],
)
def test_card_that_does_not_match_the_graph_output_is_refused(
    tmp_path: Path, src: Path, changes: dict[str, Any], fragment: str
) -> None:
    """The declared output type is checked against the graph before the model serves."""
    folder = _copy(tmp_path, src, **changes)

    with pytest.raises(ConfigurationError) as caught:
        OnnxScorer(ModelCard.load(folder), verify_sha256=False)

    assert fragment in str(caught.value)


def test_score_file_ranks_top_k_classes_with_labels(tmp_path: Path) -> None:
    """score-file applies the multiclass policy: band over the top probability, the top 3
    labels in order, equal to argsort of the graph's own probabilities."""
    events, _ = example_events().product_views(300, 77)
    reader = load_schema(REPO / "schemas" / "product_view.avsc", "schema.reader")
    container = tmp_path / "views.avro"
    with container.open("wb") as fh:
        fastavro.writer(fh, fastavro.parse_schema(reader), events)
    model = load_model(RECOMMENDER, reader)
    out = tmp_path / "scores.jsonl"

    counts = score_file(container, model, 128, out)

    results = [json.loads(line) for line in out.read_text().splitlines()]
    edge = model.card.policy.bands[1].lower
    assert counts["events"] == 300 and counts["errors"] == 0
    assert 0 < counts["flagged"] < 300
    for result in results:
        labels = [c["label"] for c in result["classes"]]
        probabilities = [c["probability"] for c in result["classes"]]
        assert len(labels) == 3 and probabilities == sorted(probabilities, reverse=True)
        assert result["score"] == probabilities[0]
        assert result["band"] == ("RECOMMEND" if result["score"] >= edge else "LOW")
        assert result["flagged"] == (result["band"] == "RECOMMEND")


def test_score_file_bands_regression_values(tmp_path: Path) -> None:
    """score-file applies the regression policy: the value is the score, bands over it."""
    events, costs = example_events().claims(400, 78)
    reader = load_schema(REPO / "schemas" / "claim_event.avsc", "schema.reader")
    container = tmp_path / "claims.avro"
    with container.open("wb") as fh:
        fastavro.writer(fh, fastavro.parse_schema(reader), events)
    model = load_model(EXPECTED_LOSS, reader)
    out = tmp_path / "scores.jsonl"

    score_file(container, model, 100, out)

    results = [json.loads(line) for line in out.read_text().splitlines()]
    _, medium, high = model.card.policy.lowers.tolist()
    bands = {r["band"] for r in results}
    assert bands == {"LOW", "MEDIUM", "HIGH"}
    for result in results:
        expected = (
            "HIGH" if result["score"] >= high else "MEDIUM" if result["score"] >= medium else "LOW"
        )
        assert result["band"] == expected
        assert result["classes"] == []
    # The model predicts costs: correlated with the generator's truth, not a probability.
    predicted = np.array([r["score"] for r in results])
    assert predicted.max() > 1.0
    assert np.corrcoef(predicted, costs)[0, 1] > 0.8
