"""Monitoring built from settings: what the composition root (``app.py``) calls."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from stream_scorer.decode.framing import Framing, SchemaSource
from stream_scorer.encode import AlertEncoder
from stream_scorer.errors import ConfigurationError
from stream_scorer.lifecycle.repository import HistoryEntry, default_instance_id
from stream_scorer.lifecycle.watcher import RollbackRules
from stream_scorer.model_set import LiveModels, LoadedModel, ModelSet
from stream_scorer.monitoring.canary_rollback import CanaryMetrics, CanaryRollback
from stream_scorer.monitoring.drift import DriftConfig
from stream_scorer.monitoring.labels import (
    LabelJoin,
    LabelMetrics,
    LabelParser,
    LabelsConsumer,
    labels_consumer_config,
)
from stream_scorer.monitoring.monitor import Monitor
from stream_scorer.monitoring.shadow import ShadowBudget
from stream_scorer.pipeline import score_and_flag
from stream_scorer.settings import Settings

__all__ = [
    "build_canary_rollback",
    "build_label_join",
    "build_labels_consumer",
    "build_monitor",
    "check_shadow_topic",
    "check_shadows",
]

#: Stands for the reader schema a label framing is built with: labels are read with their
#: writer schema alone (any record with the id and outcome fields will do).
_LABEL_READER: dict[str, Any] = {"type": "record", "name": "Label", "fields": []}


def check_shadows(champion: LoadedModel, shadows: tuple[LoadedModel, ...]) -> None:
    """Each shadow (and the canary) is a model version of its own: comparisons, gauges and
    alerts are labelled by it.

    Raises:
        ConfigurationError: A shadow has the champion's or another shadow's name/version.
    """
    seen = {champion.label}
    for shadow in shadows:
        if shadow.label in seen:
            msg = (
                f"monitoring.shadows/canary: {shadow.label} ({shadow.card.path}) is already "
                "in the model set; a shadow or canary must be another model version"
            )
            raise ConfigurationError(msg)
        seen.add(shadow.label)


def check_shadow_topic(settings: Settings, models: ModelSet, encoder: AlertEncoder) -> None:
    """With ``monitoring.shadow_topic``, each shadow's alerts are written in the alert schema:
    its published bands must be symbols of it, as the champion's are.

    Raises:
        ConfigurationError: A shadow's policy does not fit the alert schema.
    """
    if settings.monitoring.shadow_topic is None:
        return
    for shadow in models.shadows:
        encoder.check_policy(shadow.card.policy, shadow.label)


def _history(settings: Settings) -> Callable[[HistoryEntry], None] | None:
    """The lifecycle repository's ``record`` when it holds the canary's version folder
    (``<lifecycle.repository>/<name>/<version>``), else None (a canary from elsewhere has no
    history to write to)."""
    canary = settings.monitoring.canary
    if canary is None:
        return None
    from stream_scorer.lifecycle.service import repository  # noqa: PLC0415 - Kafka clients

    repo = repository(settings)
    if Path(canary).resolve().parent.parent != repo.root.resolve():
        return None
    return repo.record


def build_canary_rollback(
    settings: Settings, registry: CollectorRegistry | None, live: LiveModels | None
) -> CanaryRollback:
    """The canary's rollback by the lifecycle's rules (``[lifecycle] rollback_*``); counting
    only when ``lifecycle.auto_rollback`` is off."""
    lifecycle = settings.lifecycle
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
    return CanaryRollback(
        live,
        rules,
        None if registry is None else CanaryMetrics(registry),
        _history(settings),
        lifecycle.instance_id or default_instance_id(),
    )


def build_label_join(settings: Settings, registry: CollectorRegistry | None) -> LabelJoin | None:
    """The label join for ``settings.labels``, or None when no labels topic is set.

    Raises:
        ConfigurationError: The labels topic is one of the service's other topics.
    """
    labels = settings.labels
    if labels.topic is None:
        return None
    topics = settings.topics
    others = {"input": topics.input, "alerts": topics.alerts, "dead_letter": topics.dead_letter}
    if topics.scores is not None:
        others["scores"] = topics.scores
    for name, topic in others.items():
        if labels.topic == topic:
            msg = f"labels.topic: {topic!r} is also topics.{name}; labels need a topic of their own"
            raise ConfigurationError(msg)
    return LabelJoin(
        labels.max_age_s,
        labels.max_pending,
        labels.held_max_age_s,
        labels.max_held,
        labels.missing,
        labels.log_every,
        None if registry is None else LabelMetrics(registry),
    )


def build_labels_consumer(
    settings: Settings,
    monitor: Monitor | None,
    schema_registry: SchemaSource | None,
    client: Mapping[str, Any],
) -> LabelsConsumer | None:
    """The labels topic's consumer thread (not started), feeding the monitor's label join;
    None when there is no labels topic.

    Args:
        settings: Validated settings.
        monitor: The pipeline's monitor (its ``labels`` is the join).
        schema_registry: Resolves label writer schemas (``labels.format = "avro"``).
        client: librdkafka connection and security properties (and client callbacks).

    Raises:
        ConfigurationError: ``avro`` labels without a schema registry.
    """
    labels = settings.labels
    if monitor is None or monitor.labels is None or labels.topic is None:
        return None
    join = monitor.labels
    framing = None
    if labels.format == "avro":
        if schema_registry is None:
            msg = "labels.format: 'avro' labels are Confluent-framed and need schema.registry_url"
            raise ConfigurationError(msg)
        framing = Framing(_LABEL_READER, "confluent", registry=schema_registry)
    parser = LabelParser(
        labels.format, labels.id_field, labels.outcome_field, labels.positive, framing
    )
    config = labels_consumer_config(
        client,
        labels.group_id or f"{settings.kafka.group_id}-labels",
        settings.kafka.consumer,
        labels.offset_reset,
    )
    return LabelsConsumer(config, labels.topic, parser, join)


def build_monitor(
    settings: Settings,
    registry: CollectorRegistry | None,
    live: LiveModels | None = None,
    encoder: AlertEncoder | None = None,
    id_field: str | None = None,
) -> Monitor | None:
    """The monitor for ``settings.monitoring`` and ``settings.labels``, or None when drift is
    off and there are no shadows, no canary and no labels topic (nothing to do per batch).

    Args:
        settings: Validated settings.
        registry: Prometheus registry (None: no metrics).
        live: The set a canary that breaks a rollback rule is removed from.
        encoder: The alert encoder the shadow topic uses.
        id_field: Input field holding the event id (labels name events by it).

    Raises:
        ConfigurationError: A shadow's policy does not fit the alert schema (shadow topic), or
            the labels topic is one of the service's other topics.
    """
    m = settings.monitoring
    if live is not None and encoder is not None:
        check_shadow_topic(settings, live.current, encoder)
    labels = build_label_join(settings, registry)
    if not m.drift and not m.shadows and m.canary is None and labels is None:
        return None
    drift = DriftConfig(
        window_events=m.window_events,
        window_seconds=m.window_seconds,
        min_window_events=m.min_window_events,
        thresholds=m.thresholds,
        psi_warn=m.psi_warn,
        psi_alert=m.psi_alert,
        sigmas=m.sigmas,
    )
    budget = ShadowBudget(m.shadow_max_ratio, m.shadow_min_budget_ms, m.shadow_strikes)
    return Monitor(
        score_and_flag,
        registry,
        drift,
        budget,
        m.disagreements_per_minute,
        drift_enabled=m.drift,
        drift_max_share=m.drift_max_share,
        canary=None if m.canary is None else build_canary_rollback(settings, registry, live),
        labels=labels,
        id_field=id_field,
    )
