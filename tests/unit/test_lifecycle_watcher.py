"""The promotion watcher: a moved alias is loaded off the loop and swapped in; a broken one not."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from stream_scorer.app import load_schema
from stream_scorer.lifecycle import ModelRepository, promote
from stream_scorer.lifecycle.watcher import PromotionWatcher, RollbackRules
from stream_scorer.metrics import ScorerMetrics
from stream_scorer.model_card import file_sha256
from stream_scorer.model_set import LiveModels, LoadedModel, ModelSet, load_model

REPO_ROOT = Path(__file__).resolve().parents[2]
READER = load_schema(REPO_ROOT / "schemas/transaction.avsc", "reader")


def load(path: Path) -> LoadedModel:
    """Load a version as the service does."""
    return load_model(path, READER, 1)


def setup(
    tmp_path: Path,
) -> tuple[ModelRepository, LiveModels, PromotionWatcher, CollectorRegistry]:
    """fraud/1 serving; fraud/2 and a tampered fraud/3 on disk; a watcher on champion."""
    for version, source in (("1", "1"), ("2", "2"), ("3", "2")):
        shutil.copytree(REPO_ROOT / "models/fraud" / source, tmp_path / "fraud" / version)
    onnx = tmp_path / "fraud/3/model.onnx"
    onnx.write_bytes(onnx.read_bytes()[:-10])  # the card's sha256 no longer matches
    repo = ModelRepository(tmp_path, tmp_path / ".state")
    live = LiveModels(ModelSet(load(tmp_path / "fraud/1")))
    registry = CollectorRegistry()
    watcher = PromotionWatcher(repo, "fraud", "champion", live, load, "test-1", 0.02, registry)
    return repo, live, watcher, registry


def break_warm_up(folder: Path) -> None:
    """Make ``folder`` a version that hashes, binds and loads, then fails its warm-up batch.

    Its graph has the card's inputs and output, but gathers column 7 of the one-column
    ``amount``: onnxruntime accepts the graph and fails the first run. The card's hashes are
    updated, so only the warm-up can catch it.
    """
    import onnx  # noqa: PLC0415 - a dev dependency, only for crafting
    from onnx import helper  # noqa: PLC0415

    card = json.loads((folder / "model.json").read_text())
    inputs = [
        helper.make_tensor_value_info(
            i["name"],
            onnx.TensorProto.STRING if i["dtype"] == "string" else onnx.TensorProto.FLOAT,
            [None, 1],
        )
        for i in card["inputs"]
    ]
    out = helper.make_tensor_value_info("probabilities", onnx.TensorProto.FLOAT, [None, 2])
    index = helper.make_tensor("index", onnx.TensorProto.INT64, [2], [0, 7])
    nodes = [
        helper.make_node("Constant", [], ["index"], value=index),
        helper.make_node("Gather", ["amount", "index"], ["probabilities"], axis=1),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "fails-warm-up", inputs, [out]),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    model.ir_version = 8
    (folder / "model.onnx").write_bytes(model.SerializeToString())
    digest = file_sha256(folder / "model.onnx")
    card["sha256"] = digest
    if "files" in card:
        card["files"]["model.onnx"] = digest
    (folder / "model.json").write_text(json.dumps(card))


def failures(registry: CollectorRegistry) -> float | None:
    """The watcher's failed-promotion counter."""
    labels = {"model_name": "fraud", "outcome": "failed"}
    return registry.get_sample_value("stream_scorer_model_promotions_total", labels)


def test_moved_alias_is_applied_and_recorded(tmp_path: Path) -> None:
    """Promoting fraud/2 swaps the live set to it; the history names this instance."""
    repo, live, watcher, registry = setup(tmp_path)
    assert watcher.check_once() is False  # no alias yet: keep serving what was configured
    promote(repo, "fraud", "2", force=True)
    assert watcher.check_once() is True
    assert live.current.champion.version == "2"
    assert live.swaps == 1
    applied = repo.history("fraud")[-1]
    assert (applied.action, applied.version, applied.previous) == ("applied", "2", "1")
    assert applied.instance == "test-1"
    labels = {"model_name": "fraud", "outcome": "applied"}
    assert registry.get_sample_value("stream_scorer_model_promotions_total", labels) == 1
    since = "stream_scorer_model_live_since_timestamp_seconds"
    assert registry.get_sample_value(since, {"model_name": "fraud", "model_version": "1"}) is None
    live_since = registry.get_sample_value(since, {"model_name": "fraud", "model_version": "2"})
    assert live_since is not None
    assert abs(live_since - time.time()) < 60


