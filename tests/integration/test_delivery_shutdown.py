"""Graceful shutdown on the real broker: SIGTERM to a real scorer process under load."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from .helpers import committed_offsets, end_offsets, produce_values, read_topic, wait_until
from .scorer_process import (
    THRESHOLD,
    ScorerProcess,
    base_config,
    check_alerts,
    decode_alert,
    encode_events,
    make_events,
    offline_scores,
)

#: Backlog the scorer is working through when SIGTERM arrives.
EVENTS = 40_000
#: Measured SIGTERM → exit on a 2-core machine: well under 2 s; the bound leaves CI headroom.
SHUTDOWN_BOUND_S = 10.0


@pytest.mark.parametrize("mode", ["at-least-once", "exactly-once"])
def test_sigterm_under_load_commits_everything_and_leaves_the_group(
    tmp_path: Path, kafka_bootstrap: str, admin: AdminClient, topics: dict[str, str], mode: str
) -> None:
    """SIGTERM mid-backlog: the batch completes, results and offsets are committed, the member
    leaves the group, exit code 0 within the bound; a successor publishes no duplicate."""
    events = make_events(EVENTS, seed=21)
    produce_values(kafka_bootstrap, topics["input"], encode_events(events))
    config = base_config(
        kafka_bootstrap,
        topics,
        model={"threshold": THRESHOLD},
        delivery={"mode": mode},
        batch={"max_size": 500},
    )
    group = config["kafka"]["group_id"]
    scorer = ScorerProcess(tmp_path, config)
    try:
        wait_until(lambda: len(scorer.logged("batch_committed")) >= 5, 60, "a few batches")
        sent = scorer.terminate()
        code = scorer.wait(60)
        shutdown_s = time.monotonic() - sent
    finally:
        scorer.close()
    assert code == 0, scorer.tail()
    assert shutdown_s < SHUTDOWN_BOUND_S
    print(f"\n{mode}: SIGTERM to exit {shutdown_s:.2f} s")

    flushed, committed = scorer.logged("batch_flushed"), scorer.logged("batch_committed")
    assert len(flushed) == len(committed), "every batch flushed was also committed"
    assert scorer.logged("stopped")[0]["exit_code"] == 0
    offsets = committed_offsets(kafka_bootstrap, group, topics["input"])
    assert sum(offsets.values()) < EVENTS, "stopped mid-backlog"
    for partition, offset in offsets.items():
        last = [r["ranges"][str(partition)][1] for r in committed if str(partition) in r["ranges"]]
        assert offset == (last[-1] + 1 if last else -1001), "committed up to the last batch"
    description = admin.describe_consumer_groups([group])[group].result(timeout=30)
    assert description.members == [], "the member left the group"

    successor = ScorerProcess(tmp_path, config)
    try:
        ends = end_offsets(kafka_bootstrap, topics["input"])
        wait_until(
            lambda: committed_offsets(kafka_bootstrap, group, topics["input"]) == ends,
            120,
            "the successor to finish the backlog",
        )
        successor.terminate()
        assert successor.wait(60) == 0, successor.tail()
    finally:
        successor.close()
    isolation = "read_committed" if mode == "exactly-once" else "read_uncommitted"
    alerts = [
        decode_alert(m)
        for m in read_topic(kafka_bootstrap, topics["alerts"], isolation_level=isolation)
    ]
    duplicates = {i: n for i, n in Counter(a["event_id"] for a in alerts).items() if n > 1}
    assert not duplicates, "a clean stop republishes nothing"
    check_alerts(alerts, offline_scores(events), THRESHOLD)


def test_sigterm_while_loading_the_model_is_a_clean_stop(
    tmp_path: Path, kafka_bootstrap: str, topics: dict[str, str]
) -> None:
    """SIGTERM between start and the first batch (the model still loading, say) ends the
    process with exit code 0, not killed by the signal."""
    scorer = ScorerProcess(tmp_path, base_config(kafka_bootstrap, topics))
    try:
        wait_until(lambda: bool(scorer.logged("starting")), 60, "the scorer to start")
        scorer.terminate()
        code = scorer.wait(60)
    finally:
        scorer.close()
    assert code == 0, scorer.tail()
    assert scorer.logged("stopped")[0]["exit_code"] == 0
