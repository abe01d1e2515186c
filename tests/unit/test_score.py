"""Stage 4, score: OnnxScorer matches onnxruntime, checks the model against its card."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from numpy.typing import NDArray
from structlog.testing import capture_logs

from stream_scorer.devtools.generate import TransactionGenerator
from stream_scorer.errors import ConfigurationError, ModelError
from stream_scorer.featurize import FeatureBuilder
from stream_scorer.model_card import ModelCard
from stream_scorer.records import Event, SourceRecord
from stream_scorer.score import OnnxScorer, default_intra_op_threads

REPO_ROOT = Path(__file__).resolve().parents[2]
FRAUD_MODEL = REPO_ROOT / "models" / "fraud" / "1"
TEST_MODELS = REPO_ROOT / "tests" / "data" / "models"
TENSOR_FEATURES = ("amount", "txn_count_1h", "distance_from_home_km", "card_present")

CopyModel = Callable[..., Path]


@pytest.fixture(scope="module")
def generated() -> list[dict[str, Any]]:
    """300 seeded synthetic transactions."""
    events, _ = TransactionGenerator(seed=123, fraud_rate=0.2).generate(300)
    return events


@pytest.fixture(scope="module")
def fraud_scorer() -> OnnxScorer:
    """The shipped model, loaded once for the module."""
    return OnnxScorer(ModelCard.load(FRAUD_MODEL), intra_op_threads=1)


@pytest.fixture
def copy_model(tmp_path: Path) -> CopyModel:
    """``copy_model(src, card_changes=None)`` copies a model folder to tmp and edits its card."""

    def copy(src: Path, card_changes: dict[str, Any] | None = None) -> Path:
        dst = tmp_path / src.parent.name / src.name
        shutil.copytree(src, dst)
        if card_changes:
            card = json.loads((dst / "model.json").read_text(encoding="utf-8"))
            card.update(card_changes)
            (dst / "model.json").write_text(json.dumps(card), encoding="utf-8")
        return dst

    return copy


def _reference_columns(events: list[dict[str, Any]], card: ModelCard) -> dict[str, NDArray[Any]]:
    """Per-field inputs built independently of featurize: strings as objects, else float32."""
    columns: dict[str, NDArray[Any]] = {}
    for binding in card.bindings:
        values = [e[binding.field] for e in events]
        if binding.dtype == "string":
            columns[binding.input] = np.array(values, dtype=object).reshape(-1, 1)
        else:
            floats = [np.nan if v is None else float(v) for v in values]
            columns[binding.input] = np.array(floats, dtype=np.float32).reshape(-1, 1)
    return columns


def _tensor(events: list[dict[str, Any]]) -> NDArray[np.float32]:
    rows = [[float(e[f]) for f in TENSOR_FEATURES] for e in events]
    return np.array(rows, dtype=np.float32)


def _with_distance(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["distance_from_home_km"] is not None]


def test_shipped_model_scores_equal_onnxruntime(
    fraud_scorer: OnnxScorer, generated: list[dict[str, Any]]
) -> None:
    """OnnxScorer's scores are the positive-class column of running the graph directly."""
    inputs = _reference_columns(generated, fraud_scorer.card)
    session = ort.InferenceSession(
        str(FRAUD_MODEL / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    (direct,) = session.run(["probabilities"], inputs)

    scores = fraud_scorer.score(inputs)

    assert scores.dtype == np.float64
    assert scores.shape == (len(generated),)
    # Tree sums may be reordered across threads: equal up to float32 rounding.
    np.testing.assert_allclose(scores, direct[:, 1].astype(np.float64), rtol=0, atol=1e-6)
    assert 0.0 < scores.max() <= 1.0


def test_featurize_then_score_equals_reference(
    fraud_scorer: OnnxScorer, generated: list[dict[str, Any]]
) -> None:
    """The stream's featurize stage feeds the model exactly the reference columns."""
    events = [Event(SourceRecord("t", 0, i, None, None), e) for i, e in enumerate(generated)]
    inputs, kept, rejected = FeatureBuilder(fraud_scorer.card).build_inputs(events)

    assert (len(kept), rejected) == (len(generated), [])
    reference = _reference_columns(generated, fraud_scorer.card)
    np.testing.assert_array_equal(fraud_scorer.score(inputs), fraud_scorer.score(reference))


def test_output_is_picked_from_the_card(fraud_scorer: OnnxScorer) -> None:
    """The shipped model reads 'probabilities', not the label output, and is not ZipMap."""
    assert fraud_scorer.output_name == "probabilities"
    assert fraud_scorer.is_zipmap is False


def test_positive_class_index_selects_the_column(
    copy_model: CopyModel, generated: list[dict[str, Any]]
) -> None:
    """positive_class_index 0 reads the other column: the two scores sum to one."""
    folder = copy_model(
        TEST_MODELS / "tensor" / "1",
        {"output": {"name": "probabilities", "positive_class_index": 0}},
    )
    negative = OnnxScorer(ModelCard.load(folder))
    positive = OnnxScorer(ModelCard.load(TEST_MODELS / "tensor" / "1"))
    features = {"features": _tensor(_with_distance(generated))}

    np.testing.assert_allclose(negative.score(features) + positive.score(features), 1.0, atol=1e-6)


def test_tampered_model_is_refused(copy_model: CopyModel) -> None:
    """A model file that differs by one byte from the card's sha256 is refused."""
    folder = copy_model(FRAUD_MODEL)
    model = folder / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))

    with pytest.raises(ConfigurationError, match=r"sha256 of .* is [0-9a-f]{64}, the model card"):
        OnnxScorer(ModelCard.load(folder))


