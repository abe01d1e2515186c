"""A promotion replaces the champion of the live set, not the shadows and canary around it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from stream_scorer.app import load_schema
from stream_scorer.lifecycle import ModelRepository, promote
from stream_scorer.lifecycle.watcher import PromotionWatcher
from stream_scorer.model_set import LiveModels, LoadedModel, ModelSet, load_model

REPO_ROOT = Path(__file__).resolve().parents[2]
READER = load_schema(REPO_ROOT / "schemas/transaction.avsc", "reader")


def load(path: Path) -> LoadedModel:
    """Load a version as the service does."""
    return load_model(path, READER, 1)


def variant(root: Path, version: str, source: str) -> Path:
    """fraud/<source>'s files as fraud/<version> (its card names the new version)."""
    folder = root / "fraud" / version
    shutil.copytree(REPO_ROOT / "models/fraud" / source, folder)
    card = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    card["version"] = version
    (folder / "model.json").write_text(json.dumps(card), encoding="utf-8")
    return folder


def test_promotion_keeps_the_shadows_and_canary(tmp_path: Path) -> None:
    """fraud/1 serving with shadow fraud/4 and canary fraud/5: promoting fraud/2 keeps both."""
    for version in ("1", "2"):
        shutil.copytree(REPO_ROOT / "models/fraud" / version, tmp_path / "fraud" / version)
    shadow = load(variant(tmp_path, "4", "1"))
    canary = load(variant(tmp_path, "5", "2"))
    live = LiveModels(ModelSet(load(tmp_path / "fraud/1"), (shadow,), canary, 0.25))
    repo = ModelRepository(tmp_path, tmp_path / ".state")
    watcher = PromotionWatcher(repo, "fraud", "champion", live, load, "test-1", 0.02)

    promote(repo, "fraud", "2", force=True)
    assert watcher.check_once() is True

    now = live.current
    assert now.champion.version == "2"
    assert [m.version for m in now.shadows] == ["4"]
    assert now.canary is not None and now.canary.version == "5"
    assert now.canary_fraction == 0.25


def test_promoting_the_shadow_or_canary_takes_it_out_of_its_slot(tmp_path: Path) -> None:
    """Promoting the version a shadow (or the canary) runs leaves that slot: a model is never
    compared with itself; the other slot stays."""
    for version in ("1", "2"):
        shutil.copytree(REPO_ROOT / "models/fraud" / version, tmp_path / "fraud" / version)
    variant(tmp_path, "5", "1")
    shadow, canary = load(tmp_path / "fraud/2"), load(tmp_path / "fraud/5")
    live = LiveModels(ModelSet(load(tmp_path / "fraud/1"), (shadow,), canary, 0.1))
    repo = ModelRepository(tmp_path, tmp_path / ".state")
    watcher = PromotionWatcher(repo, "fraud", "champion", live, load, "test-1", 0.02)

    promote(repo, "fraud", "2", force=True)
    assert watcher.check_once() is True
    assert live.current.champion.version == "2"
    assert live.current.shadows == ()
    assert live.current.canary is canary

    promote(repo, "fraud", "5", force=True)
    assert watcher.check_once() is True
    assert live.current.champion.version == "5"
    assert live.current.canary is None
    assert live.current.canary_fraction == 0.0
