"""stream-scorer top: rates and latency quantiles between two scrapes of real endpoints."""

from __future__ import annotations

import io

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from stream_scorer import cli
from stream_scorer.metrics import Health, MetricsServer, ScorerMetrics
from stream_scorer.top import quantile_from_buckets, run_top


class Clock:
    """A clock that the wait between scrapes moves."""

    def __init__(self) -> None:
        """Start at 0."""
        self.now = 0.0

    def __call__(self) -> float:
        """The current time."""
        return self.now


def test_one_table_from_two_scrapes() -> None:
    """Between the two scrapes 2,000 events, 10 alerts and 2 dead letters in 2 s: top shows
    1000 events/s, 5 alerts/s, 1 dead letter/s, the lag, p50/p99, the model; a second URL
    where nothing listens shows down."""
    registry = CollectorRegistry()
    metrics = ScorerMetrics(registry)
    metrics.init_labels("in", "fraud", "1")
    metrics.set_model("fraud", "1", "x", "per_field")
    metrics.ready.set(1)
    health = Health()
    server = MetricsServer("127.0.0.1", 0, registry, health)
    clock = Clock()

    def traffic(seconds: float) -> None:
        clock.now += seconds
        metrics.records_consumed.labels(topic="in").inc(2000)
        metrics.records_flagged.labels(model_name="fraud", model_version="1").inc(10)
        metrics.records_dead_lettered.labels(stage="decode", error_type="DecodeError").inc(2)
        metrics.set_lag("in", 0, 120)
        metrics.set_lag("in", 1, 30)
        metrics.end_to_end_latency.observe_many(np.full(100, 0.012))

    out = io.StringIO()
    dead_port = server.port + 1 if server.port < 65535 else server.port - 1
    try:
        code = run_top(
            [server.url, f"http://127.0.0.1:{dead_port}"], 2.0, out, once=True,
            wait=traffic, clock=clock,
        )  # fmt: skip
    finally:
        server.close()

    header, up, down = out.getvalue().splitlines()
    assert code == 0
    assert header.split()[:3] == ["instance", "state", "events/s"]
    fields = up.split()
    # All 100 latencies are 12 ms, in the (10, 15] ms bucket: linear within it, as Prometheus.
    assert fields[1:8] == ["ready", "1000", "5.0", "1.0", "150", "12.5", "14.9"]
    assert fields[-1] == "fraud/1"
    assert "down" in down


@pytest.mark.parametrize(("q", "expected"), [(0.5, 0.015), (0.9, 0.019), (1.0, 0.02)])
def test_quantile_is_linear_within_a_bucket(q: float, expected: float) -> None:
    """As histogram_quantile: 100 observations in (0.01, 0.02], none elsewhere."""
    before = [(0.01, 0.0), (0.02, 0.0), (float("inf"), 0.0)]
    after = [(0.01, 0.0), (0.02, 100.0), (float("inf"), 100.0)]

    assert quantile_from_buckets(before, after, q) == pytest.approx(expected)


def test_no_observations_give_no_quantile() -> None:
    """Without observations in the interval there is no quantile."""
    same = [(0.01, 5.0), (float("inf"), 5.0)]

    assert quantile_from_buckets(same, same, 0.99) is None


def test_cli_refuses_a_non_positive_interval(capsys: pytest.CaptureFixture[str]) -> None:
    """--interval 0 is a one-line configuration error, exit 2."""
    assert cli.main(["top", "http://127.0.0.1:1", "--interval", "0"]) == 2
    assert "--interval" in capsys.readouterr().err
