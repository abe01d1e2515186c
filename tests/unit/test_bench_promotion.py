"""bench/promotion.py: the windows around a promotion, their percentiles and the verdict."""

from __future__ import annotations

import numpy as np
import pytest

from bench.promotion import (
    TARGET_RATIO,
    producer_seconds,
    promote_offset_s,
    summarize,
    window_stats,
    windows,
)

PROMOTE_MS = 1_000_000


def test_windows_are_adjacent_and_centred_on_the_promotion() -> None:
    """ "Around" is centred on the promotion; "before" ends where it starts, same length."""
    bounds = windows(PROMOTE_MS, 60.0)
    assert bounds["around"] == (PROMOTE_MS - 30_000, PROMOTE_MS + 30_000)
    assert bounds["before"] == (PROMOTE_MS - 90_000, PROMOTE_MS - 30_000)


def test_windows_need_a_positive_length() -> None:
    """A zero window is a clear error, not an empty comparison."""
    with pytest.raises(ValueError, match="window_s must be positive"):
        windows(PROMOTE_MS, 0.0)


def test_schedule_promotes_after_warmup_and_the_before_window() -> None:
    """The promotion comes after warm-up plus 1.5 windows; the producer outlasts "around"."""
    assert promote_offset_s(2.0, 60.0) == 92.0
    assert producer_seconds(2.0, 60.0) > promote_offset_s(2.0, 60.0) + 30.0


def test_window_stats_counts_only_events_inside_with_the_end_excluded() -> None:
    """An event exactly at the window's end belongs to the next window."""
    event_ms = np.array([0, 10, 99, 100], dtype=np.int64)
    latency = np.array([1.0, 2.0, 3.0, 500.0])
    row = window_stats(event_ms, latency, (0, 100))
    assert row["count"] == 3
    assert row["max_ms"] == 3.0
    assert row["p50_ms"] == 2.0


def test_window_stats_p99_interpolates_like_numpy() -> None:
    """p99 over 1..100 ms is numpy's linear 99th percentile, 99.01 ms."""
    event_ms = np.arange(100, dtype=np.int64)
    latency = np.arange(1, 101, dtype=np.float64)
    assert window_stats(event_ms, latency, (0, 100))["p99_ms"] == 99.01


def test_window_stats_of_an_empty_window_has_no_percentiles() -> None:
    """No alert in a window: a count of 0 and no made-up percentile."""
    row = window_stats(np.array([5], dtype=np.int64), np.array([1.0]), (10, 20))
    assert row["count"] == 0
    assert "p99_ms" not in row


def _run(slow_around_ms: float) -> dict[str, object]:
    """Alerts every 10 ms for 3 windows of 10 s; those around the promotion take longer."""
    event_ms = list(range(PROMOTE_MS - 20_000, PROMOTE_MS + 5_000, 10))
    around_start = PROMOTE_MS - 5_000
    latency = [slow_around_ms if e >= around_start else 20 for e in event_ms]
    stamp_ms = [e + lat for e, lat in zip(event_ms, latency, strict=True)]
    versions = ["1" if e < PROMOTE_MS + 400 else "2" for e in event_ms]
    return summarize(event_ms, [int(s) for s in stamp_ms], versions, PROMOTE_MS, 10.0, "2")


def test_summarize_passes_a_promotion_within_the_target() -> None:
    """p99 around at 1.25x the one before is within the 1.5x target."""
    result = _run(25)
    assert result["before"]["p99_ms"] == 20.0  # type: ignore[index]
    assert result["around"]["p99_ms"] == 25.0  # type: ignore[index]
    assert result["p99_ratio"] == 1.25
    assert result["target_ratio"] == TARGET_RATIO
    assert result["verdict"] == "PASS"


def test_summarize_misses_a_promotion_that_stalls_the_stream() -> None:
    """p99 around at 5x the one before misses the target."""
    result = _run(100)
    assert result["p99_ratio"] == 5.0
    assert result["verdict"] == "MISS"


def test_summarize_shows_when_the_new_version_took_over() -> None:
    """Alerts per version and the first new / last old alert relative to the promotion."""
    result = _run(20)
    assert result["alerts_by_version"] == {"1": 2040, "2": 460}
    assert result["switch_after_s"] == 0.4
    assert result["last_old_after_s"] == 0.39


def test_summarize_without_alerts_before_has_no_verdict() -> None:
    """No alert in the "before" window: no ratio and n/a, rather than a division by zero."""
    result = summarize([PROMOTE_MS], [PROMOTE_MS + 5], ["2"], PROMOTE_MS, 10.0, "2")
    assert result["p99_ratio"] is None
    assert result["verdict"] == "n/a"
    assert result["last_old_after_s"] is None


def test_summarize_rejects_unmatched_columns() -> None:
    """Columns of different lengths are a clear error."""
    with pytest.raises(ValueError, match="2 event times, 1 stamps"):
        summarize([1, 2], [3], ["1", "1"], PROMOTE_MS, 10.0, "2")
