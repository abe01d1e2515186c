"""Realized precision and recall from a labels topic, on the real broker, in a real process.

A ``stream-scorer run`` process scores synthetic transactions (fraud-rich, so both classes
have many labels) while their labels (``is_fraud``) arrive on a labels topic of three
partitions: a tenth before the events themselves (held until their event is scored), the
rest afterwards, shuffled, in waves, plus duplicates, unreadable labels and labels of events
that never come. What ``/metrics`` shows per model version must equal the confusion computed
offline from the same events (``offline.score_events``, the code behind ``score-file``) and
the same labels; the main group's offsets are the main group's alone.
"""

from __future__ import annotations

import json
import random
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from stream_scorer.devtools.generate import TransactionGenerator

from .helpers import committed_offsets, end_offsets, wait_until
from .scorer_process import (
    SCORE_TOLERANCE,
    THRESHOLD,
    ScorerProcess,
    base_config,
    encode_events,
    offline_scores,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EVENTS = 4000
#: Share of labels produced before their events (they travel ahead on another partition).
EARLY_SHARE = 0.1
DUPLICATES = 25
INVALID = [b"not json", b"[1, 2]", b'{"event_id": "x"}']
UNKNOWN = 7


def _metrics(process: ScorerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the process's /metrics, by name and sorted labels."""
    url = f"{process.metrics_url()}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback URL
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _produce(bootstrap: str, topic: str, messages: Sequence[tuple[bytes | None, bytes]]) -> None:
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 5, "partitioner": "murmur2_random"}
    )
    for key, value in messages:
        producer.produce(topic, key=key, value=value)
        producer.poll(0)
    assert producer.flush(60) == 0


def _label(event_id: str, fraud: bool) -> tuple[bytes | None, bytes]:
    # Keyed by the event id, as a label producer would; the id field wins over the key.
    return event_id.encode(), json.dumps({"event_id": event_id, "outcome": fraud}).encode()


def test_realized_precision_and_recall_equal_the_offline_confusion(
    kafka_bootstrap: str, make_topic: Callable[..., str], tmp_path: Path
) -> None:
    """Late, early, shuffled, duplicated labels: /metrics shows the offline TP/FP/FN/TN and
    the precision and recall they give; invalid and unknown labels are counted."""
    topics = {
        "input": make_topic("in", partitions=4),
        "alerts": make_topic("alerts"),
        "dead_letter": make_topic("dlq"),
    }
    labels_topic = make_topic("labels", partitions=3)
    events, truth = TransactionGenerator(seed=77, fraud_rate=0.15).generate(EVENTS)
    scores = offline_scores(events)
    # Scores within a float32 rounding of the threshold may fall either side in the stream
    # (see check_alerts): those events get no label, so the expected counts are exact.
    labelled = [
        (e["transaction_id"], bool(t))
        for e, t in zip(events, truth, strict=True)
        if abs(scores[e["transaction_id"]] - THRESHOLD) > SCORE_TOLERANCE
    ]
    flagged = {i for i, s in scores.items() if s >= THRESHOLD}
    cells = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
    for event_id, fraud in labelled:
        cells[
            ("t" if fraud == (event_id in flagged) else "f") + ("p" if event_id in flagged else "n")
        ] += 1
    assert min(cells.values()) > 30, cells  # every cell is exercised
    random.Random(3).shuffle(labelled)
    early = int(len(labelled) * EARLY_SHARE)

    config = base_config(
        kafka_bootstrap, topics,
        model={"threshold": THRESHOLD},
        monitoring={"drift": False},
        labels={"topic": labels_topic, "offset_reset": "earliest", "log_every": 500},
    )  # fmt: skip
    scorer = ScorerProcess(tmp_path, config)
    try:
        scorer.metrics_url()
        _produce(kafka_bootstrap, labels_topic, [_label(*x) for x in labelled[:early]])
        _produce(kafka_bootstrap, topics["input"], encode_events(events))
        ends = end_offsets(kafka_bootstrap, topics["input"])
        group = config["kafka"]["group_id"]
        wait_until(
            lambda: committed_offsets(kafka_bootstrap, group, topics["input"]) == ends,
            120, "the scorer to commit the whole input",
        )  # fmt: skip
        version = (("model_name", "fraud"), ("model_version", "1"))

        def received_at_least(count: int) -> Callable[[], bool]:
            def check() -> bool:
                assert scorer.alive(), scorer.tail()
                return _metrics(scorer).get(("stream_scorer_labels_received_total", ()), 0) >= count

            return check

        # Later labels, shuffled, in waves: each produced once the one before has been read.
        rest, sent = labelled[early:], early
        for wave in range(3):
            batch = rest[wave::3]
            _produce(kafka_bootstrap, labels_topic, [_label(*x) for x in batch])
            sent += len(batch)
            wait_until(received_at_least(sent), 60, f"label wave {wave} to be read")
        _produce(
            kafka_bootstrap, labels_topic,
            [_label(*x) for x in labelled[:DUPLICATES]]
            + [(None, v) for v in INVALID]
            + [_label(f"never-scored-{i}", True) for i in range(UNKNOWN)],
        )  # fmt: skip
        expected_received = len(labelled) + DUPLICATES + len(INVALID) + UNKNOWN

        def all_read() -> bool:
            sample = _metrics(scorer)
            matched = sample.get(("stream_scorer_labels_matched_total", version), 0)
            return received_at_least(expected_received)() and matched >= len(labelled)

        wait_until(all_read, 120, "every label to be read and matched")
        sample = _metrics(scorer)
        assert sample[("stream_scorer_labels_matched_total", version)] == len(labelled)
        for cell, count in cells.items():
            key = ("stream_scorer_label_outcomes_total", (("confusion", cell), *version))
            assert sample[key] == count, (cell, count)
        precision = cells["tp"] / (cells["tp"] + cells["fp"])
        recall = cells["tp"] / (cells["tp"] + cells["fn"])
        assert sample[("stream_scorer_realized_precision", version)] == pytest.approx(precision)
        assert sample[("stream_scorer_realized_recall", version)] == pytest.approx(recall)
        dropped = {
            reason: sample[("stream_scorer_labels_dropped_total", (("reason", reason),))]
            for reason in ("duplicate", "invalid", "expired", "evicted", "retired")
        }
        assert dropped == {"duplicate": DUPLICATES, "invalid": len(INVALID), "expired": 0,
                           "evicted": 0, "retired": 0}  # fmt: skip
        assert sample[("stream_scorer_label_held_labels", ())] == UNKNOWN
        assert sample[("stream_scorer_label_pending_events", ())] == EVENTS
        assert len(scorer.logged("labels_matched")) == len(labelled) // 500
        # The labels group is its own: the main group committed only the input topic.
        assert set(committed_offsets(kafka_bootstrap, group, labels_topic).values()) == {-1001}
        labels_group = f"{group}-labels"
        assert set(committed_offsets(kafka_bootstrap, labels_group, topics["input"]).values()) == {
            -1001
        }
        stopped_at = scorer.terminate()
        assert scorer.wait(60) == 0  # the labels thread stops with the loop
        assert time.monotonic() - stopped_at < 30
    finally:
        scorer.close()
