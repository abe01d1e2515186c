"""Backpressure on the real broker: a producer queue of ten messages throttles the scorer."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from .helpers import committed_offsets, end_offsets, produce_values, read_topic, wait_until
from .scorer_process import ScorerProcess, base_config, decode_alert, encode_events, make_events

#: Backlog waiting when the scorer starts: every event becomes an alert (threshold 0).
EVENTS = 20_000
#: librdkafka's local producer queue: ten messages, so publishing is the bottleneck.
QUEUE_MESSAGES = 10
#: Peak RSS allowed (MiB). Measured 109 MiB on a 2-core machine: Python, numpy, onnxruntime
#: and the model, plus prefetch bounded by queued.max.messages.kbytes (16 MiB) and one batch.
RSS_BOUND_MIB = 200


@pytest.mark.slow
def test_tiny_producer_queue_pauses_consumption_and_bounds_memory(
    tmp_path: Path, kafka_bootstrap: str, topics: dict[str, str]
) -> None:
    """With a ten-message producer queue and every event flagged, the scorer consumes only as
    fast as alerts are acknowledged, its RSS stays under the bound, and no alert is dropped."""
    events = make_events(EVENTS, seed=71)
    produce_values(kafka_bootstrap, topics["input"], encode_events(events))
    config = base_config(
        kafka_bootstrap,
        topics,
        model={"threshold": 0.0},
        kafka={"producer": {"queue.buffering.max.messages": QUEUE_MESSAGES}},
    )
    group = config["kafka"]["group_id"]
    ends = end_offsets(kafka_bootstrap, topics["input"])
    scorer = ScorerProcess(tmp_path, config)
    peak_rss = 0
    samples: list[tuple[float, int]] = []
    try:
        scorer.wait_assigned()
        started = time.monotonic()

        def done() -> bool:
            nonlocal peak_rss
            peak_rss = max(peak_rss, scorer.rss_bytes())
            committed = committed_offsets(kafka_bootstrap, group, topics["input"])
            samples.append((time.monotonic() - started, sum(max(o, 0) for o in committed.values())))
            assert scorer.alive(), scorer.tail()
            return committed == ends

        wait_until(done, 240, "the backlog to be scored through the tiny queue")
        elapsed_s = time.monotonic() - started
        scorer.terminate()
        assert scorer.wait(60) == 0, scorer.tail()
    finally:
        scorer.close()
    alerts = Counter(
        decode_alert(m)["event_id"] for m in read_topic(kafka_bootstrap, topics["alerts"])
    )
    assert set(alerts) == {e["transaction_id"] for e in events}, "no alert dropped"
    assert sum(alerts.values()) == EVENTS, "and none doubled"
    assert peak_rss < RSS_BOUND_MIB * 2**20
    halfway = next(t for t, n in samples if n >= EVENTS // 2)
    assert halfway > 1.0, "the backlog is consumed at the queue's pace, not all at once"
    print(  # the measured figures, reported in docs/delivery-guarantees.md
        f"\nbackpressure: {EVENTS} alerts through a {QUEUE_MESSAGES}-message queue in "
        f"{elapsed_s:.1f} s ({EVENTS / elapsed_s:.0f}/s), half after {halfway:.1f} s, "
        f"peak RSS {peak_rss / 2**20:.0f} MiB"
    )
