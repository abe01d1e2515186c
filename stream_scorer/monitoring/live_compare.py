"""``stream-scorer models compare``: the live comparison of running instances, from their /metrics.

Each ``--url`` is scraped once (``stream_scorer.top``'s fetch and prometheus-client's own
parser; nothing else is read, so any instance whose endpoint is reachable can be compared,
with no access to Kafka or to the repository). Per (champion, challenger) pair it prints the
confusion of decisions, agreement, mean absolute score difference, score correlation and the
two alert rates, as the instance exports them (``stream_scorer_comparison_*``); whether the
challenger is a shadow or the canary; the canary's share of the events it was live for
(``stream_scorer_canary_decided_records_total``) beside its configured fraction, and its
rollbacks; and the shadows dropped for their budget or failures.

With several instances, each is shown, then the pairs over all of them: the confusion counts
are summed, so agreement and alert rates are exact; the mean absolute difference is weighted
by events; a correlation cannot be combined from per-instance values, so the combined row
shows none.
"""

from __future__ import annotations

import json
import math
import urllib.error
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from prometheus_client.parser import text_string_to_metric_families

from stream_scorer.monitoring.compare import OUTCOMES
from stream_scorer.top import fetch

__all__ = ["InstanceComparison", "PairView", "combine", "parse", "render", "run_compare"]

_PREFIX = "stream_scorer_"


@dataclass(slots=True)
class PairView:
    """One champion/challenger pair as an instance exports it."""

    champion: str
    challenger: str
    role: str = "shadow"
    confusion: dict[str, float] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0.0))
    agreement: float | None = None
    mean_abs_diff: float | None = None
    correlation: float | None = None

    @property
    def events(self) -> float:
        """Events both models scored."""
        return sum(self.confusion.values())

    def alert_rates(self) -> tuple[float | None, float | None]:
        """(champion, challenger) share of the compared events flagged."""
        n = self.events
        if not n:
            return None, None
        c = self.confusion
        return (c["both"] + c["champion_only"]) / n, (c["both"] + c["challenger_only"]) / n

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for ``--json``."""
        champion_rate, challenger_rate = self.alert_rates()
        return {
            "champion": self.champion,
            "challenger": self.challenger,
            "role": self.role,
            "events": int(self.events),
            "confusion": {k: int(v) for k, v in self.confusion.items()},
            "agreement": self.agreement,
            "mean_abs_score_diff": self.mean_abs_diff,
            "score_correlation": self.correlation,
            "alert_rate": {"champion": champion_rate, "challenger": challenger_rate},
        }


@dataclass(slots=True)
class InstanceComparison:
    """What one instance's /metrics say about its challengers, or why there is nothing."""

    url: str
    pairs: list[PairView] = field(default_factory=list)
    #: Per canary (``champion``, ``canary``): events decided by each, configured fraction.
    canaries: list[dict[str, Any]] = field(default_factory=list)
    #: Shadows dropped: model, reason, times.
    shadow_drops: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for ``--json``."""
        return {
            "url": self.url,
            "error": self.error or None,
            "pairs": [p.to_dict() for p in self.pairs],
            "canaries": self.canaries,
            "shadow_drops": self.shadow_drops,
        }


def _finite(value: float) -> float | None:
    return None if math.isnan(value) or math.isinf(value) else value


def parse(url: str, text: str) -> InstanceComparison:
    """The comparison figures in one instance's text exposition."""
    out = InstanceComparison(url)
    pairs: dict[tuple[str, str], PairView] = {}
    canaries: dict[tuple[str, str], dict[str, Any]] = {}
    rollbacks: dict[str, dict[str, float]] = {}

    def pair(labels: dict[str, str]) -> PairView:
        key = (labels.get("champion", "?"), labels.get("challenger", "?"))
        return pairs.setdefault(key, PairView(*key))

    def canary(labels: dict[str, str]) -> dict[str, Any]:
        key = (labels.get("champion", "?"), labels.get("canary", "?"))
        return canaries.setdefault(
            key, {"champion": key[0], "canary": key[1], "decided": {"champion": 0, "canary": 0},
                  "fraction": None, "share": None, "rollbacks": {}},
        )  # fmt: skip

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name.removeprefix(_PREFIX), sample.labels, sample.value
            if name == "comparison_decisions_total" and labels.get("outcome") in OUTCOMES:
                pair(labels).confusion[labels["outcome"]] = value
            elif name == "comparison_agreement_ratio":
                pair(labels).agreement = _finite(value)
            elif name == "comparison_score_abs_diff_mean":
                pair(labels).mean_abs_diff = _finite(value)
            elif name == "comparison_score_correlation":
                pair(labels).correlation = _finite(value)
            elif name == "canary_decided_records_total":
                canary(labels)["decided"][labels.get("decided_by", "?")] = int(value)
            elif name == "canary_fraction":
                canary(labels)["fraction"] = value
            elif name == "canary_rollbacks_total" and value > 0:
                model = f"{labels.get('model_name')}/{labels.get('model_version')}"
                rollbacks.setdefault(model, {})[labels.get("rule", "?")] = value
            elif name == "shadow_dropped_total" and value > 0:
                out.shadow_drops.append(
                    {"model": f"{labels.get('model_name')}/{labels.get('model_version')}",
                     "reason": labels.get("reason", "?"), "times": int(value)}
                )  # fmt: skip
    for (champion, canary_label), view in canaries.items():
        decided = view["decided"]
        total = decided.get("champion", 0) + decided.get("canary", 0)
        view["share"] = decided.get("canary", 0) / total if total else None
        view["rollbacks"] = {k: int(v) for k, v in rollbacks.get(canary_label, {}).items()}
        if (champion, canary_label) in pairs:
            pairs[(champion, canary_label)].role = "canary"
    out.pairs = sorted(pairs.values(), key=lambda p: (p.champion, p.challenger))
    out.canaries = list(canaries.values())
    return out


