"""bench/compare_commits.py: revisions resolved and exported without touching the repository."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bench.compare_commits import EXPORTED_PATHS, export_revision, resolve_revision
from bench.infra import REPO


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_resolve_revision_gives_the_full_commit_id() -> None:
    """A short or symbolic revision resolves to the commit's 40-hex id."""
    head = _git("rev-parse", "HEAD")
    assert resolve_revision("HEAD") == head
    assert resolve_revision(head[:7]) == head


def test_resolve_revision_names_an_unknown_revision() -> None:
    """An unknown revision is a clear error naming it."""
    with pytest.raises(ValueError, match="unknown revision 'no-such-branch-here'"):
        resolve_revision("no-such-branch-here")


def test_export_revision_writes_the_commits_tree_only(tmp_path: Path) -> None:
    """The export holds the service, models and schemas of the commit; no worktree is added."""
    worktrees_before = _git("worktree", "list", "--porcelain")
    commit = resolve_revision("HEAD")
    tree = export_revision(commit, tmp_path / "a")
    assert sorted(p.name for p in tree.iterdir()) == sorted(EXPORTED_PATHS)
    committed = _git("show", f"{commit}:stream_scorer/__main__.py")
    assert (tree / "stream_scorer" / "__main__.py").read_text(encoding="utf-8").strip() == committed
    assert (tree / "models" / "fraud" / "1" / "model.json").is_file()
    assert _git("worktree", "list", "--porcelain") == worktrees_before
