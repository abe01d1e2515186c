"""Arithmetic of the monitoring-cost phase (issue 11): what drift, a shadow and a canary cost.

The phase (``Harness.monitoring`` in :mod:`bench.run`) runs the real service over the real
broker, each run over the whole pre-produced data set from the beginning with its own group,
in four configurations, alternating within one run:

* ``plain``: ``monitoring.drift = false``, no shadow, no canary: the reference;
* ``drift``: drift on as shipped (``drift_max_share`` and windows at their defaults);
* ``shadow``: drift off, one shadow of exactly the champion's size (fraud/1's graph under
  another version, see :func:`write_same_size_shadow`) with a budget it cannot exhaust, so
  it is never dropped mid-run and measured as free;
* ``canary``: drift off, ``fraud/2`` deciding :data:`CANARY_FRACTION` of the events.

Targets: drift costs at most 5 % of the plain rate; the shadow's extra time per event is at
most the champion's own model time per event (featurize + score, from the plain runs'
``stream_scorer_stage_duration_seconds``): decode is shared, so a shadow should cost its
model and no more. The canary has no target; it is reported beside them.
:func:`summarize` turns the runs into those numbers; :mod:`bench.drift_cost` is the same
question asked of the pipeline in-process, without the broker.
"""

from __future__ import annotations

import json
import shutil
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.alternate import compare

__all__ = [
    "CANARY_FRACTION",
    "DRIFT_TARGET",
    "SHADOW_TARGET",
    "VARIANTS",
    "model_us_per_event",
    "overrides",
    "rotation_order",
    "summarize",
    "write_same_size_shadow",
]

#: Configurations in the order of the first round.
VARIANTS = ("plain", "drift", "shadow", "canary")
#: Issue 11: drift costs at most this share of the plain throughput.
DRIFT_TARGET = 0.05
#: Issue 11: a shadow's extra time per event at most this multiple of its own model time.
SHADOW_TARGET = 1.0
#: Share of events the canary decides (a typical first step of a canary).
CANARY_FRACTION = 0.1
#: The shadow's budget: far above anything a same-size model can reach, so it is never
#: dropped (a dropped shadow would be measured as free).
SHADOW_MAX_RATIO = 1000.0
#: Version of the same-size shadow.
SHADOW_VERSION = "1-shadow"


def rotation_order(rounds: int, variants: Sequence[str]) -> list[tuple[int, str]]:
    """``(round, variant)`` in run order: the list forwards, then backwards, and so on.

    With two variants this is :func:`bench.alternate.run_order` (A B, B A, ...); with more,
    each variant's mean position is the same over every two rounds, so a drift of the
    machine's load falls on all of them alike.

    Raises:
        ValueError: ``rounds`` is below 1 or there are no variants.
    """
    if rounds < 1 or not variants:
        msg = f"need at least one round and one variant, got {rounds} and {list(variants)}"
        raise ValueError(msg)
    order: list[tuple[int, str]] = []
    for i in range(rounds):
        names = list(variants) if i % 2 == 0 else list(reversed(variants))
        order.extend((i, name) for name in names)
    return order


def write_same_size_shadow(champion: Path, root: Path) -> Path:
    """Copy the champion's folder to ``root/<name>/1-shadow`` under its own version.

    A shadow must be another model version (the service refuses the champion as its own
    shadow); the same ONNX file under another version is a shadow of exactly the same size.
    The card's file hashes still match, since the file is unchanged.
    """
    card = json.loads((champion / "model.json").read_text(encoding="utf-8"))
    folder = root / str(card["name"]) / SHADOW_VERSION
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for item in champion.iterdir():
        if item.is_file() and item.name != "model.json":
            shutil.copy2(item, folder / item.name)
    card["version"] = SHADOW_VERSION
    (folder / "model.json").write_text(json.dumps(card, indent=2), encoding="utf-8")
    return folder


