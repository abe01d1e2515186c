"""A canary flagging ten times the champion's share is rolled back unattended, on the real
broker, by a real ``stream-scorer run`` process.

fraud/5 is fraud/1's graph (the repository's real skl2onnx conversion) at the threshold that
flags ten times the champion's share of the test's events; it serves as the canary for 30 %
of the keys. Once it has scored ``rollback_min_events`` events beside the champion, the
alert-rate rule removes it from the live set: nothing is lost (every event the champion
flags has an alert, every alert has its model's offline score), the history has the
``auto-rollback`` by ``rule:alert-rate``, and on every partition no canary alert follows a
champion alert of a canary key (after the drop every alert comes from the champion).
"""

from __future__ import annotations

import json
import shutil
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from stream_scorer.app import load_schema
from stream_scorer.encode import EventFields
from stream_scorer.lifecycle import ModelRepository
from stream_scorer.model_set import load_model
from stream_scorer.monitoring.canary import in_canary
from stream_scorer.offline import score_events

from .helpers import (
    REPO,
    committed_offsets,
    end_offsets,
    produce_values,
    read_topic,
    stream_topics,
    wait_until,
)
from .scorer_process import (
    SCORE_TOLERANCE,
    ScorerProcess,
    base_config,
    decode_alert,
    encode_events,
    make_events,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

READER = load_schema(REPO / "schemas/transaction.avsc", "reader")
EVENTS = 12_000
FRACTION = 0.3
MIN_EVENTS = 2000


def _offline(folder: Path, events: list[dict[str, Any]]) -> tuple[dict[str, float], float]:
    model = load_model(folder, READER, 1)
    fields = EventFields("transaction_id", "event_time")
    return {r["event_id"]: r["score"] for r in score_events(events, model, 1000, fields)}, (
        model.threshold
    )


def _metric(url: str, name: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:  # noqa: S310 - loopback
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name))  # fmt: skip


def test_canary_with_ten_times_the_alert_rate_is_dropped(
    kafka_bootstrap: str, make_topic: Any, tmp_path: Path
) -> None:
    """fraud/5 as canary is removed by rule:alert-rate; nothing lost; the champion decides
    every event after the drop; the history and the metric say so."""
    events = make_events(EVENTS, seed=211)
    scores, threshold = _offline(REPO / "models/fraud/1", events)
    ordered = sorted(scores.values())
    champion_rate = sum(s >= threshold for s in ordered) / len(ordered)
    regression = ordered[int(len(ordered) * (1 - 10 * champion_rate))]
    models = tmp_path / "models"
    shutil.copytree(REPO / "models/fraud/1", models / "fraud/1")
    shutil.copytree(REPO / "models/fraud/1", models / "fraud/5")
    card_file = models / "fraud/5/model.json"
    card = json.loads(card_file.read_text())
    card.update(version="5", threshold=regression)
    card_file.write_text(json.dumps(card))
    canary_scores, canary_threshold = _offline(models / "fraud/5", events)
    assert canary_threshold == pytest.approx(regression)

    topics = stream_topics(make_topic)
    config = base_config(
        kafka_bootstrap, topics,
        model={"path": str(models / "fraud/1")},
        monitoring={"drift": False, "canary": str(models / "fraud/5"),
                    "canary_fraction": FRACTION},
        lifecycle={"repository": str(models), "state_dir": str(tmp_path / "state"),
                   "instance_id": "canary-it", "rollback_min_events": MIN_EVENTS,
                   "rollback_alert_rate_ratio": 3.0},
        batch={"max_size": 500},
    )  # fmt: skip
    repo = ModelRepository(models, tmp_path / "state")
    scorer = ScorerProcess(tmp_path, config)
    try:
        scorer.wait_assigned()
        produce_values(kafka_bootstrap, topics["input"], encode_events(events))
        group, ends = config["kafka"]["group_id"], end_offsets(kafka_bootstrap, topics["input"])

        def consumed() -> bool:
            assert scorer.alive(), scorer.tail()
            return committed_offsets(kafka_bootstrap, group, topics["input"]) == ends

        wait_until(consumed, 120, f"{group} to commit {ends}")
        url = scorer.metrics_url()
        rollbacks = _metric(url, "stream_scorer_canary_rollbacks_total{")
        in_canary_batches = _metric(url, "stream_scorer_canary_decided_records_total{")
        dead_letters = _metric(url, "stream_scorer_records_dead_lettered_total{")
        warnings = scorer.logged("canary_rolled_back")
        scorer.terminate()
        assert scorer.wait() == 0
    finally:
        scorer.close()

    assert rollbacks == 1 and dead_letters == 0
    assert len(warnings) == 1 and warnings[0]["rule"] == "alert-rate"
    # Judged on whole batches both scored: dropped once MIN_EVENTS were in, well before the end.
    assert MIN_EVENTS <= in_canary_batches < EVENTS / 2
    (entry,) = [e for e in repo.history("fraud") if e.action == "auto-rollback"]
    assert (entry.version, entry.previous, entry.by, entry.instance) == (
        "1", "5", "rule:alert-rate", "canary-it"
    )  # fmt: skip

    messages = read_topic(kafka_bootstrap, topics["alerts"])
    by_id = {e["transaction_id"]: e for e in events}
    alerts = [(m.partition(), decode_alert(m)) for m in messages]
    versions: dict[int, list[str]] = defaultdict(list)
    for partition, alert in sorted(alerts, key=lambda pa: (pa[0], pa[1]["source_offset"])):
        event = by_id[alert["event_id"]]
        version = alert["model_version"]
        reference = scores if version == "1" else canary_scores
        assert abs(alert["score"] - reference[alert["event_id"]]) <= SCORE_TOLERANCE
        if not in_canary(event["card_id"].encode(), FRACTION):
            assert version == "1"  # the champion's keys never leave it
        else:
            versions[partition].append(version)
    for partition, sequence in versions.items():
        # Canary keys: the canary's alerts, then (after the drop) only the champion's.
        first_champion = sequence.index("1") if "1" in sequence else len(sequence)
        assert set(sequence[first_champion:]) <= {"1"}, f"partition {partition}: {sequence}"
    assert any("5" in s for s in versions.values()) and any("1" in s for s in versions.values())
    # Nothing lost: every event the champion flags has an alert (the canary, at a lower
    # threshold on the same graph, flags a superset), up to float32 rounding at the threshold.
    alerted = {a["event_id"] for _, a in alerts}
    for event_id, score in scores.items():
        if score >= threshold + SCORE_TOLERANCE:
            assert event_id in alerted, event_id
