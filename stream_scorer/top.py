"""``stream-scorer top``: a live terminal view of running instances, read from their ``/metrics``.

One line per instance, refreshed every ``--interval`` seconds: events/s consumed and alerts/s
(rates between two scrapes), total lag, end-to-end p50/p99 (from the latency histogram's
buckets over the interval), dead letters/s, batches in flight, readiness and the live model
version. ``--once`` prints one table from two scrapes and exits (scripts, tests). An instance
that cannot be scraped shows ``down`` with the reason, and the others keep updating.

It parses the text exposition with prometheus-client's own parser, and reads nothing else:
any instance whose endpoint is reachable can be watched, with no access to Kafka.
"""

from __future__ import annotations

import math
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import IO

from prometheus_client.parser import text_string_to_metric_families

__all__ = [
    "Scrape",
    "Snapshot",
    "fetch",
    "quantile_from_buckets",
    "render",
    "run_top",
    "scrape",
]

#: Longest wait for one instance's /metrics.
SCRAPE_TIMEOUT_S = 3.0
LATENCY = "stream_scorer_end_to_end_latency_seconds"


@dataclass(slots=True)
class Snapshot:
    """The figures ``top`` shows, from one scrape of one instance."""

    consumed: float = 0.0
    flagged: float = 0.0
    dead_lettered: float = 0.0
    lag: float = 0.0
    in_flight: float = 0.0
    ready: bool = False
    models: list[str] = field(default_factory=list)
    #: Cumulative latency histogram: (upper bound, count), ascending, +Inf last.
    latency: list[tuple[float, float]] = field(default_factory=list)


@dataclass(slots=True)
class Scrape:
    """One scrape: a snapshot, or why there is none."""

    url: str
    at: float
    snapshot: Snapshot | None
    error: str = ""


def parse(text: str) -> Snapshot:
    """A snapshot from the Prometheus text exposition of one instance."""
    snap = Snapshot()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if name == "stream_scorer_records_consumed_total":
                snap.consumed += value
            elif name == "stream_scorer_records_flagged_total":
                snap.flagged += value
            elif name == "stream_scorer_records_dead_lettered_total":
                snap.dead_lettered += value
            elif name == "stream_scorer_consumer_lag":
                snap.lag += value
            elif name == "stream_scorer_batches_in_flight":
                snap.in_flight = value
            elif name == "stream_scorer_ready":
                snap.ready = value >= 1
            elif name == "stream_scorer_model_info" and value >= 1:
                snap.models.append(f"{labels.get('model_name')}/{labels.get('model_version')}")
            elif name == f"{LATENCY}_bucket":
                snap.latency.append((float(labels["le"]), value))
    snap.latency.sort()
    return snap


def fetch(url: str) -> str:
    """The text exposition of one instance's ``/metrics`` (``url`` is its base URL).

    Raises:
        urllib.error.URLError, OSError, ValueError: Unreachable, refused or not a URL.
    """
    target = url.rstrip("/") + "/metrics"
    with urllib.request.urlopen(target, timeout=SCRAPE_TIMEOUT_S) as response:  # noqa: S310 - an operator's own endpoint
        return str(response.read().decode("utf-8"))


def scrape(url: str, clock: Callable[[], float] = time.monotonic) -> Scrape:
    """Scrape one instance's ``/metrics`` (``url`` is its base URL)."""
    try:
        text = fetch(url)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return Scrape(url, clock(), None, str(reason))
    return Scrape(url, clock(), parse(text))


def quantile_from_buckets(
    before: Sequence[tuple[float, float]], after: Sequence[tuple[float, float]], q: float
) -> float | None:
    """The ``q`` quantile of the observations between two cumulative histograms (linear
    within a bucket, as Prometheus's ``histogram_quantile``); None without observations."""
    counts = [(bound, a - b) for (bound, a), (_, b) in zip(after, before, strict=False)]
    if not counts or counts[-1][1] <= 0:
        return None
    rank = q * counts[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in counts:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            span = count - lower_count
            fraction = 0.0 if span <= 0 else (rank - lower_count) / span
            return lower_bound + (bound - lower_bound) * fraction
        lower_bound, lower_count = bound, count
    return lower_bound


def _rate(after: float, before: float, seconds: float) -> float:
    return max(after - before, 0.0) / seconds if seconds > 0 else 0.0


def render(pairs: Iterable[tuple[Scrape, Scrape]]) -> str:
    """The table for pairs of (earlier, later) scrapes, one line per instance."""
    header = (
        f"{'instance':<28} {'state':<9} {'events/s':>9} {'alerts/s':>9} {'dlq/s':>7} "
        f"{'lag':>9} {'p50 ms':>7} {'p99 ms':>7} {'inflight':>8}  model"
    )
    lines = [header]
    for first, last in pairs:
        name = last.url.removeprefix("http://").removeprefix("https://")[:28]
        if last.snapshot is None or first.snapshot is None:
            lines.append(f"{name:<28} {'down':<9} {last.error or first.error}")
            continue
        a, b, seconds = first.snapshot, last.snapshot, last.at - first.at
        p50 = quantile_from_buckets(a.latency, b.latency, 0.5)
        p99 = quantile_from_buckets(a.latency, b.latency, 0.99)
        lines.append(
            f"{name:<28} {'ready' if b.ready else 'not ready':<9} "
            f"{_rate(b.consumed, a.consumed, seconds):>9.0f} "
            f"{_rate(b.flagged, a.flagged, seconds):>9.1f} "
            f"{_rate(b.dead_lettered, a.dead_lettered, seconds):>7.1f} "
            f"{b.lag:>9.0f} "
            f"{'-' if p50 is None else f'{p50 * 1000:.1f}':>7} "
            f"{'-' if p99 is None else f'{p99 * 1000:.1f}':>7} "
            f"{b.in_flight:>8.0f}  {', '.join(b.models) or '-'}"
        )
    return "\n".join(lines) + "\n"


def run_top(
    urls: Sequence[str],
    interval_s: float,
    out: IO[str],
    once: bool = False,
    wait: Callable[[float], object] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Show the table until interrupted (or once); the exit code (1 if every instance is down
    in ``once`` mode)."""
    previous = [scrape(url, clock) for url in urls]
    while True:
        wait(interval_s)  # the interval between two scrapes is what the rates are over
        current = [scrape(url, clock) for url in urls]
        table = render(zip(previous, current, strict=True))
        if once:
            out.write(table)
            return 1 if all(s.snapshot is None for s in current) else 0
        out.write("\x1b[2J\x1b[H" + table)  # clear the screen, cursor home
        out.flush()
        previous = current
