"""``models validate`` per output type: band, multiclass and regression gates on crafted models."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastavro
import pytest

from stream_scorer.app import load_schema
from stream_scorer.errors import ConfigurationError
from stream_scorer.lifecycle import ModelRepository
from stream_scorer.lifecycle.validate import LabelledData, ValidationReport, load_data, validate
from stream_scorer.model_card import ModelCard, file_sha256
from stream_scorer.settings import LifecycleSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = {
    "fraud": "transaction.avsc",
    "recommender": "product_view.avsc",
    "expected_loss": "claim_event.avsc",
}
#: Few events keep the suite quick; the allowances include the sampling error. A budget no
#: shared machine misses: timing is measured here, never asserted (bench/ does).
SETTINGS = LifecycleSettings(validation_events=4000, batch_p99_budget_ms=60_000)

onnx = pytest.importorskip("onnx")


@pytest.fixture
def repo(tmp_path: Path) -> ModelRepository:
    """A repository whose folders sit like the checkout's, so card generators resolve."""
    root = tmp_path / "models"
    for name in SCHEMAS:
        shutil.copytree(REPO_ROOT / "models" / name / "1", root / name / "1")
    # models/example_events.py: the generator the recommender and expected-loss cards name.
    shutil.copy(REPO_ROOT / "models/example_events.py", root / "example_events.py")
    return ModelRepository(root, tmp_path / ".state")


def craft(
    repo: ModelRepository, name: str, version: str, edit: Callable[[dict[str, Any], Path], None]
) -> str:
    """Copy ``name/1`` to ``version`` and let ``edit`` change its card (and files)."""
    folder = repo.root / name / version
    shutil.copytree(repo.root / name / "1", folder)
    card = json.loads((folder / "model.json").read_text())
    card["version"] = version
    edit(card, folder)
    (folder / "model.json").write_text(json.dumps(card))
    return version


def run(
    repo: ModelRepository,
    name: str,
    version: str,
    against: str | None = None,
    data: LabelledData | Path | None = None,
    settings: LifecycleSettings = SETTINGS,
) -> ValidationReport:
    """Validate ``name/version`` at batch 1000, on the card generator's events by default."""
    reader = load_schema(REPO_ROOT / "schemas" / SCHEMAS[name], "reader")
    champion = None if against is None else (name, against)
    return validate(repo, name, version, reader, settings, 1000, champion, data, 1)


def gate(report: ValidationReport, name: str) -> Any:
    """The gate called ``name``."""
    return next(g for g in report.gates if g.name == name)


def failed(report: ValidationReport) -> set[str]:
    """Names of the failed gates."""
    return {g.name for g in report.gates if g.status == "FAIL"}


def graph(card: dict[str, Any], folder: Path, nodes: list[Any], out: Any) -> None:
    """Write an ONNX graph with the card's inputs and the given nodes and output; rehash."""
    helper = onnx.helper
    inputs = [
        helper.make_tensor_value_info(
            i["name"],
            onnx.TensorProto.STRING if i["dtype"] == "string" else onnx.TensorProto.FLOAT,
            [None, 1],
        )
        for i in card["inputs"]
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "crafted", inputs, [out]),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    model.ir_version = 8
    (folder / "model.onnx").write_bytes(model.SerializeToString())
    card["sha256"] = file_sha256(folder / "model.onnx")


# Decision bands


def test_band_gates_pass_against_the_same_policy(repo: ModelRepository) -> None:
    """expected_loss/1 against itself: one PASS per band (LOW, MEDIUM, HIGH), nothing failed."""
    report = run(repo, "expected_loss", "1", against="1")
    assert report.passed, report.table()
    assert [g.name for g in report.gates if g.name.startswith("band ")] == [
        "band LOW",
        "band MEDIUM",
        "band HIGH",
    ]
    assert all(g.status == "PASS" for g in report.gates if g.name.startswith("band "))


def test_a_band_edge_moved_fails_that_bands_rate(repo: ModelRepository) -> None:
    """MEDIUM from 2,500 EUR instead of 4,400: MEDIUM's share leaves the champion's bound."""

    def edit(card: dict[str, Any], folder: Path) -> None:
        card["decision"]["bands"][1]["from"] = 2500.0

    report = run(repo, "expected_loss", craft(repo, "expected_loss", "9", edit), against="1")
    assert "band MEDIUM" in failed(report), report.table()
    assert gate(report, "band HIGH").status == "PASS"  # its edge did not move
    medium = gate(report, "band MEDIUM")
    assert "champion" in medium.bound
    assert float(medium.measured) > 1.5 * float(gate(run(repo, "expected_loss", "1"),
                                                      "band MEDIUM").measured)  # fmt: skip
    assert "band MEDIUM" in json.dumps(report.to_dict())


def _fraud_bands(review_from: float) -> Callable[[dict[str, Any], Path], None]:
    """A fraud card with approve < review_from <= review < 0.7617 <= decline bands."""

    def edit(card: dict[str, Any], folder: Path) -> None:
        del card["threshold"]
        card["decision"] = {
            "bands": [
                {"name": "approve", "publish": False},
                {"name": "review", "from": review_from, "publish": True},
                {"name": "decline", "from": 0.7617, "publish": True},
            ]
        }

    return edit


