"""Where the lifecycle keeps its state: never inside an installed package."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream_scorer.lifecycle import service
from stream_scorer.settings import LifecycleSettings


def test_state_dir_set_is_used(tmp_path: Path) -> None:
    """An explicit `lifecycle.state_dir` wins over every default."""
    settings = LifecycleSettings(repository=tmp_path / "models", state_dir=tmp_path / "state")

    assert service.state_dir(settings) == tmp_path / "state"


def test_own_repository_keeps_state_beside_it(tmp_path: Path) -> None:
    """A team's own repository keeps its state in `<repository>/.lifecycle`."""
    settings = LifecycleSettings(repository=tmp_path / "models")

    assert service.state_dir(settings) == tmp_path / "models" / ".lifecycle"


def test_shipped_models_of_an_installed_package_keep_state_out_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The models inside an installed wheel (stream_scorer/resources) keep their state under
    $XDG_STATE_HOME/stream-scorer, never in site-packages."""
    resources = tmp_path / "site-packages" / "stream_scorer" / "resources"
    (resources / "models").mkdir(parents=True)
    monkeypatch.setattr(service, "resource_root", lambda: resources)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state-home"))
    settings = LifecycleSettings(repository=resources / "models")

    state = service.state_dir(settings)

    assert state == tmp_path / "state-home" / "stream-scorer"
    assert not state.is_relative_to(resources)


def test_shipped_models_without_xdg_state_home_use_the_home_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without $XDG_STATE_HOME the state goes to ~/.local/state/stream-scorer."""
    resources = tmp_path / "stream_scorer" / "resources"
    (resources / "models").mkdir(parents=True)
    monkeypatch.setattr(service, "resource_root", lambda: resources)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    settings = LifecycleSettings(repository=resources / "models")

    assert service.state_dir(settings) == tmp_path / "home" / ".local" / "state" / "stream-scorer"
