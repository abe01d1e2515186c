"""``models validate``: each gate passes on the shipped models and fails on a crafted one."""

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
from stream_scorer.devtools.generate import TransactionGenerator
from stream_scorer.lifecycle import ModelRepository
from stream_scorer.lifecycle.validate import ValidationReport, load_data, roc_auc, validate
from stream_scorer.model_card import file_sha256
from stream_scorer.settings import LifecycleSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
READER = load_schema(REPO_ROOT / "schemas/transaction.avsc", "reader")
#: Few events: the gates' allowances include the sampling error, so small data stays fair.
#: A budget no shared machine misses: timing is measured here, never asserted (bench/ does).
SETTINGS = LifecycleSettings(validation_events=4000, batch_p99_budget_ms=60_000)
DATA = load_data(None, SETTINGS)


@pytest.fixture
def repo(tmp_path: Path) -> ModelRepository:
    """A repository with copies of fraud/1 and fraud/2."""
    for version in ("1", "2"):
        shutil.copytree(REPO_ROOT / "models/fraud" / version, tmp_path / "fraud" / version)
    return ModelRepository(tmp_path, tmp_path / ".state")


def craft(repo: ModelRepository, base: str, edit: Callable[[dict[str, Any], Path], None]) -> str:
    """Copy ``fraud/base`` to version 9 and let ``edit`` change its card (and files)."""
    folder = repo.root / "fraud" / "9"
    shutil.copytree(repo.root / "fraud" / base, folder)
    card = json.loads((folder / "model.json").read_text())
    card["version"] = "9"
    edit(card, folder)
    (folder / "model.json").write_text(json.dumps(card))
    return "9"


def run(
    repo: ModelRepository,
    version: str,
    against: str | None = None,
    settings: LifecycleSettings = SETTINGS,
    data: Any = DATA,
) -> ValidationReport:
    """Validate ``fraud/version`` at batch 1000."""
    champion = None if against is None else ("fraud", against)
    return validate(repo, "fraud", version, READER, settings, 1000, champion, data, 1)


def status(report: ValidationReport) -> dict[str, str]:
    """Gate name to status."""
    return {g.name: g.status for g in report.gates}


def failed(report: ValidationReport) -> set[str]:
    """Names of the failed gates."""
    return {g.name for g in report.gates if g.status == "FAIL"}


def test_shipped_versions_pass_against_each_other(repo: ModelRepository) -> None:
    """fraud/2 passes every gate against fraud/1, its golden set included."""
    report = run(repo, "2", against="1")
    assert report.passed, report.table()
    assert status(report)["golden set"] == "PASS"
    assert "champion" in next(g.bound for g in report.gates if g.name == "recall")


def test_fraud_1_passes_alone_and_reproduces_its_golden_set(repo: ModelRepository) -> None:
    """fraud/1 passes every gate alone, its golden set reproduced."""
    report = run(repo, "1")
    assert report.passed, report.table()
    assert status(report)["golden set"] == "PASS"


def test_card_without_a_golden_set_skips_that_gate(repo: ModelRepository) -> None:
    """A card with no golden set: that gate is SKIP, not a pass claimed."""
    version = craft(repo, "1", lambda card, folder: card.pop("golden_set"))
    report = run(repo, version)
    assert status(report)["golden set"] == "SKIP"


def test_unreadable_card_fails_and_nothing_else_runs(repo: ModelRepository) -> None:
    """A model.json that is not JSON fails `card`; every later gate says it did not run."""
    version = craft(repo, "1", lambda card, folder: None)
    (repo.root / "fraud" / version / "model.json").write_text("{not json")
    report = run(repo, version)
    assert status(report)["card"] == "FAIL"
    assert all(g.status == "FAIL" for g in report.gates)
    assert "not run" in report.gates[-1].detail


def _set_model_hash(card: dict[str, Any], digest: str) -> None:
    """Vouch for ``digest`` as model.onnx's hash in both card keys (``sha256``, ``files``)."""
    card["sha256"] = digest
    if "files" in card:
        card["files"]["model.onnx"] = digest


def test_tampered_file_fails_hashes(repo: ModelRepository) -> None:
    """A card whose sha256 does not match the file fails `hashes`, showing both digests."""

    def edit(card: dict[str, Any], folder: Path) -> None:
        _set_model_hash(card, "0" * 64)

    report = run(repo, craft(repo, "1", edit))
    assert failed(report) == {"hashes"}
    assert "000000000000" in next(g.detail for g in report.gates if g.name == "hashes")


def test_unbindable_input_fails_binds(repo: ModelRepository) -> None:
    """An input bound to a field the reader schema lacks fails `binds`."""

    def edit(card: dict[str, Any], folder: Path) -> None:
        card["inputs"][0]["field"] = "no_such_field"

    report = run(repo, craft(repo, "1", edit))
    assert status(report)["binds"] == "FAIL"
    assert "no_such_field" in next(g.detail for g in report.gates if g.name == "binds")


def test_broken_graph_fails_loads(repo: ModelRepository) -> None:
    """A model file onnxruntime cannot load (hash updated to match) fails `loads` only."""

    def edit(card: dict[str, Any], folder: Path) -> None:
        (folder / "model.onnx").write_bytes(b"not an onnx graph")
        _set_model_hash(card, file_sha256(folder / "model.onnx"))

    report = run(repo, craft(repo, "1", edit))
    assert status(report)["hashes"] == "PASS"
    assert status(report)["loads"] == "FAIL"


