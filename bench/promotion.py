"""Arithmetic of the promotion phase (issue 10): latency in the minute around a live promotion.

The phase (``Harness.promotion`` in :mod:`bench.run`) runs stream-scorer with
``lifecycle.watch = "file"`` serving ``fraud/1`` under a paced producer, promotes ``fraud/2``
with ``stream-scorer models promote`` mid-run and reads every alert back. This module holds
what the numbers are made of, so it can be tested without a broker:

* :func:`windows`: the two windows, by the source event's time. "Around" is the window of
  ``window_s`` centred on the promotion; "before" is the window of the same length that ends
  where "around" starts (they do not overlap, so a slow swap cannot leak into the baseline).
* :func:`window_stats`: count and percentiles of the alerts' end-to-end latency in a window.
* :func:`summarize`: both windows, the p99 ratio against :data:`TARGET_RATIO` and what shows
  that the promotion took effect (alerts per model version, when the first alert of the new
  version and the last of the old one were produced).

Latency is an alert's broker timestamp (``LogAppendTime``) minus its source ``event_time``,
as in the latency phase; an alert belongs to the window its event was produced in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "TARGET_RATIO",
    "producer_seconds",
    "promote_offset_s",
    "summarize",
    "window_stats",
    "windows",
]

#: Issue 10: p99 in the minute around a promotion within 1.5x the minute before.
TARGET_RATIO = 1.5
#: Seconds the producer keeps going after the "around" window closes, so its last events are
#: not the ones a stopping producer sends late.
TAIL_S = 1.0


def promote_offset_s(warmup_s: float, window_s: float) -> float:
    """Seconds after the producer starts at which to promote: warm-up, then the "before"
    window and the first half of the "around" one."""
    return warmup_s + 1.5 * window_s


def producer_seconds(warmup_s: float, window_s: float) -> float:
    """How long the paced producer runs: warm-up, both windows and a short tail."""
    return warmup_s + 2.0 * window_s + TAIL_S


def windows(promote_ms: int, window_s: float) -> dict[str, tuple[int, int]]:
    """``{"before": (start, end), "around": (start, end)}`` in epoch ms, ends exclusive.

    Args:
        promote_ms: When the promotion was made (epoch ms).
        window_s: Length of each window in seconds (60 for the issue's minute).

    Raises:
        ValueError: ``window_s`` is not positive.
    """
    if window_s <= 0:
        msg = f"window_s must be positive, got {window_s}"
        raise ValueError(msg)
    half = round(window_s * 500)
    full = 2 * half
    return {
        "before": (promote_ms - half - full, promote_ms - half),
        "around": (promote_ms - half, promote_ms + half),
    }


def window_stats(
    event_ms: np.ndarray[Any, np.dtype[np.int64]],
    latency_ms: np.ndarray[Any, np.dtype[np.float64]],
    bounds: tuple[int, int],
) -> dict[str, Any]:
    """Count, p50, p99 and max latency of the alerts whose event falls in ``bounds``.

    Percentiles are numpy's linear interpolation, as in the latency phase; an empty window has
    a count of 0 and no percentiles.
    """
    start, end = bounds
    inside = latency_ms[(event_ms >= start) & (event_ms < end)]
    row: dict[str, Any] = {"start_ms": start, "end_ms": end, "count": int(inside.size)}
    if inside.size:
        p50, p99 = np.percentile(inside, [50, 99])
        row.update(
            p50_ms=round(float(p50), 2),
            p99_ms=round(float(p99), 2),
            max_ms=round(float(inside.max()), 2),
        )
    return row


def summarize(
    event_ms: Sequence[int],
    stamp_ms: Sequence[int],
    versions: Sequence[str],
    promote_ms: int,
    window_s: float,
    new_version: str,
) -> dict[str, Any]:
    """What one promotion run comes to.

    Args:
        event_ms: Each alert's source ``event_time`` (epoch ms).
        stamp_ms: Each alert's broker timestamp (epoch ms), same order.
        versions: Each alert's ``model_version``, same order.
        promote_ms: When the promotion was made.
        window_s: Length of each window.
        new_version: The version promoted.

    Returns:
        The two windows' statistics, ``p99_ratio`` (around ÷ before, None when a window has no
        alert), ``target_ratio``, ``verdict`` (PASS, MISS or n/a), alerts per version, and
        the produce times of the first new-version alert and of the last old-version one,
        relative to the promotion (``switch_after_s``, ``last_old_after_s``).

    Raises:
        ValueError: The three sequences differ in length.
    """
    if not len(event_ms) == len(stamp_ms) == len(versions):
        msg = f"{len(event_ms)} event times, {len(stamp_ms)} stamps, {len(versions)} versions"
        raise ValueError(msg)
    events = np.asarray(event_ms, dtype=np.int64)
    latency = np.asarray(stamp_ms, dtype=np.int64).astype(np.float64) - events
    bounds = windows(promote_ms, window_s)
    before = window_stats(events, latency, bounds["before"])
    around = window_stats(events, latency, bounds["around"])
    ratio = None
    if before.get("p99_ms") and "p99_ms" in around:
        ratio = round(around["p99_ms"] / before["p99_ms"], 3)
    per_version: dict[str, int] = {}
    for version in versions:
        per_version[version] = per_version.get(version, 0) + 1
    is_new = np.asarray([v == new_version for v in versions], dtype=bool)
    first_new = int(events[is_new].min()) if is_new.any() else None
    last_old = int(events[~is_new].max()) if (~is_new).any() else None
    return {
        "window_s": window_s,
        "promote_ms": promote_ms,
        "before": before,
        "around": around,
        "p99_ratio": ratio,
        "target_ratio": TARGET_RATIO,
        "verdict": "n/a" if ratio is None else "PASS" if ratio <= TARGET_RATIO else "MISS",
        "alerts_by_version": dict(sorted(per_version.items())),
        "switch_after_s": None if first_new is None else round((first_new - promote_ms) / 1e3, 3),
        "last_old_after_s": None if last_old is None else round((last_old - promote_ms) / 1e3, 3),
    }
