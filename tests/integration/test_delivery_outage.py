"""Broker outage on the real broker: the broker process stops mid-stream and comes back.

The broker fixture is session-scoped, so this module restarts it in a ``finally`` whatever
happens: later tests find it up, on the same ports and data directory.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from scripts.kafka_broker import KafkaBroker

from .helpers import committed_offsets, end_offsets, read_topic, wait_until
from .scorer_process import (
    THRESHOLD,
    PacedProducer,
    ScorerProcess,
    base_config,
    check_alerts,
    decode_alert,
    encode_events,
    make_events,
    offline_scores,
)

#: Events streamed; the outage falls in the middle of the stream.
EVENTS = 30_000
#: Offered load: the stream lasts ~40 s.
RATE_PER_S = 750.0
#: How long the broker stays down, counted from its process having exited.
OUTAGE_S = 15.0


@pytest.mark.slow
def test_broker_outage_needs_no_restart_and_loses_nothing(
    tmp_path: Path, kafka_broker: KafkaBroker | None, kafka_bootstrap: str, topics: dict[str, str]
) -> None:
    """The broker stops for 15 s mid-stream: /readyz turns 503, then 200 once it is back; the
    same scorer process carries on and every flagged event is alerted with its offline score."""
    if kafka_broker is None:
        pytest.skip("needs the repository's own broker to stop and start (external cluster set)")
    rng = random.Random(41)
    events = make_events(EVENTS, seed=41)
    config = base_config(kafka_bootstrap, topics, model={"threshold": THRESHOLD})
    group = config["kafka"]["group_id"]
    producer = PacedProducer(kafka_bootstrap, topics["input"], encode_events(events), RATE_PER_S)
    scorer = ScorerProcess(tmp_path, config)
    try:
        scorer.wait_assigned()
        wait_until(lambda: scorer.readyz() == 200, 30, "the scorer to be ready")
        time.sleep(rng.uniform(3, 8))  # the experiment: a random moment for the outage
        try:
            kafka_broker.stop()
            down_at = time.monotonic()
            wait_until(lambda: scorer.readyz() == 503, OUTAGE_S, "/readyz to report not ready")
            not_ready_s = time.monotonic() - down_at
            time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))  # the outage itself
        finally:
            up_at = time.monotonic()
            kafka_broker.start()  # idempotent; returns once the broker serves again
        wait_until(lambda: scorer.readyz() == 200, 90, "/readyz to report ready again")
        ready_s = time.monotonic() - up_at
        producer.join()
        ends = end_offsets(kafka_bootstrap, topics["input"])
        wait_until(
            lambda: (
                not scorer.alive()
                or committed_offsets(kafka_bootstrap, group, topics["input"]) == ends
            ),
            120,
            "the scorer to catch up after the outage",
        )
        assert scorer.alive(), f"the scorer stopped during the outage:\n{scorer.tail()}"
        caught_up_s = time.monotonic() - up_at
        scorer.terminate()
        assert scorer.wait(60) == 0, scorer.tail()
    finally:
        scorer.close()
    alerts = [decode_alert(m) for m in read_topic(kafka_bootstrap, topics["alerts"])]
    check_alerts(alerts, offline_scores(events), THRESHOLD)
    print(  # the measured figures, reported in docs/delivery-guarantees.md
        f"\noutage {OUTAGE_S:.0f} s: /readyz 503 after {not_ready_s:.1f} s, 200 again "
        f"{ready_s:.1f} s after the broker restart began, caught up after {caught_up_s:.1f} s"
    )
