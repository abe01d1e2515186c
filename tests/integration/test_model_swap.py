"""A model set replaced between batches while the scorer runs at full speed loses nothing.

Real broker, real runner in this process, in both delivery modes: a backlog of events is scored
at full speed (batches of 1,000), and once a few batches are through, the live set is replaced
by the same model with a lower threshold (so every alert names, by its threshold, the set that
scored it). Every event ends as exactly one of alert, unflagged or dead letter; every offset is
committed; in exactly-once mode no alert is published twice; and in each partition the switch
happens at one offset: alerts before it carry the old threshold, alerts after it the new one,
and every event the scoring set flags has an alert.
"""

from __future__ import annotations

import io
from collections import defaultdict
from typing import Any

import fastavro
import pytest
from prometheus_client import CollectorRegistry

from stream_scorer.app import load_schema
from stream_scorer.model_set import ModelSet, load_model

from .helpers import (
    REPO,
    RunningScorer,
    produce_values,
    read_topic,
    scorer_settings,
    stream_topics,
    wait_until,
)
from .scorer_process import SCORE_TOLERANCE, encode_events, make_events, offline_scores

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ALERT_SCHEMA = fastavro.parse_schema(load_schema(REPO / "schemas/alert.avsc", "alert"))
READER = load_schema(REPO / "schemas/transaction.avsc", "reader")
READER_PARSED = fastavro.parse_schema(READER)
EVENTS = 20_000
#: The swapped-in set flags from here: low enough that many events change side.
NEW_THRESHOLD = 0.05


@pytest.mark.parametrize("mode", ["at-least-once", "exactly-once"])
def test_swap_under_load_loses_nothing(kafka_bootstrap: str, make_topic: Any, mode: str) -> None:
    """Replace the live model set mid-stream: nothing lost, nothing twice, one cut per partition."""
    topics = stream_topics(make_topic)
    events = make_events(EVENTS, seed=91)
    produce_values(kafka_bootstrap, topics["input"], encode_events(events))
    settings = scorer_settings(kafka_bootstrap, topics, None, delivery={"mode": mode})
    old_threshold = load_model(REPO / "models/fraud/1", READER).threshold
    new_set = ModelSet(load_model(REPO / "models/fraud/1", READER, threshold=NEW_THRESHOLD))
    registry = CollectorRegistry()
    scorer = RunningScorer(settings, registry=registry)
    try:
        wait_until(
            lambda: scorer.runner.totals.consumed >= 3_000 or not scorer.thread.is_alive(),
            60,
            "the first batches to be scored",
        )
        scorer.runner.models.replace(new_set)
        scorer.wait_caught_up(topics["input"])
    finally:
        code = scorer.stop()
    assert code == 0
    totals = scorer.runner.totals
    assert totals.consumed == EVENTS
    isolation = "read_committed" if mode == "exactly-once" else "read_uncommitted"
    messages = read_topic(kafka_bootstrap, topics["alerts"], isolation)
    alerts = [_decode(m.value()) for m in messages]
    dead = read_topic(kafka_bootstrap, topics["dead_letter"], isolation)
    assert dead == []
    ids = [a["event_id"] for a in alerts]
    if mode == "exactly-once":
        assert len(ids) == len(set(ids)), "an alert was published twice"
    labels = {"model_name": "fraud", "model_version": "1"}
    assert registry.get_sample_value("stream_scorer_records_scored_total", labels) == EVENTS
    assert registry.get_sample_value("stream_scorer_records_flagged_total", labels) == len(ids)
    assert totals.flagged == len(ids)
    assert {a["threshold"] for a in alerts} == {old_threshold, NEW_THRESHOLD}

    scores = offline_scores(events)
    where = {
        _event_id(m.value()): (m.partition(), m.offset())
        for m in read_topic(kafka_bootstrap, topics["input"])
    }
    assert len(where) == EVENTS
    by_partition: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for alert in alerts:
        assert abs(alert["score"] - scores[alert["event_id"]]) <= SCORE_TOLERANCE
        assert alert["score"] >= alert["threshold"] - SCORE_TOLERANCE
        by_partition[alert["source_partition"]].append(alert)
    cut: dict[int, int] = {}
    for partition in range(4):
        mine = sorted(by_partition[partition], key=lambda a: a["source_offset"])
        thresholds = [a["threshold"] for a in mine]
        first_new = thresholds.index(NEW_THRESHOLD) if NEW_THRESHOLD in thresholds else len(mine)
        assert set(thresholds[:first_new]) <= {old_threshold}
        assert set(thresholds[first_new:]) <= {NEW_THRESHOLD}, f"partition {partition} went back"
        cut[partition] = mine[first_new]["source_offset"] if first_new < len(mine) else 1 << 62
    # A batch is scored wholly by one set, so in each partition the new set took over at one
    # offset: an event both sets flag always has an alert; one only the new set flags has an
    # alert exactly when it comes at or after its partition's first new-threshold alert.
    alerted = set(ids)
    for event_id, score in scores.items():
        partition, offset = where[event_id]
        if score >= old_threshold + SCORE_TOLERANCE:
            assert event_id in alerted, f"{event_id} ({score}) lost"
        elif NEW_THRESHOLD + SCORE_TOLERANCE <= score < old_threshold - SCORE_TOLERANCE:
            assert (event_id in alerted) == (offset >= cut[partition]), (event_id, offset, cut)
        elif score < NEW_THRESHOLD - SCORE_TOLERANCE:
            assert event_id not in alerted
    assert scorer.runner.models.swaps == 1
    assert registry.get_sample_value("stream_scorer_model_swaps_total") == 1


def _event_id(value: bytes | None) -> str:
    assert value is not None
    event: dict[str, Any] = fastavro.schemaless_reader(io.BytesIO(value), READER_PARSED, None)  # type: ignore[assignment]
    return str(event["transaction_id"])


def _decode(value: bytes | None) -> dict[str, Any]:
    assert value is not None
    return fastavro.schemaless_reader(io.BytesIO(value), ALERT_SCHEMA, None)  # type: ignore[return-value]
