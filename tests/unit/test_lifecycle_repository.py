"""Model repository: references, versions, aliases, validation records, promotion, history."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from stream_scorer.lifecycle import LifecycleError, ModelRef, ModelRepository, promote, rollback

REPO_ROOT = Path(__file__).resolve().parents[2]


def make_repo(tmp_path: Path, versions: tuple[str, ...] = ("1", "2")) -> ModelRepository:
    """A repository in ``tmp_path`` holding copies of the shipped fraud versions."""
    for version in versions:
        source = REPO_ROOT / "models/fraud" / ("2" if version == "2" else "1")
        shutil.copytree(source, tmp_path / "models/fraud" / version)
    return ModelRepository(tmp_path / "models", tmp_path / "state")


def passed(repo: ModelRepository, version: str) -> None:
    """Record a passing validation for ``fraud/version``."""
    repo.record_validation("fraud", version, {"passed": True, "gates": []})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("fraud", ModelRef("fraud")),
        ("fraud/2", ModelRef("fraud", version="2")),
        ("fraud@champion", ModelRef("fraud", alias="champion")),
    ],
)
def test_ref_parses_the_three_forms(text: str, expected: ModelRef) -> None:
    """NAME, NAME/VERSION and NAME@ALIAS parse, and print back as typed."""
    assert ModelRef.parse(text) == expected
    assert str(ModelRef.parse(text)) == text


@pytest.mark.parametrize("text", ["../etc", "fraud/../1", "fraud@", "", "fraud/a/b"])
def test_ref_refuses_path_tricks(text: str) -> None:
    """A reference that could escape the repository is refused with the offending part."""
    with pytest.raises(LifecycleError, match="not a valid name"):
        ModelRef.parse(text)


def test_versions_sort_numerically(tmp_path: Path) -> None:
    """Version 10 comes after version 2, not between 1 and 2."""
    repo = make_repo(tmp_path, ("1", "10", "2"))
    assert repo.versions("fraud") == ["1", "2", "10"]
    assert repo.names() == ["fraud"]


def test_unknown_version_names_the_known_ones(tmp_path: Path) -> None:
    """Asking for a missing version says which versions exist."""
    repo = make_repo(tmp_path)
    with pytest.raises(LifecycleError, match=r"fraud/7 not found .*versions: 1, 2"):
        repo.folder("fraud", "7")


def test_unvalidated_promotion_is_refused_and_recorded(tmp_path: Path) -> None:
    """Promoting a version that never passed fails, and the refusal is in the history."""
    repo = make_repo(tmp_path)
    with pytest.raises(LifecycleError, match="validation status is not validated"):
        promote(repo, "fraud", "2", by="alice")
    assert repo.aliases("fraud") == {}
    (entry,) = repo.history("fraud")
    assert (entry.action, entry.version, entry.by) == ("refuse", "2", "alice")


def test_forced_promotion_is_recorded_as_forced(tmp_path: Path) -> None:
    """--force moves the alias, and the history says it was forced and why."""
    repo = make_repo(tmp_path)
    entry = promote(repo, "fraud", "2", by="bob", force=True)
    assert repo.aliases("fraud") == {"champion": "2"}
    assert entry.action == "force"
    assert "not validated" in repo.history("fraud")[-1].reason


def test_promote_then_rollback_walks_the_stack(tmp_path: Path) -> None:
    """Each rollback returns to the version held before the last promotion, then refuses."""
    repo = make_repo(tmp_path, ("1", "2", "3"))
    for version in ("1", "2", "3"):
        passed(repo, version)
        promote(repo, "fraud", version, by="ops")
    assert repo.resolve(ModelRef.parse("fraud@champion")) == ("fraud", "3")
    assert rollback(repo, "fraud", by="ops") is not None
    assert repo.aliases("fraud")["champion"] == "2"
    rollback(repo, "fraud", by="ops")
    assert repo.aliases("fraud")["champion"] == "1"
    with pytest.raises(LifecycleError, match="no earlier version"):
        rollback(repo, "fraud", by="ops")
    actions = [(e.action, e.version, e.previous) for e in repo.history("fraud")]
    assert actions[-2:] == [("rollback", "2", "3"), ("rollback", "1", "2")]


def test_automatic_rollback_does_not_undo_a_newer_promotion(tmp_path: Path) -> None:
    """A rule rolling back version 2 does nothing once an operator has moved on to 3."""
    repo = make_repo(tmp_path, ("1", "2", "3"))
    for version in ("1", "2", "3"):
        passed(repo, version)
        promote(repo, "fraud", version)
    result = rollback(repo, "fraud", by="rule:alert-rate", action="auto-rollback", expect="2")
    assert result is None
    assert repo.aliases("fraud")["champion"] == "3"


def test_aliases_are_independent(tmp_path: Path) -> None:
    """champion and challenger move separately."""
    repo = make_repo(tmp_path)
    passed(repo, "1")
    passed(repo, "2")
    promote(repo, "fraud", "1")
    promote(repo, "fraud", "2", alias="challenger")
    assert repo.aliases("fraud") == {"champion": "1", "challenger": "2"}


def test_validation_goes_stale_when_the_file_changes(tmp_path: Path) -> None:
    """A version changed after it passed no longer counts as validated and cannot be promoted."""
    repo = make_repo(tmp_path)
    passed(repo, "2")
    assert repo.validation_status("fraud", "2") == "passed"
    onnx = repo.folder("fraud", "2") / "model.onnx"
    onnx.write_bytes(onnx.read_bytes() + b"\0")
    assert repo.validation_status("fraud", "2") == "stale"
    with pytest.raises(LifecycleError, match="stale"):
        promote(repo, "fraud", "2")


def test_state_lives_outside_the_model_folders(tmp_path: Path) -> None:
    """Promotion writes nothing into a version folder: its files stay what was trained."""
    repo = make_repo(tmp_path)
    before = sorted(p.name for p in repo.folder("fraud", "2").iterdir())
    passed(repo, "2")
    promote(repo, "fraud", "2")
    assert sorted(p.name for p in repo.folder("fraud", "2").iterdir()) == before
    state = json.loads((tmp_path / "state/fraud/aliases.json").read_text())
    assert state["aliases"] == {"champion": "2"}
