"""Model folders on disk, their aliases, validation results and history, kept side by side.

Layout, with ``state`` = ``lifecycle.state_dir`` (default ``<repository>/.lifecycle``)::

    <repository>/<name>/<version>/model.onnx, model.json      what a data scientist ships
    <state>/<name>/aliases.json                                {"aliases": {...}, "previous": {...}}
    <state>/<name>/validation/<version>.json                   the last `models validate` result
    <state>/<name>/history.jsonl                               one JSON object per change

Model folders are never written to, so a version's files stay exactly what was trained (and
hashed). Every read-modify-write of a model's state holds an ``fcntl`` lock on
``<state>/<name>/.lock``, so two operators promoting at once serialise; files are replaced
atomically (write, fsync, rename), so a watcher never reads half a file.
"""

from __future__ import annotations

import fcntl
import getpass
import json
import os
import re
import socket
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from stream_scorer.errors import ConfigurationError
from stream_scorer.model_card import ModelCard, file_sha256

__all__ = [
    "HistoryEntry",
    "LifecycleError",
    "ModelRef",
    "ModelRepository",
    "current_user",
    "default_instance_id",
    "promote",
    "rollback",
]

log = structlog.get_logger(__name__)

#: Names of models, versions and aliases: no path separators, no leading dot.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class LifecycleError(ConfigurationError):
    """A lifecycle request that cannot be carried out (unknown version, refused promotion)."""


def _check_name(kind: str, value: str) -> str:
    if not NAME_RE.match(value):
        msg = f"{kind} {value!r} is not a valid name (letters, digits, '_', '.', '-')"
        raise LifecycleError(msg)
    return value


@dataclass(frozen=True, slots=True)
class ModelRef:
    """``NAME``, ``NAME/VERSION`` or ``NAME@ALIAS`` as typed on the command line."""

    name: str
    version: str | None = None
    alias: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        """Parse a reference.

        Raises:
            LifecycleError: Not one of the three forms, or a bad name.
        """
        if "@" in text:
            name, alias = text.split("@", 1)
            return cls(_check_name("model", name), alias=_check_name("alias", alias))
        if "/" in text:
            name, version = text.split("/", 1)
            return cls(_check_name("model", name), version=_check_name("version", version))
        return cls(_check_name("model", text))

    def __str__(self) -> str:
        """As typed."""
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        return self.name if self.version is None else f"{self.name}/{self.version}"


