"""The built wheel, installed into a clean virtual environment, works from any directory.

Builds the wheel from a copy of the files the build needs (as the Dockerfile does), installs it
with its dependencies from PyPI (pip's cache makes reruns quick) into a fresh ``python -m
venv``, then runs the installed ``stream-scorer`` from an empty temporary directory: the
schemas, the model and the example config must come from the package.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
#: What the wheel is built from: the same list as the Dockerfile's build stage.
BUILD_INPUTS = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "LICENSE",
                "scorer.example.toml", "schemas", "models", "stream_scorer")  # fmt: skip
#: Generous: the first install downloads onnxruntime, numpy and friends.
INSTALL_TIMEOUT_S = 900

pytestmark = pytest.mark.slow


def _clean_env() -> dict[str, str]:
    """The environment without STREAM_SCORER_* or PYTHONPATH: the installed copy stands alone."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith("STREAM_SCORER_") and k not in {"PYTHONPATH", "VIRTUAL_ENV"}
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of the build inputs."""
    src = tmp_path_factory.mktemp("src")
    for name in BUILD_INPUTS:
        source = REPO_ROOT / name
        if source.is_dir():
            shutil.copytree(source, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, src / name)
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), str(src)],
        check=True,
        env=_clean_env(),
        timeout=INSTALL_TIMEOUT_S,
    )
    (built,) = dist.glob("stream_scorer-*.whl")
    return built


@pytest.fixture(scope="module")
def scorer(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``stream-scorer`` script of a fresh virtual environment holding only the wheel."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)],
        check=True,
        env=_clean_env(),
        timeout=INSTALL_TIMEOUT_S,
    )
    return venv / "bin" / "stream-scorer"


def _run(argv: list[str], cwd: Path, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=timeout_s,
        check=False,
    )  # fmt: skip


def test_wheel_ships_schemas_models_example_and_license(wheel: Path) -> None:
    """The wheel holds the schemas, the model folders, the example config and the LICENSE."""
    names = set(zipfile.ZipFile(wheel).namelist())
    resources = "stream_scorer/resources/"

    for path in [*REPO_ROOT.glob("schemas/*.avsc"), REPO_ROOT / "scorer.example.toml"]:
        assert resources + str(path.relative_to(REPO_ROOT)) in names
    for name in ("model.onnx", "model.json", "MODEL_CARD.md"):
        assert f"{resources}models/fraud/1/{name}" in names
    assert not [n for n in names if n.startswith(resources) and n.endswith(".py")]  # no training
    assert any(re.fullmatch(r"stream_scorer-[^/]+\.dist-info/licenses/LICENSE", n) for n in names)
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    assert "License-Expression: Apache-2.0" in zipfile.ZipFile(wheel).read(metadata).decode()


def test_config_check_without_config_from_any_directory(scorer: Path, tmp_path: Path) -> None:
    """`config check` with no file, from an empty folder, finds the shipped schemas and model."""
    result = _run([str(scorer), "config", "check", "--log-level", "error"], tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: config valid; reader schema Transaction; model fraud/1")
    assert result.stderr == ""


def test_config_check_with_the_shipped_example(scorer: Path, tmp_path: Path) -> None:
    """The example printed by `config example` passes `config check` from another folder."""
    etc = tmp_path / "etc"
    etc.mkdir()
    example = _run([str(scorer), "config", "example"], tmp_path)
    assert example.returncode == 0
    (etc / "scorer.toml").write_text(example.stdout, encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    result = _run([str(scorer), "config", "check", "--config", "../etc/scorer.toml"], elsewhere)

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: config valid")


def test_relative_paths_in_a_config_resolve_against_its_folder(
    scorer: Path, tmp_path: Path
) -> None:
    """`schema.reader = "mine/in.avsc"` in etc/scorer.toml reads etc/mine/in.avsc, from any cwd."""
    mine = tmp_path / "etc" / "mine"
    mine.mkdir(parents=True)
    shutil.copy2(REPO_ROOT / "schemas" / "transaction.avsc", mine / "in.avsc")
    config = tmp_path / "etc" / "scorer.toml"
    config.write_text('[schema]\nreader = "mine/in.avsc"\nalert = "mine/absent.avsc"\n', "utf-8")

    result = _run([str(scorer), "config", "check", "--config", str(config)], tmp_path)

    # The reader was found next to the config; the alert schema is reported at its resolved path.
    assert result.returncode == 2
    assert result.stderr == (
        f"stream-scorer: configuration error: schema.alert: cannot read schema "
        f"{mine / 'absent.avsc'}: [Errno 2] No such file or directory: '{mine / 'absent.avsc'}'\n"
    )


def test_demo_runs_from_any_directory(scorer: Path, tmp_path: Path) -> None:
    """`stream-scorer demo --duration 5` from an empty folder scores events and exits 0."""
    result = _run([str(scorer), "demo", "--duration", "5"], tmp_path, timeout_s=180)

    assert result.returncode == 0, result.stdout + result.stderr
    stopped = re.search(r"Stopped: (\d+) events consumed, (\d+) alerts, (\d+) dead letters, "
                        r"exit code 0\.", result.stdout)  # fmt: skip
    assert stopped, result.stdout
    assert int(stopped.group(1)) > 0
    assert "Traceback" not in result.stderr