def overrides(shadow: Path, canary: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """The config sections each variant sets (by variant name)."""
    off: dict[str, Any] = {"drift": False}
    return {
        "plain": {"monitoring": dict(off)},
        "drift": {"monitoring": {"drift": True}},
        "shadow": {
            "monitoring": {**off, "shadows": [str(shadow)], "shadow_max_ratio": SHADOW_MAX_RATIO}
        },
        "canary": {
            "monitoring": {**off, "canary": str(canary), "canary_fraction": CANARY_FRACTION}
        },
    }


def model_us_per_event(stages: Mapping[str, Mapping[str, float]], consumed: float) -> float | None:
    """Featurize + score microseconds per consumed event, from stage-duration sums."""
    if consumed <= 0:
        return None
    seconds = sum(stages.get(stage, {}).get("seconds", 0.0) for stage in ("featurize", "score"))
    return seconds / consumed * 1e6


def _per_event_us(rate: float | None) -> float | None:
    return 1e6 / rate if rate else None


def summarize(
    rates: Mapping[str, Sequence[float | None]],
    plain_model_us: Sequence[float | None],
    shadow_own_us: Sequence[float | None] = (),
) -> dict[str, Any]:
    """What the rounds come to.

    Args:
        rates: Events/s per variant, one value per round (None where a run gave none).
        plain_model_us: The plain run's featurize + score µs per event, per round.
        shadow_own_us: The shadow's own featurize + score µs per event, per round (from
            ``stream_scorer_shadow_seconds_total``): the other side of the same comparison,
            timed inside the run rather than as a difference of two noisy rates.

    Returns:
        Per variant against plain, :func:`bench.alternate.compare`'s dict (``ratio_of_medians``
        and per-round ratios); ``drift_cost`` (1 − drift ÷ plain, from the medians) with its
        target and verdict; ``shadow_extra_us_per_event`` (1/shadow − 1/plain rate, from the
        medians), ``model_us_per_event`` (the plain runs' median), their ratio
        ``shadow_cost_vs_model`` with its target and verdict; ``canary_cost``.

    Raises:
        ValueError: ``plain`` is missing or has no value.
    """
    plain = rates.get("plain")
    if not plain or not any(plain):
        msg = "monitoring summary needs the plain runs"
        raise ValueError(msg)
    out: dict[str, Any] = {"vs_plain": {}}
    medians: dict[str, float] = {}
    for name, values in rates.items():
        present = [v for v in values if v]
        if present:
            medians[name] = statistics.median(present)
        if name != "plain" and present:
            out["vs_plain"][name] = compare(name, "plain", values, plain, "higher")
    out["median_events_per_s"] = {k: round(v, 1) for k, v in medians.items()}

    drift_cost = None
    if "drift" in medians:
        drift_cost = round(1 - medians["drift"] / medians["plain"], 4)
    out["drift_cost"] = drift_cost
    out["drift_target"] = DRIFT_TARGET
    out["drift_verdict"] = (
        "n/a" if drift_cost is None else "PASS" if drift_cost <= DRIFT_TARGET else "MISS"
    )

    model_values = [v for v in plain_model_us if v]
    model_us = statistics.median(model_values) if model_values else None
    extra_us = None
    if "shadow" in medians:
        extra_us = (_per_event_us(medians["shadow"]) or 0.0) - (
            _per_event_us(medians["plain"]) or 0.0
        )
    ratio = round(extra_us / model_us, 3) if extra_us is not None and model_us else None
    out["model_us_per_event"] = None if model_us is None else round(model_us, 3)
    out["shadow_extra_us_per_event"] = None if extra_us is None else round(extra_us, 3)
    out["shadow_cost_vs_model"] = ratio
    out["shadow_target"] = SHADOW_TARGET
    out["shadow_verdict"] = "n/a" if ratio is None else "PASS" if ratio <= SHADOW_TARGET else "MISS"
    own = [v for v in shadow_own_us if v]
    out["shadow_own_us_per_event"] = round(statistics.median(own), 3) if own else None
    out["canary_cost"] = (
        round(1 - medians["canary"] / medians["plain"], 4) if "canary" in medians else None
    )
    out["canary_fraction"] = CANARY_FRACTION
    return out
