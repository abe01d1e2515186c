"""What ``app.build_runner`` calls: start following the alias when ``lifecycle.watch`` is on."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from stream_scorer.lifecycle.control import ControlFollower, ControlTopic
from stream_scorer.lifecycle.repository import HistoryEntry, ModelRepository, default_instance_id
from stream_scorer.lifecycle.watcher import PromotionWatcher, RollbackRules
from stream_scorer.model_set import LiveModels, LoadedModel, load_model
from stream_scorer.settings import LifecycleSettings, Settings, resource_root

__all__ = ["catch_up", "repository", "start_watcher", "state_dir"]


def state_dir(lifecycle: LifecycleSettings) -> Path:
    """Where aliases, validation results and the history live.

    ``lifecycle.state_dir`` when set; else ``<repository>/.lifecycle``, except for the models
    shipped inside an installed package: state is never written into site-packages (or an
    image's read-only ``/app``), but under ``$XDG_STATE_HOME/stream-scorer`` (by default
    ``~/.local/state/stream-scorer``).
    """
    if lifecycle.state_dir is not None:
        return lifecycle.state_dir
    root = resource_root()
    if root.name == "resources" and lifecycle.repository.resolve().is_relative_to(root):
        base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        return Path(base) / "stream-scorer"
    return lifecycle.repository / ".lifecycle"


def repository(settings: Settings) -> ModelRepository:
    """The repository the settings name; with ``watch = "kafka"`` alias changes are published."""
    lifecycle = settings.lifecycle
    if lifecycle.watch != "kafka":
        return ModelRepository(lifecycle.repository, state_dir(lifecycle))
    control = ControlTopic(settings.kafka.client_config(), lifecycle.control_topic)
    created: list[bool] = []

    def publish(name: str, state: Mapping[str, Any]) -> None:
        if not created:
            control.ensure()
            created.append(True)
        control.publish(name, state)

    def publish_entry(entry: HistoryEntry) -> None:
        if not created:
            control.ensure()
            created.append(True)
        control.publish_entry(entry)

    return ModelRepository(lifecycle.repository, state_dir(lifecycle), publish, publish_entry)


def catch_up(settings: Settings, repo: ModelRepository) -> None:
    """With ``watch = "kafka"``, mirror the control topic into the local state once (CLI)."""
    lifecycle = settings.lifecycle
    if lifecycle.watch != "kafka":
        return
    client = settings.kafka.client_config()
    ControlTopic(client, lifecycle.control_topic).ensure()
    follower = ControlFollower(client, lifecycle.control_topic, repo, threading.Event())
    try:
        follower.catch_up()
    finally:
        follower.close()


def start_watcher(
    settings: Settings,
    live: LiveModels,
    reader: Mapping[str, Any],
    registry: CollectorRegistry,
    stop: threading.Event,
) -> PromotionWatcher | None:
    """Follow the configured alias of the live model; None when ``lifecycle.watch`` is off.

    The alias is applied once before this returns, so a member started after a promotion
    scores its first batch with the promoted version; later moves are picked up by a thread.

    Raises:
        ConfigurationError: The alias names a version that cannot be found, or the control
            topic cannot be created or read.
    """
    lifecycle = settings.lifecycle
    if lifecycle.watch == "off":
        return None
    model = settings.model
    repo = repository(settings)
    if lifecycle.watch == "kafka":
        # Mirror the control topic into the local state before the first batch, then follow.
        client = settings.kafka.client_config()
        ControlTopic(client, lifecycle.control_topic).ensure()
        follower = ControlFollower(client, lifecycle.control_topic, repo, stop)
        follower.catch_up()
        follower.start()

    def load(path: Path) -> LoadedModel:
        # The version's own card threshold: model.threshold overrides only model.path's model.
        return load_model(path, reader, model.intra_op_threads, model.verify_sha256)

    rules = (
        RollbackRules(
            lifecycle.watch_period_s,
            lifecycle.rollback_min_events,
            lifecycle.rollback_alert_rate_ratio,
            lifecycle.rollback_latency_ratio,
            lifecycle.rollback_max_bisections,
        )
        if lifecycle.auto_rollback
        else None
    )
    watcher = PromotionWatcher(
        repo,
        live.current.champion.name,
        lifecycle.alias,
        live,
        load,
        lifecycle.instance_id or default_instance_id(),
        lifecycle.poll_interval_s,
        registry,
        stop,
        rules,
    )
    watcher.check_once()
    watcher.start()
    return watcher