def combine(instances: Iterable[InstanceComparison]) -> list[PairView]:
    """Every pair over all instances: summed confusion, event-weighted abs diff."""
    merged: dict[tuple[str, str], PairView] = {}
    weighted: dict[tuple[str, str], float] = {}
    for instance in instances:
        for p in instance.pairs:
            key = (p.champion, p.challenger)
            view = merged.setdefault(key, PairView(*key, role=p.role))
            for outcome, count in p.confusion.items():
                view.confusion[outcome] += count
            if p.mean_abs_diff is not None:
                weighted[key] = weighted.get(key, 0.0) + p.mean_abs_diff * p.events
    for key, view in merged.items():
        n = view.events
        c = view.confusion
        view.agreement = (c["both"] + c["neither"]) / n if n else None
        view.mean_abs_diff = weighted[key] / n if n and key in weighted else None
    return sorted(merged.values(), key=lambda p: (p.champion, p.challenger))


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _num(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _pair_lines(where: str, pairs: Sequence[PairView]) -> list[str]:
    lines = []
    for p in pairs:
        c = p.confusion
        champion_rate, challenger_rate = p.alert_rates()
        lines.append(
            f"{where[:24]:<24} {p.champion:<12} {p.challenger:<12} {p.role:<7} "
            f"{p.events:>9.0f} {_pct(p.agreement):>9} {c['both']:>7.0f} "
            f"{c['champion_only']:>7.0f} {c['challenger_only']:>7.0f} {c['neither']:>9.0f} "
            f"{_num(p.mean_abs_diff):>8} {_num(p.correlation):>7} "
            f"{_pct(champion_rate):>8} {_pct(challenger_rate):>8}"
        )
    return lines


def render(instances: Sequence[InstanceComparison]) -> str:
    """The table for people: pairs per instance (and over all of them), canaries, drops."""
    header = (
        f"{'instance':<24} {'champion':<12} {'challenger':<12} {'role':<7} {'events':>9} "
        f"{'agree':>9} {'both':>7} {'champ':>7} {'chall':>7} {'neither':>9} {'absdiff':>8} "
        f"{'corr':>7} {'alert c':>8} {'alert ch':>8}"
    )
    lines = [header]
    for instance in instances:
        where = instance.url.removeprefix("http://").removeprefix("https://")
        if instance.error:
            lines.append(f"{where[:24]:<24} down: {instance.error}")
        elif not instance.pairs:
            lines.append(f"{where[:24]:<24} no challenger (no shadow, no canary)")
        lines.extend(_pair_lines(where, instance.pairs))
    if sum(1 for i in instances if not i.error) > 1:
        lines.extend(_pair_lines("all instances", combine(instances)))
    for instance in instances:
        where = instance.url.removeprefix("http://").removeprefix("https://")
        for view in instance.canaries:
            decided = view["decided"]
            total = decided.get("champion", 0) + decided.get("canary", 0)
            rolled = ", ".join(f"{rule} x{n}" for rule, n in view["rollbacks"].items())
            lines.append(
                f"canary {view['canary']} (champion {view['champion']}) on {where}: decided "
                f"{_pct(view['share'])} of {total} events, configured "
                f"{_pct(view['fraction'])}; rolled back: {rolled or 'no'}"
            )
        for drop in instance.shadow_drops:
            lines.append(
                f"shadow {drop['model']} on {where}: dropped ({drop['reason']}) "
                f"{drop['times']} time(s)"
            )
    return "\n".join(lines) + "\n"


def _base_url(url: str) -> str:
    """``http://host:port`` from ``http://host:port`` or ``http://host:port/metrics``."""
    trimmed = url.rstrip("/")
    return trimmed.removesuffix("/metrics")


def run_compare(urls: Sequence[str], as_json: bool, out: IO[str]) -> int:
    """Scrape each instance once and print the comparison; 1 when none could be scraped."""
    instances = []
    for url in urls:
        try:
            text = fetch(_base_url(url))
        except (urllib.error.URLError, OSError, ValueError) as exc:
            instances.append(InstanceComparison(url, error=str(getattr(exc, "reason", exc))))
            continue
        instances.append(parse(url, text))
    if as_json:
        body: dict[str, Any] = {"instances": [i.to_dict() for i in instances]}
        if sum(1 for i in instances if not i.error) > 1:
            body["all_instances"] = [p.to_dict() for p in combine(instances)]
        out.write(json.dumps(body, indent=2, sort_keys=True) + "\n")
    else:
        out.write(render(instances))
    return 1 if all(i.error for i in instances) else 0