def test_the_review_rate_is_gated_against_the_champion(repo: ModelRepository) -> None:
    """A binary card with bands: a review band opened at 0.05 instead of 0.4 fails `band review`."""
    champion = craft(repo, "fraud", "8", _fraud_bands(0.4))
    report = run(repo, "fraud", craft(repo, "fraud", "9", _fraud_bands(0.05)), against=champion)
    assert "band review" in failed(report), report.table()
    assert gate(report, "band decline").status == "PASS"
    assert gate(report, "auc").status == "PASS"  # binary: the AUC gates still run
    same = run(repo, "fraud", champion, against=champion)
    assert same.passed, same.table()


def test_band_rates_stated_in_the_card_gate_without_a_champion(repo: ModelRepository) -> None:
    """No champion: `metrics.band_rates` is the reference; a wrong one fails, absent is SKIP."""
    assert gate(run(repo, "expected_loss", "1"), "band HIGH").status == "SKIP"

    def edit(card: dict[str, Any], folder: Path) -> None:
        card["metrics"]["band_rates"] = {"LOW": 0.8, "MEDIUM": 0.15, "HIGH": 0.01}

    report = run(repo, "expected_loss", craft(repo, "expected_loss", "9", edit))
    assert failed(report) == {"band HIGH"}, report.table()
    assert "card 0.01000" in gate(report, "band HIGH").bound


# Multiclass


def test_multiclass_gets_top_k_gates_not_auc(repo: ModelRepository) -> None:
    """recommender/1 against itself: top-1, top-3, class share and band gates; no AUC."""
    report = run(repo, "recommender", "1", against="1")
    assert report.passed, report.table()
    names = {g.name for g in report.gates}
    assert {"top-1 accuracy", "top-3 hit rate", "top-1 class share", "band RECOMMEND"} <= names
    assert not names & {"auc", "precision", "recall"}
    assert gate(report, "top-1 class share").status == "PASS"


def test_a_model_stuck_on_one_class_fails_the_class_share(repo: ModelRepository) -> None:
    """A graph giving every view electronics 0.5, the rest 0.1: its class shares fail."""
    helper = onnx.helper

    def edit(card: dict[str, Any], folder: Path) -> None:
        out = helper.make_tensor_value_info("probabilities", onnx.TensorProto.FLOAT, [None, 6])
        fifth = helper.make_tensor("fifth", onnx.TensorProto.FLOAT, [1], [0.2])
        nodes = [
            helper.make_node("Sub", ["price", "price"], ["zero"]),
            helper.make_node("Sigmoid", ["zero"], ["half"]),
            helper.make_node("Constant", [], ["fifth"], value=fifth),
            helper.make_node("Mul", ["half", "fifth"], ["tenth"]),
            helper.make_node("Concat", ["half"] + ["tenth"] * 5, ["probabilities"], axis=1),
        ]
        graph(card, folder, nodes, out)

    report = run(repo, "recommender", craft(repo, "recommender", "9", edit), against="1")
    assert "top-1 class share" in failed(report), report.table()
    detail = gate(report, "top-1 class share").detail
    assert "electronics 1.0000 not in" in detail
    assert "books 0.0000 not in" in detail
    assert gate(report, "scores in range").status == "PASS"  # a distribution, just a bad one


@pytest.mark.parametrize("metric", ["top-1 accuracy", "top-3 hit rate"])
def test_multiclass_floor_from_the_card_fails(repo: ModelRepository, metric: str) -> None:
    """A card floor the recommender cannot reach (0.95) fails that gate alone."""

    def edit(card: dict[str, Any], folder: Path) -> None:
        card["floors"] = {metric: 0.95}

    report = run(repo, "recommender", craft(repo, "recommender", "9", edit))
    assert failed(report) == {metric}, report.table()
    assert "card floor" in gate(report, metric).bound


def test_rows_not_summing_to_one_fail_scores_in_range(repo: ModelRepository) -> None:
    """Six sigmoids, each in [0, 1] but not a distribution: `scores in range` fails."""
    helper = onnx.helper

    def edit(card: dict[str, Any], folder: Path) -> None:
        out = helper.make_tensor_value_info("probabilities", onnx.TensorProto.FLOAT, [None, 6])
        nodes = [
            helper.make_node("Sigmoid", ["price"], ["p"]),
            helper.make_node("Concat", ["p"] * 6, ["probabilities"], axis=1),
        ]
        graph(card, folder, nodes, out)

    report = run(repo, "recommender", craft(repo, "recommender", "9", edit))
    in_range = gate(report, "scores in range")
    assert in_range.status == "FAIL"
    assert in_range.measured == "4000 of 4000 outside"


# Regression


def test_regression_gets_mae_and_r2(repo: ModelRepository) -> None:
    """expected_loss/1 alone: mae and r2 against the card's holdout, no AUC, all passing."""
    report = run(repo, "expected_loss", "1")
    assert report.passed, report.table()
    assert gate(report, "mae").bound.startswith("<= ")
    assert gate(report, "r2").status == "PASS"
    assert "auc" not in {g.name for g in report.gates}


