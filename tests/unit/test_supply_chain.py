"""Supply chain: the image is built from digests and hash-locked packages only."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "Dockerfile"
#: Lock file → the pyproject extras it must cover (besides the runtime dependencies).
LOCKS = {
    "requirements.lock": ("signing",),
    "requirements-dev.lock": ("dev", "signing"),
}
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def _logical_lines(text: str) -> list[str]:
    """Dockerfile instructions with continuation lines joined and comments dropped."""
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    return lines


def _from_images(text: str) -> list[tuple[str, bool]]:
    """Each FROM's image with ARG defaults substituted, and whether it names an earlier stage."""
    args: dict[str, str] = {}
    stages: set[str] = set()
    images: list[tuple[str, bool]] = []
    for line in _logical_lines(text):
        keyword, _, rest = line.partition(" ")
        if keyword.upper() == "ARG" and "=" in rest and not images:
            name, _, value = rest.partition("=")
            args[name.strip()] = value.strip()
        if keyword.upper() != "FROM":
            continue
        words = [w for w in rest.split() if not w.startswith("--")]
        image = VARIABLE.sub(lambda m: args.get(m.group(1) or m.group(2), m.group(0)), words[0])
        images.append((image, image in stages))
        if len(words) >= 3 and words[1].upper() == "AS":
            stages.add(words[2])
    return images


def _locked(path: Path) -> dict[str, tuple[Version, int]]:
    """Package name → (pinned version, number of hashes) for the 3.11 branch of a lock file."""
    pins: dict[str, tuple[Version, int]] = {}
    name = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-\[\]]+)==([^ ;\\]+)(?:\s*;\s*([^\\]+))?", line)
        if match:
            marker = match.group(3) or ""
            name = ""
            if "python_full_version >= '3.12'" in marker:  # the image runs 3.11
                continue
            name = canonicalize_name(match.group(1).split("[")[0])
            pins[name] = (Version(match.group(2)), 0)
        elif name and "--hash=sha256:" in line:
            version, hashes = pins[name]
            pins[name] = (version, hashes + 1)
        elif line.strip() and not line.startswith((" ", "#")):
            pytest.fail(f"{path.name}: not a pinned requirement: {line!r}")
    return pins


def test_every_from_is_pinned_by_digest() -> None:
    """Every base image in the Dockerfile is pinned by an immutable sha256 digest."""
    images = _from_images(DOCKERFILE.read_text(encoding="utf-8"))

    assert images, "no FROM found"
    unpinned = [image for image, is_stage in images if not is_stage and not DIGEST.search(image)]
    assert not unpinned, f"FROM without a digest: {unpinned}"


def test_every_pulled_compose_image_is_pinned_by_digest() -> None:
    """Every image docker-compose.yml pulls (not the one it builds) names a sha256 digest, so a
    moved tag cannot change what a clean `docker compose up` runs."""
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    pulled = {
        name: service["image"]
        for name, service in compose["services"].items()
        if "image" in service
        and "build" not in service
        and service["image"] != "stream-scorer:local"
    }

    assert pulled, "no pulled image found"
    unpinned = {name: image for name, image in pulled.items() if not DIGEST.search(image)}
    assert not unpinned, f"images without a digest: {unpinned}"


def test_digest_check_catches_a_tag(tmp_path: Path) -> None:
    """The parser sees through ARG defaults: a tag-only image is reported."""
    text = "ARG BASE=python:3.11-slim\nFROM ${BASE} AS build\nFROM build\nFROM --platform=x b:1\n"

    assert _from_images(text) == [("python:3.11-slim", False), ("build", True), ("b:1", False)]


def test_dockerfile_installs_only_hash_locked_packages() -> None:
    """Each pip install uses --require-hashes with a lock file, or --no-deps on the own wheel."""
    runs = [line for line in _logical_lines(DOCKERFILE.read_text(encoding="utf-8"))]
    commands = [
        command.strip()
        for line in runs
        if line.startswith("RUN ")
        for command in re.split(r"&&|;", line[4:])
        if re.search(r"\bpip (install|wheel)\b", command)
    ]

    assert commands, "the Dockerfile installs nothing with pip"
    for command in commands:
        if " wheel " in f" {command} ":
            assert "--no-build-isolation" in command and "--no-deps" in command, command
        elif "--require-hashes" in command:
            lock = re.search(r"-r (\S+)", command)
            assert lock is not None, command
            assert (REPO_ROOT / lock.group(1)).is_file(), f"{lock.group(1)} is not in the repo"
        else:
            assert "--no-deps" in command and "/wheels/" in command, f"unlocked: {command}"


@pytest.mark.parametrize("lock", [*LOCKS, "requirements-build.lock"])
def test_lock_pins_every_package_with_hashes(lock: str) -> None:
    """Every entry of a lock file is pinned with == and has at least one sha256."""
    pins = _locked(REPO_ROOT / lock)

    assert pins
    assert [name for name, (_, hashes) in pins.items() if hashes == 0] == []


@pytest.mark.parametrize(("lock", "extras"), list(LOCKS.items()))
def test_lock_satisfies_pyproject(lock: str, extras: tuple[str, ...]) -> None:
    """Every dependency pyproject.toml declares is locked at a version it allows."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        wanted += [Requirement(r) for r in project["optional-dependencies"][extra]]
    pins = _locked(REPO_ROOT / lock)

    problems = []
    for requirement in wanted:
        name = canonicalize_name(requirement.name)
        if name not in pins:
            problems.append(f"{name} is not locked")
        elif not requirement.specifier.contains(pins[name][0], prereleases=True):
            problems.append(f"{name}=={pins[name][0]} does not satisfy {requirement.specifier}")
    assert problems == [], f"{lock} is stale; rerun the command at its top: {problems}"