def test_wrong_golden_scores_fail_the_golden_set(repo: ModelRepository) -> None:
    """Expected scores that the model does not reproduce fail `golden set`."""

    def edit(card: dict[str, Any], folder: Path) -> None:
        golden = card["golden_set"]
        golden["expected_scores"] = [s + 0.01 for s in golden["expected_scores"]]

    report = run(repo, craft(repo, "2", edit))
    assert failed(report) == {"golden set"}


def test_out_of_range_scores_fail(repo: ModelRepository) -> None:
    """A graph whose 'probabilities' are raw amounts fails `scores in range`."""
    onnx = pytest.importorskip("onnx")
    helper = onnx.helper

    def edit(card: dict[str, Any], folder: Path) -> None:
        inputs = [
            helper.make_tensor_value_info(
                i["name"],
                onnx.TensorProto.STRING if i["dtype"] == "string" else onnx.TensorProto.FLOAT,
                [None, 1],
            )
            for i in card["inputs"]
        ]
        out = helper.make_tensor_value_info("probabilities", onnx.TensorProto.FLOAT, [None, 2])
        node = helper.make_node("Concat", ["amount", "amount"], ["probabilities"], axis=1)
        graph = helper.make_graph([node], "amounts", inputs, [out])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        (folder / "model.onnx").write_bytes(model.SerializeToString())
        card["sha256"] = file_sha256(folder / "model.onnx")

    report = run(repo, craft(repo, "1", edit))
    assert status(report)["scores in range"] == "FAIL"


def test_metric_floor_from_the_card_fails(repo: ModelRepository) -> None:
    """A card floor the model cannot reach (AUC 0.999) fails `auc` on 20,000 events."""

    def edit(card: dict[str, Any], folder: Path) -> None:
        card["floors"] = {"auc": 0.999}

    # Two standard errors excuse a miss: on 4,000 events (~40 frauds) that is ~0.04 of AUC.
    data = load_data(None, SETTINGS.model_copy(update={"validation_events": 20_000}))
    report = run(repo, craft(repo, "1", edit), data=data)
    assert failed(report) == {"auc"}, report.table()


def test_precision_floor_from_the_card_fails(repo: ModelRepository) -> None:
    """A precision floor of 0.99 (fraud/1 has ~0.8 at its threshold) fails `precision` alone."""

    def edit(card: dict[str, Any], folder: Path) -> None:
        card["floors"] = {"precision": 0.99}

    # ~100 flagged events on 20,000: two standard errors are ~0.08, short of 0.99 - 0.8.
    data = load_data(None, SETTINGS.model_copy(update={"validation_events": 20_000}))
    report = run(repo, craft(repo, "1", edit), data=data)
    assert failed(report) == {"precision"}, report.table()
    assert "card floor" in next(g.bound for g in report.gates if g.name == "precision")


def test_worse_than_champion_fails(repo: ModelRepository) -> None:
    """A threshold of 0.99 loses most of the champion's recall: `recall` fails against it."""

    def edit(card: dict[str, Any], folder: Path) -> None:
        card["threshold"] = 0.99

    report = run(repo, craft(repo, "1", edit), against="1")
    assert "recall" in failed(report)
    recall = next(g for g in report.gates if g.name == "recall")
    assert "champion" in recall.bound


def test_slow_batch_fails_the_latency_budget(repo: ModelRepository) -> None:
    """A budget no real run meets (1 µs) fails `batch p99`, showing the measured time."""
    tight = SETTINGS.model_copy(update={"batch_p99_budget_ms": 0.001})
    report = run(repo, "1", settings=tight)
    assert failed(report) == {"batch p99"}


def test_ten_times_the_alert_rate_fails(repo: ModelRepository) -> None:
    """A threshold of 0.05 flags many times the champion's share: `alert rate` fails."""

    def edit(card: dict[str, Any], folder: Path) -> None:
        card["threshold"] = 0.05

    report = run(repo, craft(repo, "1", edit), against="1")
    assert "alert rate" in failed(report)


def test_unlabelled_data_fails_the_metric_gates(repo: ModelRepository, tmp_path: Path) -> None:
    """An Avro file without the label field cannot show the metrics: those gates fail."""
    events, _ = TransactionGenerator(seed=3).generate(500)
    buffer = io.BytesIO()
    fastavro.writer(buffer, fastavro.parse_schema(READER), events)
    path = tmp_path / "events.avro"
    path.write_bytes(buffer.getvalue())
    data = load_data(path, SETTINGS)
    assert data.labels is None
    report = run(repo, "1", data=data)
    assert failed(report) == {"auc", "precision", "recall"}
    assert status(report)["batch p99"] == "PASS"


def test_auc_matches_the_pairwise_definition() -> None:
    """The rank-sum AUC equals the share of (positive, negative) pairs ranked right, ties half."""
    import numpy as np  # noqa: PLC0415

    rng = np.random.default_rng(1)
    labels = rng.random(300) < 0.3
    scores = np.round(rng.random(300), 1)  # many ties
    pos, neg = scores[labels], scores[~labels]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert roc_auc(labels, scores) == pytest.approx(pairs / (len(pos) * len(neg)))
