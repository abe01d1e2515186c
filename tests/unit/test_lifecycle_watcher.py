"""The promotion watcher: a moved alias is loaded off the loop and swapped in; a broken one not."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from stream_scorer.app import load_schema
from stream_scorer.lifecycle import ModelRepository, promote
from stream_scorer.lifecycle.watcher import PromotionWatcher
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
