"""Monitoring built from settings: what the composition root (``app.py``) calls."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from stream_scorer.errors import ConfigurationError
from stream_scorer.model_set import LoadedModel
from stream_scorer.monitoring.drift import DriftConfig
from stream_scorer.monitoring.monitor import Monitor
from stream_scorer.monitoring.shadow import ShadowBudget
from stream_scorer.pipeline import score_and_flag
from stream_scorer.settings import Settings

__all__ = ["build_monitor", "check_shadows"]


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


def build_monitor(settings: Settings, registry: CollectorRegistry | None) -> Monitor | None:
    """The monitor for ``settings.monitoring``, or None when drift is off and there are no
    shadows (nothing to do per batch)."""
    m = settings.monitoring
    if not m.drift and not m.shadows:
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
    )
