"""bench/monitor.py: a group's rate from its first consumed event to its last commit."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter, start_http_server

from bench.monitor import consumed_count, crossing_time, group_window
from scripts.kafka_broker import find_free_ports

# A group of two reading 300,000 events: the first member consumes from t=1.05 s on, the
# second joins at t=4.0 s, when most is read; the commit that reaches the end lands in 6.0-6.1.
TARGET = 300_000
CONSUMED = [(0.9, 0), (1.0, 0), (1.1, 2_000)]
COMMITTED = [(1.0, 0), (2.0, 40_000), (4.0, 200_000), (5.9, 290_000), (6.0, 298_000), (6.1, TARGET)]


def test_crossing_time_takes_the_midpoint_of_the_bracketing_polls() -> None:
    """A counter first seen at the threshold is dated halfway from the last poll below it."""
    assert crossing_time([(0.0, 0), (0.2, 0), (0.4, 5), (0.6, 9)], 5) == pytest.approx(0.3)


def test_crossing_time_without_an_earlier_poll_is_the_first_poll() -> None:
    """When the very first poll already reached the threshold, that poll is the bound known."""
    assert crossing_time([(2.5, 7), (2.6, 9)], 1) == 2.5


def test_crossing_time_is_none_when_never_reached() -> None:
    """A counter that never reaches the threshold has no crossing."""
    assert crossing_time([(0.0, 0), (1.0, 4)], 5) is None
    assert crossing_time([], 1) is None


def test_group_window_spans_first_consumed_event_to_last_commit() -> None:
    """The window opens when anything is consumed and closes at the commit reaching the target."""
    window = group_window(CONSUMED, COMMITTED, TARGET)
    assert window is not None
    assert window.start_s == pytest.approx(1.05)
    assert window.end_s == pytest.approx(6.05)
    assert window.events == TARGET
    assert window.events_per_s == pytest.approx(TARGET / 5.0)


def test_group_window_counts_what_was_read_before_the_group_was_complete() -> None:
    """Events read before the second member joined still count: the rate is not 0 or inflated."""
    window = group_window(CONSUMED, COMMITTED, TARGET)
    assert window is not None
    # The old window (first commit seen once both members held partitions, at t=4.0) would
    # have rated 100,000 events over 2.1 s; the group's real run is 300,000 over 5 s.
    assert window.seconds == pytest.approx(5.0)
    assert window.events_per_s == pytest.approx(60_000)


def test_group_window_subtracts_offsets_committed_before_the_run() -> None:
    """A group that resumes from committed offsets is rated on the events of this run only."""
    committed = [(0.0, 1_000), (2.9, 4_000), (3.1, 5_000)]
    window = group_window([(0.0, 0), (1.0, 10)], committed, 5_000, 1_000)
    assert window is not None
    assert window.events == 4_000
    assert window.events_per_s == pytest.approx(4_000 / 2.5)


@pytest.mark.parametrize(
    ("consumed", "committed"),
    [
        ([(0.0, 0), (1.0, 0)], COMMITTED),  # nothing consumed
        (CONSUMED, COMMITTED[:-1]),  # the target never committed (timed out)
        ([(7.0, 0), (7.1, 5)], COMMITTED),  # commit before the first consumption: inconsistent
    ],
)
def test_group_window_is_none_without_a_whole_run(
    consumed: list[tuple[float, int]], committed: list[tuple[float, int]]
) -> None:
    """No window (rate unknown, reported as 0) unless the run both started and finished."""
    assert group_window(consumed, committed, TARGET) is None


@pytest.fixture
def metrics_url() -> Iterator[tuple[str, Counter]]:
    """A real Prometheus endpoint with the service's consumed counter, on a free port."""
    registry = CollectorRegistry()
    counter = Counter(
        "stream_scorer_records_consumed", "Records consumed.", ["topic"], registry=registry
    )
    port = find_free_ports(1)[0]
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        yield f"http://127.0.0.1:{port}", counter
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_consumed_count_sums_every_topic(metrics_url: tuple[str, Counter]) -> None:
    """The consumed count adds up the counter over its labels, ignoring ``_created`` samples."""
    url, counter = metrics_url
    assert consumed_count(url) == 0
    counter.labels(topic="a").inc(1_500)
    counter.labels(topic="b").inc(250)
    assert consumed_count(url) == 1_750


def test_consumed_count_of_an_unreachable_member_is_none() -> None:
    """A member whose endpoint is not up yet (model still loading) reads as None, not 0."""
    port = find_free_ports(1)[0]
    assert consumed_count(f"http://127.0.0.1:{port}") is None