def _version_key(version: str) -> tuple[int, int | str]:
    # Numeric versions in numeric order (2 before 10), others after them by name.
    return (0, int(version)) if version.isdigit() else (1, version)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def current_user() -> str:
    """Who runs this command, for the history."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry in some containers
        return f"uid:{os.getuid()}"


def default_instance_id() -> str:
    """``<hostname>-<pid>``: distinct for each member of a group."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One change of a model's aliases or serving state.

    ``action`` is one of ``promote``, ``rollback``, ``refuse`` (a promotion refused: not
    validated), ``force`` (promoted although not validated), ``auto-rollback`` (by a rule),
    ``validate`` (a validation result), ``applied`` (an instance now serves the version),
    ``apply-failed`` (an instance could not load it and kept the old one).
    """

    action: str
    model: str
    version: str | None
    alias: str | None = None
    previous: str | None = None
    by: str = ""
    reason: str = ""
    instance: str | None = None
    at: str = field(default_factory=_now)
    detail: Mapping[str, Any] = field(default_factory=dict)
    #: Unique id: the control topic carries entries between hosts, each kept once.
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def to_json(self) -> str:
        """One line of ``history.jsonl``."""
        return json.dumps(asdict(self), sort_keys=True, default=str)

    @classmethod
    def from_json(cls, line: str) -> HistoryEntry:
        """Parse one line of ``history.jsonl``."""
        raw = json.loads(line)
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class ModelRepository:
    """The model folders under ``root`` and their lifecycle state under ``state_dir``."""

    def __init__(
        self,
        root: Path,
        state_dir: Path | None = None,
        on_alias_change: Callable[[str, Mapping[str, Any]], None] | None = None,
        on_record: Callable[[HistoryEntry], None] | None = None,
    ) -> None:
        """Open the repository (nothing is created until something is written).

        Args:
            root: Folder of ``<name>/<version>/`` model folders.
            state_dir: Aliases, validation results, history; default ``root/.lifecycle``.
            on_alias_change: Told ``(name, alias state)`` after every alias change this
                process makes (the control topic's publisher).
            on_record: Told of every history entry this process records (the same).
        """
        self.root = Path(root)
        self.state_dir = Path(state_dir) if state_dir is not None else self.root / ".lifecycle"
        self.on_alias_change = on_alias_change
        self.on_record = on_record

    # -- what is on disk ------------------------------------------------------------------

    def names(self) -> list[str]:
        """Models that have at least one version folder with a card."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and not p.name.startswith(".") and any(p.glob("*/model.json"))
        )

    def versions(self, name: str) -> list[str]:
        """Version folders of ``name`` holding a ``model.json``, oldest first."""
        folder = self.root / _check_name("model", name)
        found = [p.parent.name for p in folder.glob("*/model.json")]
        return sorted(found, key=_version_key)

    def folder(self, name: str, version: str) -> Path:
        """``<repository>/<name>/<version>``.

        Raises:
            LifecycleError: No such version.
        """
        path = self.root / _check_name("model", name) / _check_name("version", version)
        if not (path / "model.json").is_file():
            known = ", ".join(self.versions(name)) or "none"
            msg = f"model {name}/{version} not found in {self.root} (versions: {known})"
            raise LifecycleError(msg)
        return path

    def card(self, name: str, version: str) -> ModelCard:
        """The parsed card of one version."""
        return ModelCard.load(self.folder(name, version))

    def resolve(self, ref: ModelRef, default_alias: str = "champion") -> tuple[str, str]:
        """``(name, version)`` for a reference; a bare name means its ``default_alias``.

        Raises:
            LifecycleError: Unknown version, or an alias that points nowhere.
        """
        if ref.version is not None:
            self.folder(ref.name, ref.version)
            return ref.name, ref.version
        alias = ref.alias or default_alias
        version = self.aliases(ref.name).get(alias)
        if version is None:
            msg = f"model {ref.name} has no alias {alias!r} (aliases: {self.aliases(ref.name)})"
            raise LifecycleError(msg)
        return ref.name, version

    # -- state: aliases, validation, history ----------------------------------------------

    def _state(self, name: str) -> Path:
        return self.state_dir / _check_name("model", name)

    @contextmanager
    def locked(self, name: str) -> Iterator[None]:
        """Hold the model's state lock (between processes) for a read-modify-write."""
        folder = self._state(name)
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / ".lock").open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _alias_state(self, name: str) -> dict[str, dict[str, Any]]:
        path = self._state(name) / "aliases.json"
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"aliases": {}, "previous": {}}
        except (OSError, json.JSONDecodeError) as exc:
            msg = f"cannot read aliases {path}: {exc}"
            raise LifecycleError(msg) from exc
        return {"aliases": dict(raw.get("aliases", {})), "previous": dict(raw.get("previous", {}))}

    def aliases(self, name: str) -> dict[str, str]:
        """``{alias: version}`` of one model."""
        return dict(self._alias_state(name)["aliases"])

    def aliases_mtime(self, name: str) -> float | None:
        """Modification time of the aliases file (a cheap change check for watchers)."""
        try:
            return (self._state(name) / "aliases.json").stat().st_mtime_ns / 1e9
        except FileNotFoundError:
            return None

    def _set_alias(self, name: str, alias: str, version: str, *, push: bool) -> str | None:
        """Point ``alias`` at ``version``; the caller holds the lock. Returns the old version."""
        state = self._alias_state(name)
        old = state["aliases"].get(alias)
        state["aliases"][alias] = version
        stack = list(state["previous"].get(alias, []))
        if push and old is not None and old != version:
            stack.append(old)
        elif not push and stack:
            stack.pop()
        state["previous"][alias] = stack
        _write_atomic(
            self._state(name) / "aliases.json", json.dumps(state, indent=2, sort_keys=True) + "\n"
        )
        if self.on_alias_change is not None:
            self.on_alias_change(name, state)
        return old

    def mirror_aliases(self, name: str, state: Mapping[str, Any]) -> None:
        """Replace the model's alias state with one received from the control topic.

        Raises:
            LifecycleError: The state is not ``{"aliases": {...}, "previous": {...}}``.
        """
        aliases, previous = state.get("aliases"), state.get("previous", {})
        if not isinstance(aliases, Mapping) or not isinstance(previous, Mapping):
            msg = f"alias state for {name!r} must hold 'aliases' and 'previous' objects"
            raise LifecycleError(msg)
        body = {"aliases": dict(aliases), "previous": dict(previous)}
        with self.locked(name):
            if self._alias_state(name) == body:
                return
            _write_atomic(
                self._state(name) / "aliases.json",
                json.dumps(body, indent=2, sort_keys=True) + "\n",
            )

    def previous(self, name: str, alias: str) -> list[str]:
        """Versions ``alias`` held before, oldest first (what rollbacks return to)."""
        return list(self._alias_state(name)["previous"].get(alias, []))

    def record(self, entry: HistoryEntry) -> None:
        """Append one entry to the model's history (and hand it to ``on_record``)."""
        self._append(entry)
        if self.on_record is not None:
            try:
                self.on_record(entry)
            except LifecycleError as exc:  # kept locally; the other hosts miss this line
                log.error("history_not_published", model=entry.model, error=str(exc))

    def mirror_entry(self, entry: HistoryEntry) -> None:
        """Append an entry received from the control topic, unless it is already here."""
        with self.locked(entry.model):
            if entry.id not in {e.id for e in self.history(entry.model)}:
                self._append(entry)

    def _append(self, entry: HistoryEntry) -> None:
        path = self._state(entry.model) / "history.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        # One write of one line in append mode: lines from concurrent instances never mix.
        with path.open("a", encoding="utf-8") as fh:
            fh.write(entry.to_json() + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def history(self, name: str) -> list[HistoryEntry]:
        """The model's history, oldest first."""
        path = self._state(name) / "history.jsonl"
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        return [HistoryEntry.from_json(line) for line in lines if line.strip()]

    def record_validation(self, name: str, version: str, report: Mapping[str, Any]) -> None:
        """Keep the last validation result of a version, with the hashes it was run on."""
        card = self.card(name, version)
        body = {**report, "at": _now(), "model_sha256": _model_hash(card)}
        path = self._state(name) / "validation" / f"{_check_name('version', version)}.json"
        _write_atomic(path, json.dumps(body, indent=2, sort_keys=True) + "\n")

    def validation(self, name: str, version: str) -> dict[str, Any] | None:
        """The last validation result of a version, or None when it was never validated.

        A result whose recorded hash no longer matches the file (the model was changed after
        it was validated) is reported with ``"stale": true`` and never counts as passed.
        """
        path = self._state(name) / "validation" / f"{_check_name('version', version)}.json"
        try:
            body: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError) as exc:
            msg = f"cannot read validation result {path}: {exc}"
            raise LifecycleError(msg) from exc
        try:
            current = _model_hash(self.card(name, version))
        except (OSError, ConfigurationError):
            current = None
        body["stale"] = current != body.get("model_sha256")
        return body

    def validation_status(self, name: str, version: str) -> str:
        """``passed``, ``failed``, ``stale`` or ``not validated``."""
        result = self.validation(name, version)
        if result is None:
            return "not validated"
        if result["stale"]:
            return "stale"
        return "passed" if result.get("passed") else "failed"