def test_sha256_check_can_be_turned_off(copy_model: CopyModel) -> None:
    """With verify_sha256 off, a card with a stale hash still loads its (valid) model."""
    folder = copy_model(TEST_MODELS / "tensor" / "1", {"sha256": "0" * 64})

    with pytest.raises(ConfigurationError, match="sha256"):
        OnnxScorer(ModelCard.load(folder))
    assert OnnxScorer(ModelCard.load(folder), verify_sha256=False).output_name == "probabilities"


def test_zipmap_model_is_detected_and_still_scores_right(generated: list[dict[str, Any]]) -> None:
    """A ZipMap output is flagged with a warning and gives the same scores as the plain export."""
    events = _with_distance(generated)
    features = {"features": _tensor(events)}
    plain = OnnxScorer(ModelCard.load(TEST_MODELS / "tensor" / "1"))

    with capture_logs() as logs:
        zipped = OnnxScorer(ModelCard.load(TEST_MODELS / "zipmap" / "1"))

    assert zipped.is_zipmap is True
    warnings = [e for e in logs if e["event"] == "zipmap_output_detected"]
    assert len(warnings) == 1
    assert warnings[0]["log_level"] == "warning"
    assert (warnings[0]["model"], warnings[0]["output"]) == ("zipmap", "output_probability")
    session = ort.InferenceSession(
        str(TEST_MODELS / "zipmap" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    (maps,) = session.run(["output_probability"], features)
    direct = np.array([row[1] for row in maps], dtype=np.float64)
    scores = zipped.score(features)
    np.testing.assert_array_equal(scores, direct)
    np.testing.assert_allclose(scores, plain.score(features), atol=1e-6)


def test_tensor_model_does_not_warn_about_zipmap() -> None:
    """A plain tensor output logs no ZipMap warning."""
    with capture_logs() as logs:
        scorer = OnnxScorer(ModelCard.load(TEST_MODELS / "tensor" / "1"))

    assert scorer.is_zipmap is False
    assert [e for e in logs if e["event"] == "zipmap_output_detected"] == []


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        (
            {"inputs": [{"name": "feats", "dtype": "float32"}]},
            "ONNX inputs ['features'] differ from the model card's ['feats']",
        ),
        (
            {"inputs": [{"name": "features", "dtype": "float64"}]},
            "input 'features' is tensor(float) in the graph, the card says float64",
        ),
        (
            {"feature_order": ["amount", "txn_count_1h", "card_present"]},
            "input 'features' has shape [None, 4]; expected [N, 3]",
        ),
        ({"output": {"name": "nope"}}, "no probability output (card names 'nope'"),
        ({"output": {"name": "label"}}, "output 'label' is tensor(int64), not float"),
    ],
    ids=["input-names", "input-dtype", "input-width", "output-missing", "output-not-float"],
)
def test_card_that_does_not_match_the_graph_is_refused(
    changes: dict[str, Any], fragment: str, copy_model: CopyModel
) -> None:
    """Input names, dtypes, widths and the output are checked against the graph at load."""
    folder = copy_model(TEST_MODELS / "tensor" / "1", changes)

    with pytest.raises(ConfigurationError) as caught:
        OnnxScorer(ModelCard.load(folder))

    assert fragment in str(caught.value)