def test_broken_version_is_refused_and_the_old_one_serves(tmp_path: Path) -> None:
    """A tampered fraud/3 fails to load: fraud/1 keeps serving, the failure is counted once."""
    repo, live, watcher, registry = setup(tmp_path)
    promote(repo, "fraud", "3", force=True)
    assert watcher.check_once() is False
    assert live.current.champion.version == "1"
    assert live.swaps == 0
    failed = repo.history("fraud")[-1]
    assert failed.action == "apply-failed"
    assert "sha256" in failed.reason
    assert failures(registry) == 1
    assert watcher.check_once() is False  # not retried until the alias moves again
    assert failures(registry) == 1
    promote(repo, "fraud", "2", force=True)
    assert watcher.check_once() is True
    assert live.current.champion.version == "2"


def test_a_version_failing_warm_up_is_refused_and_the_old_one_serves(tmp_path: Path) -> None:
    """A version whose graph loads but fails its first batch: apply-failed, fraud/1 serves."""
    repo, live, watcher, registry = setup(tmp_path)
    shutil.copytree(tmp_path / "fraud/1", tmp_path / "fraud/4")
    break_warm_up(tmp_path / "fraud/4")
    promote(repo, "fraud", "4", force=True)
    assert watcher.check_once() is False
    assert live.current.champion.version == "1"
    assert live.swaps == 0
    failed = repo.history("fraud")[-1]
    assert (failed.action, failed.version) == ("apply-failed", "4")
    assert "warm-up" in failed.reason
    assert failures(registry) == 1


def test_thread_picks_up_a_promotion(tmp_path: Path) -> None:
    """Started, the watcher applies a promotion within a few poll intervals and then stops."""
    repo, live, watcher, _ = setup(tmp_path)
    stop = threading.Event()
    watcher = PromotionWatcher(
        repo, "fraud", "champion", live, load, "test-2", 0.02, CollectorRegistry(), stop
    )
    watcher.start()
    try:
        promote(repo, "fraud", "2", force=True)
        deadline = time.monotonic() + 20
        while live.current.champion.version != "2" and time.monotonic() < deadline:
            stop.wait(0.01)
        assert live.current.champion.version == "2"
    finally:
        watcher.stop()
    assert watcher._thread is not None
    assert not watcher._thread.is_alive()


def watched(
    tmp_path: Path, **rules: Any
) -> tuple[ModelRepository, LiveModels, PromotionWatcher, ScorerMetrics]:
    """fraud/1 serving as champion, fraud/2 promoted and applied, rules on the service metrics."""
    repo, live, _, _ = setup(tmp_path)
    registry = CollectorRegistry()
    metrics = ScorerMetrics(registry)
    watcher = PromotionWatcher(
        repo, "fraud", "champion", live, load, "test-3", 0.02, registry,
        rules=RollbackRules(**rules),
    )  # fmt: skip
    promote(repo, "fraud", "1", force=True)
    promote(repo, "fraud", "2", force=True)
    assert watcher.check_once() is True
    return repo, live, watcher, metrics


def test_a_bisected_batch_rolls_back(tmp_path: Path) -> None:
    """A failing model run after the swap moves the alias back, and the watcher follows it."""
    repo, live, watcher, metrics = watched(tmp_path, max_bisections=0)
    assert watcher.check_rules() is False
    metrics.model_bisections.inc()
    assert watcher.check_rules() is True
    auto = repo.history("fraud")[-1]
    assert (auto.action, auto.version, auto.previous, auto.by) == (
        "auto-rollback", "1", "2", "rule:bisections",
    )  # fmt: skip
    assert watcher.check_once() is True
    assert live.current.champion.version == "1"


def test_slower_scoring_rolls_back(tmp_path: Path) -> None:
    """A score stage 100x slower than before the swap breaks the latency rule."""
    repo, _, watcher, metrics = watched(tmp_path, min_events=10, latency_ratio=3.0)
    # The baseline is read at the swap: serve 1 for ten 1 ms batches, then swap to 2 again.
    score = metrics.stage_duration.labels(stage="score")
    for _ in range(10):
        score.observe(0.001)
    promote(repo, "fraud", "1", force=True)
    assert watcher.check_once() is True  # back on 1: the watch on 2 ends
    promote(repo, "fraud", "2", force=True)
    assert watcher.check_once() is True  # on 2 again, with a baseline of 1 ms batches
    for _ in range(10):
        score.observe(0.1)
    metrics.records_scored.labels(model_name="fraud", model_version="2").inc(100)
    assert watcher.check_rules() is True
    assert repo.history("fraud")[-1].by == "rule:latency"


def test_rules_never_undo_a_newer_promotion(tmp_path: Path) -> None:
    """Once the alias moved on, a rule firing for the old swap changes nothing."""
    repo, _, watcher, metrics = watched(tmp_path, max_bisections=0)
    promote(repo, "fraud", "1", force=True)  # an operator moved on before the rule ran
    metrics.model_bisections.inc()
    assert watcher.check_rules() is False
    assert not [e for e in repo.history("fraud") if e.action == "auto-rollback"]