def _model_hash(card: ModelCard) -> str:
    """sha256 of the ONNX file, as it is now (not as the card claims)."""
    return file_sha256(card.model_file)


def promote(
    repo: ModelRepository,
    name: str,
    version: str,
    alias: str = "champion",
    *,
    by: str | None = None,
    reason: str = "",
    force: bool = False,
) -> HistoryEntry:
    """Point ``alias`` at ``version``, if it has passed validation (or ``force``).

    Returns:
        The history entry written (``promote`` or ``force``).

    Raises:
        LifecycleError: Unknown version, or not validated and not forced (the refusal is
            recorded in the history first).
    """
    repo.folder(name, version)
    _check_name("alias", alias)
    user = by or current_user()
    status = repo.validation_status(name, version)
    with repo.locked(name):
        if status != "passed" and not force:
            entry = HistoryEntry(
                "refuse", name, version, alias, repo.aliases(name).get(alias), user,
                reason or f"validation status: {status}",
            )  # fmt: skip
            repo.record(entry)
            msg = (
                f"refusing to promote {name}/{version} to {alias}: validation status is {status}"
                f" (run `stream-scorer models validate {name}/{version}`, or pass --force)"
            )
            raise LifecycleError(msg)
        old = repo._set_alias(name, alias, version, push=True)  # the module's own helper
        action = "promote" if status == "passed" else "force"
        entry = HistoryEntry(
            action, name, version, alias, old, user,
            reason or ("" if action == "promote" else f"forced; validation status: {status}"),
        )  # fmt: skip
        repo.record(entry)
    return entry


def rollback(
    repo: ModelRepository,
    name: str,
    alias: str = "champion",
    *,
    by: str | None = None,
    reason: str = "",
    action: str = "rollback",
    expect: str | None = None,
) -> HistoryEntry | None:
    """Point ``alias`` back at the version it held before the last promotion.

    Args:
        repo: The repository.
        name: The model.
        alias: Which alias.
        by: User, or ``rule:<name>`` for an automatic rollback.
        reason: Why.
        action: ``rollback`` or ``auto-rollback``.
        expect: Roll back only if the alias still points at this version (an automatic
            rollback must not undo a newer promotion); None rolls back whatever it holds.

    Returns:
        The history entry, or None when ``expect`` no longer holds (nothing was changed).

    Raises:
        LifecycleError: The alias has no earlier version.
    """
    with repo.locked(name):
        current = repo.aliases(name).get(alias)
        if expect is not None and current != expect:
            return None
        stack = repo.previous(name, alias)
        if not stack:
            msg = f"model {name}: alias {alias!r} has no earlier version to roll back to"
            raise LifecycleError(msg)
        target = stack[-1]
        repo._set_alias(name, alias, target, push=False)  # the module's own helper
        entry = HistoryEntry(action, name, target, alias, current, by or current_user(), reason)
        repo.record(entry)
    return entry