def test_mae_ceiling_from_the_card_fails(repo: ModelRepository) -> None:
    """A ceiling of 100 EUR mean absolute error (the model's is ~900) fails `mae` alone."""

    def edit(card: dict[str, Any], folder: Path) -> None:
        card["ceilings"] = {"mae": 100.0}

    report = run(repo, "expected_loss", craft(repo, "expected_loss", "9", edit))
    assert failed(report) == {"mae"}, report.table()


def test_r2_floor_from_the_card_fails(repo: ModelRepository) -> None:
    """An R² floor of 0.99 fails `r2` alone."""

    def edit(card: dict[str, Any], folder: Path) -> None:
        card["floors"] = {"r2": 0.99}

    report = run(repo, "expected_loss", craft(repo, "expected_loss", "9", edit))
    assert failed(report) == {"r2"}, report.table()


def test_worse_regressor_than_the_champion_fails_mae(repo: ModelRepository) -> None:
    """A graph predicting the claimed amount itself is far worse than the champion: mae fails."""
    helper = onnx.helper

    def edit(card: dict[str, Any], folder: Path) -> None:
        out = helper.make_tensor_value_info("variable", onnx.TensorProto.FLOAT, [None, 1])
        graph(card, folder, [helper.make_node("Identity", ["claimed_amount"], ["variable"])], out)

    report = run(repo, "expected_loss", craft(repo, "expected_loss", "9", edit), against="1")
    # The claimed amount alone explains much of the cost (R² ~0.8): only the error fails.
    assert "mae" in failed(report), report.table()
    assert "champion" in gate(report, "mae").bound


def test_nan_values_fail_scores_in_range(repo: ModelRepository) -> None:
    """A regression graph returning 0/0 fails `scores in range` (values must be finite)."""
    helper = onnx.helper

    def edit(card: dict[str, Any], folder: Path) -> None:
        out = helper.make_tensor_value_info("variable", onnx.TensorProto.FLOAT, [None, 1])
        nodes = [
            helper.make_node("Sub", ["claimed_amount", "claimed_amount"], ["zero"]),
            helper.make_node("Div", ["zero", "zero"], ["variable"]),
        ]
        graph(card, folder, nodes, out)

    report = run(repo, "expected_loss", craft(repo, "expected_loss", "9", edit))
    in_range = gate(report, "scores in range")
    assert in_range.status == "FAIL"
    assert in_range.bound == "all finite"


# Data


def _avro(
    path: Path, schema_file: str, records: list[dict[str, Any]], extra: dict[str, Any]
) -> Path:
    """Write ``records`` with the reader schema plus one ``extra`` field (the label)."""
    schema = json.loads((REPO_ROOT / "schemas" / schema_file).read_text())
    schema["fields"].append(extra)
    buffer = io.BytesIO()
    fastavro.writer(buffer, fastavro.parse_schema(schema), records)
    path.write_bytes(buffer.getvalue())
    return path


def test_multiclass_labels_by_name_from_a_data_file(repo: ModelRepository, tmp_path: Path) -> None:
    """A --data file labelled with class names scores the same as the generator's indices."""
    import importlib.util  # noqa: PLC0415

    spec = importlib.util.spec_from_file_location("events", REPO_ROOT / "models/example_events.py")
    assert spec is not None and spec.loader is not None
    events = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(events)
    raw, labels = events.product_views(2000, SETTINGS.validation_seed)
    card = ModelCard.load(repo.folder("recommender", "1"))
    names = [card.policy.labels[i] for i in labels]
    for record, name in zip(raw, names, strict=True):
        record["next_category"] = name.upper()  # case as an enum would spell it
    path = _avro(tmp_path / "views.avro", "product_view.avsc", raw,
                 {"name": "next_category", "type": "string"})  # fmt: skip
    settings = SETTINGS.model_copy(update={"label_field": "next_category"})
    from_file = run(repo, "recommender", "1", data=path, settings=settings)
    generated = run(repo, "recommender", "1",
                    settings=settings.model_copy(update={"validation_events": 2000}))  # fmt: skip
    assert gate(from_file, "top-1 accuracy").measured == gate(generated, "top-1 accuracy").measured

    for record in raw[:5]:
        record["next_category"] = "GARDEN"
    _avro(path, "product_view.avsc", raw, {"name": "next_category", "type": "string"})
    with pytest.raises(ConfigurationError, match=r"label_field 'next_category'.*'GARDEN'"):
        load_data(path, settings, card)


def test_a_card_without_a_generator_asks_for_data(repo: ModelRepository) -> None:
    """No --data and no training.generator in the card: a clear error, not transactions."""

    def edit(card: dict[str, Any], folder: Path) -> None:
        del card["training"]["generator"]

    version = craft(repo, "expected_loss", "9", edit)
    with pytest.raises(ConfigurationError, match=r"names no training\.generator; pass --data"):
        run(repo, "expected_loss", version)
