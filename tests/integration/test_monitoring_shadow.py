"""A shadow model changes nothing the champion publishes, on the real broker.

The same backlog of events is scored twice from the same input topic, by two scorers in
their own groups, each into its own alert topic: once with the champion alone, once with a
shadow (fraud/1's graph as version 2 with a much lower threshold, so it disagrees often).
Their alert topics hold the same messages, byte for byte (key, value, headers, per partition,
in order), and the second scorer's comparison metrics show that the shadow ran and disagreed.
The second scorer also has ``monitoring.shadow_topic`` on: that topic holds exactly what
score-file's scoring (``offline.score_events``) flags with the shadow model on the same events,
in the alert schema, marked shadow; in exactly-once mode too, read with ``read_committed``.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from stream_scorer.app import build_runner, load_schema
from stream_scorer.encode import EventFields
from stream_scorer.model_set import load_model
from stream_scorer.offline import score_events
from stream_scorer.runner import Runner

from .helpers import (
    REPO,
    committed_offsets,
    end_offsets,
    produce_values,
    read_topic,
    scorer_settings,
    stream_topics,
    wait_until,
)
from .scorer_process import SCORE_TOLERANCE, decode_alert, encode_events, make_events

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EVENTS = 6000
READER = load_schema(REPO / "schemas/transaction.avsc", "reader")
SHADOW_THRESHOLD = 0.2
#: Both scorers stamp alerts with this time: scored_time is the only field that would differ.
SCORED_AT_MS = 1_767_225_600_000


def _shadow_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "fraud" / "2"
    folder.mkdir(parents=True)
    shutil.copy(REPO / "models/fraud/1/model.onnx", folder / "model.onnx")
    card = json.loads((REPO / "models/fraud/1/model.json").read_text(encoding="utf-8"))
    card.update(version="2", threshold=SHADOW_THRESHOLD)
    (folder / "model.json").write_text(json.dumps(card), encoding="utf-8")
    return folder


def _score(bootstrap: str, topics: dict[str, str], registry: CollectorRegistry, **sections: Any
           ) -> Runner:  # fmt: skip
    """Run a scorer over the whole input topic and stop it once it has committed the end."""
    settings = scorer_settings(bootstrap, topics, None, **sections)
    runner = build_runner(settings, registry=registry)
    # The alert's scored_time comes from the pipeline's clock: fix it so two runs compare.
    runner.pipeline._clock_ms = lambda: SCORED_AT_MS
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    ends = end_offsets(bootstrap, topics["input"])
    group = settings.kafka.group_id
    try:
        wait_until(
            lambda: (
                not thread.is_alive()
                or committed_offsets(bootstrap, group, topics["input"]) == ends
            ),
            120,
            f"group {group} to commit {ends}",
        )
        assert thread.is_alive(), "the scorer stopped early"
    finally:
        runner.stop()
        thread.join(60)
    return runner


def _by_partition(bootstrap: str, topic: str) -> dict[int, list[tuple[Any, ...]]]:
    out: dict[int, list[tuple[Any, ...]]] = defaultdict(list)
    for m in read_topic(bootstrap, topic):
        out[m.partition()].append((m.key(), m.value(), tuple(m.headers() or ())))
    return dict(out)


def _check_shadow_topic(
    bootstrap: str,
    topic: str,
    events: list[dict[str, Any]],
    shadow: Path,
    isolation: str = "read_uncommitted",
) -> int:
    """The shadow topic holds one alert, marked shadow, per event score-file flags with the
    shadow model (an event within float32 rounding of the threshold may fall either side: the
    stream's batches differ from score-file's); returns how many it holds."""
    model = load_model(shadow, READER, 1)
    fields = EventFields("transaction_id", "event_time")
    offline = {r["event_id"]: r["score"] for r in score_events(events, model, 1000, fields)}
    messages = read_topic(bootstrap, topic, isolation)
    alerts = [decode_alert(m) for m in messages]
    for message, alert in zip(messages, alerts, strict=True):
        headers = dict(message.headers() or ())
        assert headers["stream-scorer-role"] == b"shadow"
        assert headers["model.version"] == b"2"
        assert (alert["model_name"], alert["model_version"]) == ("fraud", "2")
        assert alert["threshold"] == SHADOW_THRESHOLD
        assert abs(alert["score"] - offline[alert["event_id"]]) <= SCORE_TOLERANCE
    ids = [a["event_id"] for a in alerts]
    assert len(ids) == len(set(ids))
    flagged = {i for i, score in offline.items() if score >= SHADOW_THRESHOLD}
    for event_id in set(ids) ^ flagged:
        assert abs(offline[event_id] - SHADOW_THRESHOLD) <= SCORE_TOLERANCE, event_id
    return len(ids)


def test_alerts_are_byte_identical_with_and_without_a_shadow(
    kafka_bootstrap: str, make_topic: Any, tmp_path: Path
) -> None:
    """Champion alone vs champion + shadow (and its shadow topic): the same alert messages;
    the shadow was compared; the shadow topic holds what score-file flags with the shadow."""
    plain_topics = stream_topics(make_topic)
    events = make_events(EVENTS, 17)
    produce_values(kafka_bootstrap, plain_topics["input"], encode_events(events))
    shadow_topics = {
        "input": plain_topics["input"],
        "alerts": make_topic("alerts-shadow", partitions=4),
        "dead_letter": make_topic("dlq-shadow", partitions=1),
    }
    shadow_topic = make_topic("shadow-alerts", partitions=4)
    shadow = _shadow_folder(tmp_path)
    _score(kafka_bootstrap, plain_topics, CollectorRegistry(), monitoring={"drift": False})
    registry = CollectorRegistry()
    _score(
        kafka_bootstrap,
        shadow_topics,
        registry,
        monitoring={"shadows": [str(shadow)], "shadow_max_ratio": 1e6,
                    "shadow_topic": shadow_topic},
    )  # fmt: skip
    plain = _by_partition(kafka_bootstrap, plain_topics["alerts"])
    shadowed = _by_partition(kafka_bootstrap, shadow_topics["alerts"])
    assert sum(len(v) for v in plain.values()) > 0
    assert shadowed == plain
    pair = {"champion": "fraud/1", "challenger": "fraud/2"}
    outcomes = {
        o: registry.get_sample_value(
            "stream_scorer_comparison_decisions_total", {**pair, "outcome": o}
        )
        for o in ("both", "champion_only", "challenger_only", "neither")
    }
    assert sum(v or 0 for v in outcomes.values()) == EVENTS
    assert (outcomes["challenger_only"] or 0) > 0  # it disagreed, and nothing of it went out
    assert outcomes["both"] == sum(len(v) for v in plain.values())
    shadow_labels = {"model_name": "fraud", "model_version": "2"}
    scored = registry.get_sample_value("stream_scorer_shadow_records_scored_total", shadow_labels)
    assert scored == EVENTS
    published = _check_shadow_topic(kafka_bootstrap, shadow_topic, events, shadow)
    flagged = registry.get_sample_value("stream_scorer_shadow_records_flagged_total", shadow_labels)
    assert published == flagged > sum(len(v) for v in plain.values())


def test_shadow_topic_is_inside_the_transaction_in_exactly_once_mode(
    kafka_bootstrap: str, make_topic: Any, tmp_path: Path
) -> None:
    """Exactly-once: a read_committed reader sees the shadow topic hold exactly score-file's
    flagged events of the shadow model, once each, beside the champion's alerts."""
    topics = stream_topics(make_topic)
    events = make_events(EVENTS, 19)
    produce_values(kafka_bootstrap, topics["input"], encode_events(events))
    shadow_topic = make_topic("shadow-alerts-eos", partitions=4)
    shadow = _shadow_folder(tmp_path)
    registry = CollectorRegistry()
    _score(
        kafka_bootstrap, topics, registry, delivery={"mode": "exactly-once"},
        monitoring={"drift": False, "shadows": [str(shadow)], "shadow_max_ratio": 1e6,
                    "shadow_topic": shadow_topic},
    )  # fmt: skip
    published = _check_shadow_topic(kafka_bootstrap, shadow_topic, events, shadow, "read_committed")
    labels = {"model_name": "fraud", "model_version": "2"}
    assert published == registry.get_sample_value(
        "stream_scorer_shadow_records_flagged_total", labels
    )
    alerts = read_topic(kafka_bootstrap, topics["alerts"], "read_committed")
    assert alerts and all(dict(m.headers() or ()).get("stream-scorer-role") is None
                          for m in alerts)  # fmt: skip