def test_output_is_found_by_conventional_name_when_card_names_none(copy_model: CopyModel) -> None:
    """Without an output name in the card, a conventional probability output is used."""
    folder = copy_model(TEST_MODELS / "tensor" / "1", {"output": {}})

    assert OnnxScorer(ModelCard.load(folder)).output_name == "probabilities"


def test_file_that_is_not_onnx_is_refused(copy_model: CopyModel) -> None:
    """A model.onnx that onnxruntime cannot load is a ConfigurationError naming the file."""
    folder = copy_model(TEST_MODELS / "tensor" / "1")
    (folder / "model.onnx").write_bytes(b"not a protobuf at all")

    with pytest.raises(ConfigurationError, match="cannot load"):
        OnnxScorer(ModelCard.load(folder), verify_sha256=False)


@pytest.mark.parametrize(
    "bad_inputs",
    [
        {"features": np.zeros((3, 3), dtype=np.float32)},
        {"features": np.zeros((3, 4), dtype=np.float64)},
        {"features": np.array([["a"] * 4] * 3, dtype=object)},
    ],
    ids=["wrong-width", "wrong-dtype", "strings"],
)
def test_failing_run_raises_model_error(bad_inputs: dict[str, NDArray[Any]]) -> None:
    """A run onnxruntime refuses raises ModelError naming the model and batch size."""
    scorer = OnnxScorer(ModelCard.load(TEST_MODELS / "tensor" / "1"))

    with pytest.raises(ModelError, match="model tensor/1 failed on a batch of 3"):
        scorer.score(bad_inputs)


def test_warm_up_failure_is_a_configuration_error() -> None:
    """A model that fails its warm-up batch is refused at start-up."""
    scorer = OnnxScorer(ModelCard.load(TEST_MODELS / "tensor" / "1"))

    with pytest.raises(ConfigurationError, match="failed its warm-up batch"):
        scorer.warm_up({"features": np.zeros((2, 7), dtype=np.float32)})


def test_empty_batch_scores_nothing() -> None:
    """Zero rows return an empty float64 array without running the model."""
    scorer = OnnxScorer(ModelCard.load(TEST_MODELS / "tensor" / "1"))

    scores = scorer.score({"features": np.zeros((0, 4), dtype=np.float32)})

    assert (scores.shape, scores.dtype) == ((0,), np.float64)


def test_thread_count() -> None:
    """0 intra-op threads picks between 1 and 2; an explicit count is kept."""
    card = ModelCard.load(TEST_MODELS / "tensor" / "1")

    assert OnnxScorer(card, intra_op_threads=0).intra_op_threads == default_intra_op_threads()
    assert 1 <= default_intra_op_threads() <= 2
    assert OnnxScorer(card, intra_op_threads=3).intra_op_threads == 3
