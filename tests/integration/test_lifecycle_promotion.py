"""Promotion reaches running ``stream-scorer run`` processes, between batches, losing nothing.

Real broker, real processes (the installed console script), ``lifecycle.watch = "file"``
with the aliases in the test's own state directory and the repository's real fraud/1 and
fraud/2. Events stream in at 5,000 per second; fraud/2 is promoted while they are scored.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from stream_scorer.app import load_schema
from stream_scorer.lifecycle import ModelRepository, promote
from stream_scorer.model_set import load_model
from stream_scorer.offline import score_events
from stream_scorer.settings import ENV_PREFIX

from ..unit.test_lifecycle_watcher import break_warm_up
from .helpers import REPO, committed_offsets, end_offsets, read_topic, stream_topics, wait_until
from .scorer_process import (
    SCORE_TOLERANCE,
    PacedProducer,
    ScorerProcess,
    base_config,
    decode_alert,
    encode_events,
    make_events,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

READER = load_schema(REPO / "schemas/transaction.avsc", "reader")
RATE = 5_000.0
#: Seconds within which every member must apply a promotion: poll interval (0.5 s) plus
#: loading and warming the model up on a loaded 2-core machine, with room to spare.
SWITCH_BOUND_S = 15.0


def offline(version: str, events: list[dict[str, Any]]) -> tuple[dict[str, float], float]:
    """Scores by event id of ``fraud/version``, and its threshold."""
    model = load_model(REPO / "models/fraud" / version, READER, 1)
    scores = {r["event_id"]: r["score"] for r in score_events(events, model, 1000)}
    return scores, model.threshold


def lifecycle_config(
    bootstrap: str,
    topics: dict[str, str],
    state: Path,
    repository: Path = REPO / "models",
    **sections: Any,
) -> dict[str, Any]:
    """A scorer following fraud@champion in ``state``."""
    lifecycle = {"watch": "file", "repository": str(repository), "state_dir": str(state),
                 "poll_interval_s": 0.5}  # fmt: skip
    return base_config(bootstrap, topics, lifecycle=lifecycle, **sections)


def wait_consumed(
    bootstrap: str, config: dict[str, Any], topic: str, scorer: ScorerProcess
) -> None:
    """Until the group has committed the end of ``topic``."""
    group = config["kafka"]["group_id"]
    ends = end_offsets(bootstrap, topic)

    def done() -> bool:
        assert scorer.alive(), scorer.tail()
        return committed_offsets(bootstrap, group, topic) == ends

    wait_until(done, 90, f"{group} to commit {ends}")


def model_info(scorer: ScorerProcess) -> str:
    """``stream_scorer_model_info``'s live version from the process's /metrics."""
    with urllib.request.urlopen(f"{scorer.metrics_url()}/metrics", timeout=5) as response:  # noqa: S310 - loopback
        text = response.read().decode()
    (line,) = [x for x in text.splitlines() if x.startswith("stream_scorer_model_info{")]
    return line.split('model_version="')[1].split('"')[0]


@pytest.mark.parametrize("mode", ["at-least-once", "exactly-once"])
def test_promote_under_load_loses_nothing(
    kafka_bootstrap: str, make_topic: Any, tmp_path: Path, mode: str
) -> None:
    """fraud/2 promoted at 5,000 events/s: each alert names the version that scored it."""
    topics = stream_topics(make_topic)
    events = make_events(30_000, seed=101)
    repo = ModelRepository(REPO / "models", tmp_path / "state")
    config = lifecycle_config(kafka_bootstrap, topics, tmp_path / "state", delivery={"mode": mode})
    scorer = ScorerProcess(tmp_path, config)
    try:
        scorer.wait_assigned()
        producer = PacedProducer(kafka_bootstrap, topics["input"], encode_events(events), RATE)
        wait_until(lambda: producer.produced >= 10_000, 60, "10,000 events produced")
        promote(repo, "fraud", "2", by="test", reason="under load", force=True)
        producer.join()
        wait_consumed(kafka_bootstrap, config, topics["input"], scorer)
        assert model_info(scorer) == "2"
        scorer.terminate()
        assert scorer.wait() == 0
    finally:
        scorer.close()
    isolation = "read_committed" if mode == "exactly-once" else "read_uncommitted"
    alerts = [decode_alert(m) for m in read_topic(kafka_bootstrap, topics["alerts"], isolation)]
    assert read_topic(kafka_bootstrap, topics["dead_letter"], isolation) == []
    ids = [a["event_id"] for a in alerts]
    if mode == "exactly-once":
        assert len(ids) == len(set(ids)), "an alert was published twice"
    scores = {v: offline(v, events) for v in ("1", "2")}
    by_partition: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for alert in alerts:
        version = alert["model_version"]
        assert abs(alert["score"] - scores[version][0][alert["event_id"]]) <= SCORE_TOLERANCE
        assert alert["threshold"] == scores[version][1]
        by_partition[alert["source_partition"]].append(alert)
    assert {a["model_version"] for a in alerts} == {"1", "2"}
    # Per partition, version 1 up to one offset and version 2 from it: a batch is scored by
    # one set, and the set never goes back. The switch lies after the last fraud/1 alert and
    # at or before the first fraud/2 alert; in that gap no event was alerted, so some cut
    # must exist there with no fraud/1-flagged event before it and no fraud/2-flagged after.
    last_v1: dict[int, int] = {}
    first_v2: dict[int, int] = {}
    for partition, mine in by_partition.items():
        ordered = sorted(mine, key=lambda a: a["source_offset"])
        versions = [a["model_version"] for a in ordered]
        first = versions.index("2") if "2" in versions else len(versions)
        assert set(versions[first:]) <= {"2"}, f"partition {partition} went back to fraud/1"
        last_v1[partition] = ordered[first - 1]["source_offset"] if first else -1
        first_v2[partition] = ordered[first]["source_offset"] if first < len(ordered) else 1 << 62
    where = {decode_event_id(m.value()): (m.partition(), m.offset())
             for m in read_topic(kafka_bootstrap, topics["input"])}  # fmt: skip
    alerted = set(ids)
    gap_v1_flags: dict[int, int] = defaultdict(lambda: 1 << 62)  # earliest: must be after cut
    gap_v2_flags: dict[int, int] = defaultdict(lambda: -1)  # latest: must be before the cut

    def flags(version: str, event_id: str) -> bool | None:
        score, threshold = scores[version][0][event_id], scores[version][1]
        return None if abs(score - threshold) <= SCORE_TOLERANCE else score >= threshold

    for event in events:
        event_id = event["transaction_id"]
        partition, offset = where[event_id]
        if offset <= last_v1.get(partition, -1):
            expected = flags("1", event_id)
        elif offset >= first_v2.get(partition, 1 << 62):
            expected = flags("2", event_id)
        else:  # in the gap: not alerted; which version scored it bounds the cut
            assert event_id not in alerted
            if flags("1", event_id):
                gap_v1_flags[partition] = min(gap_v1_flags[partition], offset)
            if flags("2", event_id):
                gap_v2_flags[partition] = max(gap_v2_flags[partition], offset)
            continue
        if expected is not None:
            assert (event_id in alerted) == expected, (event_id, partition, offset)
    for partition in gap_v1_flags.keys() | gap_v2_flags.keys():
        assert gap_v2_flags[partition] < gap_v1_flags[partition], f"no cut in {partition}"
    applied = [e for e in repo.history("fraud") if e.action == "applied"]
    assert [(e.version, e.previous) for e in applied] == [("2", "1")]


def decode_event_id(value: bytes | None) -> str:
    """The transaction id of a plain-Avro input event."""
    import io  # noqa: PLC0415

    import fastavro  # noqa: PLC0415

    assert value is not None
    parsed = fastavro.parse_schema(READER)
    return str(fastavro.schemaless_reader(io.BytesIO(value), parsed, None)["transaction_id"])  # type: ignore[index]


def models_cli(tmp_path: Path, models: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``stream-scorer models ARGS`` as an operator runs it, on ``models`` and the test's state."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(ENV_PREFIX)}
    env.update({f"{ENV_PREFIX}LIFECYCLE__REPOSITORY": str(models),
                f"{ENV_PREFIX}LIFECYCLE__STATE_DIR": str(tmp_path / "state"),
                f"{ENV_PREFIX}LIFECYCLE__VALIDATION_EVENTS": "4000",
                # Timing is the bench's business; this test is about the refusal.
                f"{ENV_PREFIX}LIFECYCLE__BATCH_P99_BUDGET_MS": "60000"})  # fmt: skip
    return subprocess.run(  # the console script under test, fixed arguments
        [str(Path(sys.executable).with_name("stream-scorer")), "models", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def _break(models: Path, breakage: str) -> None:
    """Make ``models/fraud/3`` broken in the way named."""
    source = "2" if breakage == "tampered" else "1"
    shutil.copytree(REPO / "models/fraud" / source, models / "fraud/3")
    card_file = models / "fraud/3/model.json"
    card = json.loads(card_file.read_text())
    card["version"] = "3"
    if breakage == "fails validation":  # the same graph flagging many times as much
        card["threshold"] = 0.05
    card_file.write_text(json.dumps(card))
    if breakage == "tampered":
        onnx = models / "fraud/3/model.onnx"
        onnx.write_bytes(onnx.read_bytes()[:-100])
    elif breakage == "fails warm-up":
        break_warm_up(models / "fraud/3")


@pytest.mark.parametrize("breakage", ["tampered", "fails warm-up", "fails validation"])
def test_broken_version_is_refused_while_serving(
    kafka_bootstrap: str, make_topic: Any, tmp_path: Path, breakage: str
) -> None:
    """A broken fraud/3 is refused: fraud/1 keeps scoring everything; the history says why.

    Tampered or failing its warm-up, it is promoted by force and the instance refuses to
    apply it (``apply-failed``); failing validation, `models promote` refuses it (``refuse``).
    """
    models = tmp_path / "models"
    shutil.copytree(REPO / "models/fraud/1", models / "fraud/1")
    _break(models, breakage)
    topics = stream_topics(make_topic)
    events = make_events(10_000, seed=102)
    repo = ModelRepository(models, tmp_path / "state")
    config = lifecycle_config(kafka_bootstrap, topics, tmp_path / "state", models)
    scorer = ScorerProcess(tmp_path, config)
    try:
        scorer.wait_assigned()
        producer = PacedProducer(kafka_bootstrap, topics["input"], encode_events(events), RATE)
        if breakage == "fails validation":
            validated = models_cli(tmp_path, models, "validate", "fraud/3", "--against", "fraud/1")
            assert validated.returncode == 1, validated.stdout + validated.stderr
            assert any(line.startswith("alert rate") and " FAIL " in line
                       for line in validated.stdout.splitlines()), validated.stdout  # fmt: skip
            refused = models_cli(tmp_path, models, "promote", "fraud/3")
            assert refused.returncode == 2, refused.stdout + refused.stderr
            assert "validation status is failed" in refused.stderr
        else:
            promote(repo, "fraud", "3", by="test", force=True)
            wait_until(lambda: any(e.action == "apply-failed" for e in repo.history("fraud")),
                       30, "the scorer to report the failed load")  # fmt: skip
        producer.join()
        wait_consumed(kafka_bootstrap, config, topics["input"], scorer)
        assert model_info(scorer) == "1"
        if breakage != "fails validation":
            assert scorer.logged("model_apply_failed")
        scorer.terminate()
        assert scorer.wait() == 0
    finally:
        scorer.close()
    alerts = [decode_alert(m) for m in read_topic(kafka_bootstrap, topics["alerts"])]
    scores, threshold = offline("1", events)
    assert {a["model_version"] for a in alerts} == {"1"}
    alerted = {a["event_id"] for a in alerts}
    for event_id, score in scores.items():
        if abs(score - threshold) > SCORE_TOLERANCE:
            assert (event_id in alerted) == (score >= threshold), event_id
    history = repo.history("fraud")
    assert not [e for e in history if e.action == "applied"]
    if breakage == "fails validation":
        mine = [e for e in history if e.version == "3"]
        assert [e.action for e in mine] == ["validate", "refuse"]
        assert mine[0].reason.startswith("failed: ")
        assert "alert rate" in mine[0].reason
        assert mine[1].reason == "validation status: failed"
    else:
        failed = next(e for e in history if e.action == "apply-failed")
        assert failed.version == "3"
        assert ("sha256" if breakage == "tampered" else "warm-up") in failed.reason


def test_three_members_switch_and_a_late_member_starts_promoted(
    kafka_bootstrap: str, make_topic: Any, tmp_path: Path
) -> None:
    """Three members of one group apply fraud/2 within the bound; a fourth starts on it."""
    topics = stream_topics(make_topic, partitions=6)
    repo = ModelRepository(REPO / "models", tmp_path / "state")
    config = lifecycle_config(kafka_bootstrap, topics, tmp_path / "state")
    members = [
        ScorerProcess(tmp_path, {**config, "lifecycle": {**config["lifecycle"],
                                                         "instance_id": f"member-{i}"}})
        for i in range(3)
    ]  # fmt: skip
    late = None
    try:
        for member in members:
            member.wait_assigned()
        entry = promote(repo, "fraud", "2", by="test", force=True)

        def applied() -> set[str]:
            return {e.instance or "" for e in repo.history("fraud") if e.action == "applied"}

        wait_until(lambda: applied() >= {"member-0", "member-1", "member-2"}, 60,
                   "every member to apply fraud/2")  # fmt: skip
        promoted_at = datetime.fromisoformat(entry.at)
        for e in repo.history("fraud"):
            if e.action == "applied":
                lag_s = (datetime.fromisoformat(e.at) - promoted_at).total_seconds()
                assert lag_s <= SWITCH_BOUND_S, (e.instance, lag_s)
        assert all(model_info(m) == "2" for m in members)
        late = ScorerProcess(tmp_path, {**config, "lifecycle": {**config["lifecycle"],
                                                               "instance_id": "late"}})  # fmt: skip
        started = time.monotonic()
        wait_until(lambda: "late" in applied(), 60, "the late member to start on fraud/2")
        assert model_info(late) == "2"
        assert time.monotonic() - started < 60
    finally:
        for member in [*members, *([late] if late else [])]:
            member.close()


def test_ten_times_the_alert_rate_rolls_back_unattended(
    kafka_bootstrap: str, make_topic: Any, tmp_path: Path
) -> None:
    """fraud/5 (fraud/1 at a threshold flagging 10x as much) is rolled back by its rule."""
    events = make_events(25_000, seed=103)
    scores, threshold = offline("1", events)
    values = sorted(scores.values())
    champion_rate = sum(s >= threshold for s in values) / len(values)
    # The threshold at which the same graph flags ten times the champion's share.
    regression_threshold = values[int(len(values) * (1 - 10 * champion_rate))]
    models = tmp_path / "models"
    shutil.copytree(REPO / "models/fraud/1", models / "fraud/1")
    shutil.copytree(REPO / "models/fraud/1", models / "fraud/5")
    card_file = models / "fraud/5/model.json"
    card = json.loads(card_file.read_text())
    card.update(version="5", threshold=regression_threshold)
    card_file.write_text(json.dumps(card))
    repo = ModelRepository(models, tmp_path / "state")
    promote(repo, "fraud", "1", by="test", force=True)
    topics = stream_topics(make_topic)
    config = lifecycle_config(kafka_bootstrap, topics, tmp_path / "state", models)
    config["lifecycle"].update(rollback_min_events=2000, rollback_alert_rate_ratio=3.0)
    scorer = ScorerProcess(tmp_path, config)
    try:
        scorer.wait_assigned()
        producer = PacedProducer(kafka_bootstrap, topics["input"], encode_events(events), RATE)
        wait_until(lambda: producer.produced >= 5_000, 60, "5,000 events produced")
        promote(repo, "fraud", "5", by="test", reason="injected regression", force=True)

        def rolled_back() -> bool:
            assert scorer.alive(), scorer.tail()
            return any(e.action == "auto-rollback" for e in repo.history("fraud"))

        wait_until(rolled_back, 60, "the alert-rate rule to roll fraud/5 back")
        producer.join()
        wait_consumed(kafka_bootstrap, config, topics["input"], scorer)
        assert model_info(scorer) == "1"
        scorer.terminate()
        assert scorer.wait() == 0
    finally:
        scorer.close()
    auto = next(e for e in repo.history("fraud") if e.action == "auto-rollback")
    assert (auto.version, auto.previous, auto.by) == ("1", "5", "rule:alert-rate")
    assert repo.aliases("fraud") == {"champion": "1"}
    applied = [(e.version, e.previous) for e in repo.history("fraud") if e.action == "applied"]
    assert applied == [("5", "1"), ("1", "5")]
    alerts = [decode_alert(m) for m in read_topic(kafka_bootstrap, topics["alerts"])]
    assert {a["model_version"] for a in alerts} == {"1", "5"}
    for alert in alerts:
        assert abs(alert["score"] - scores[alert["event_id"]]) <= SCORE_TOLERANCE
        expected = threshold if alert["model_version"] == "1" else regression_threshold
        assert alert["threshold"] == pytest.approx(expected)


def test_control_topic_reaches_members_on_separate_state(
    kafka_bootstrap: str, make_topic: Any, tmp_path: Path
) -> None:
    """watch=kafka: members with their own state dirs follow a promotion made elsewhere."""
    from stream_scorer.lifecycle.service import catch_up, repository  # noqa: PLC0415
    from stream_scorer.settings import load_settings  # noqa: PLC0415

    topics = stream_topics(make_topic)
    control = f"it-control-{tmp_path.name[-12:]}"
    config = base_config(kafka_bootstrap, topics)

    def member(name: str) -> ScorerProcess:
        lifecycle = {"watch": "kafka", "control_topic": control, "poll_interval_s": 0.5,
                     "state_dir": str(tmp_path / f"state-{name}"), "instance_id": name}  # fmt: skip
        return ScorerProcess(tmp_path, {**config, "lifecycle": lifecycle})

    members = [member("a"), member("b")]
    late = None
    try:
        for m in members:
            m.wait_assigned()
        # The operator's machine: its own state dir, the same control topic.
        operator = load_settings(None, {
            "kafka": {"bootstrap_servers": kafka_bootstrap},
            "lifecycle": {"watch": "kafka", "control_topic": control,
                          "state_dir": str(tmp_path / "state-operator")},
        }, environ={})  # fmt: skip
        promote(repository(operator), "fraud", "2", by="test", force=True)

        def applied(name: str) -> bool:
            history = ModelRepository(REPO / "models", tmp_path / f"state-{name}").history("fraud")
            return any(e.action == "applied" and e.version == "2" for e in history)

        wait_until(lambda: applied("a") and applied("b"), 60, "both members to apply fraud/2")
        assert [model_info(m) for m in members] == ["2", "2"]
        late = member("late")
        wait_until(lambda: applied("late"), 60, "the late member to start on fraud/2")
        assert model_info(late) == "2"
        # Every host's history lines reach the operator through the control topic.
        operator_repo = repository(operator)

        def operator_sees_all() -> bool:
            catch_up(operator, operator_repo)
            entries = operator_repo.history("fraud")
            return {e.instance for e in entries if e.action == "applied"} == {"a", "b", "late"}

        wait_until(operator_sees_all, 30, "the operator to see every member's applied line")
        entries = operator_repo.history("fraud")
        assert len({e.id for e in entries}) == len(entries), "a history line was kept twice"
        assert sum(e.action == "force" for e in entries) == 1
    finally:
        for m in [*members, *([late] if late else [])]:
            m.close()
