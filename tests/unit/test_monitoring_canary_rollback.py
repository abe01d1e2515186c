"""The canary compared with the champion on whole batches, and rolled back by the lifecycle's
rules: alert rate, latency and bisections against the champion on the same events."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from stream_scorer.consume import MessageBatch
from stream_scorer.decode import ColumnarAvroDecoder, Framing
from stream_scorer.devtools.generate import TransactionGenerator
from stream_scorer.encode import AlertEncoder, EventFields
from stream_scorer.lifecycle.repository import ModelRepository
from stream_scorer.lifecycle.watcher import RollbackRules
from stream_scorer.model_set import LiveModels, LoadedModel, ModelSet, load_model
from stream_scorer.monitoring.canary import CanaryBatch, in_canary
from stream_scorer.monitoring.canary_rollback import (
    CanaryMetrics,
    CanaryRollback,
    CanaryTally,
    broken_rule,
)
from stream_scorer.monitoring.monitor import Monitor
from stream_scorer.monitoring.setup import build_monitor
from stream_scorer.pipeline import ModelDecision, Pipeline, score_and_flag
from stream_scorer.records import BatchOutput, SourceRecord
from stream_scorer.settings import load_settings

REPO_ROOT = Path(__file__).resolve().parents[2]
FRAUD_MODEL = REPO_ROOT / "models" / "fraud" / "1"
READER = json.loads((REPO_ROOT / "schemas" / "transaction.avsc").read_text(encoding="utf-8"))
ALERT = json.loads((REPO_ROOT / "schemas" / "alert.avsc").read_text(encoding="utf-8"))
FRACTION = 0.3
BATCH = 1000


def _variant(root: Path, version: str, threshold: float) -> Path:
    """fraud/1's ONNX graph (a real skl2onnx conversion) as another version and threshold."""
    folder = root / "fraud" / version
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(FRAUD_MODEL / "model.onnx", folder / "model.onnx")
    card = json.loads((FRAUD_MODEL / "model.json").read_text(encoding="utf-8"))
    card.update(version=version, threshold=threshold)
    (folder / "model.json").write_text(json.dumps(card), encoding="utf-8")
    return folder


def _records(n: int, seed: int) -> list[SourceRecord]:
    events, _ = TransactionGenerator(seed=seed, fraud_rate=0.02).generate(n)
    parsed = fastavro.parse_schema(READER)
    out = []
    for i, event in enumerate(events):
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed, event)
        out.append(SourceRecord("in", i % 2, i, event["card_id"].encode(), buf.getvalue()))
    return out


@pytest.fixture(scope="module")
def champion() -> LoadedModel:
    """The shipped fraud model."""
    return load_model(FRAUD_MODEL, READER)


@pytest.fixture(scope="module")
def records() -> list[SourceRecord]:
    """6,000 consumed transactions."""
    return _records(6000, 41)


def _whole(
    models: ModelSet, records: list[SourceRecord]
) -> tuple[Any, ModelDecision, ModelDecision]:
    decoded = ColumnarAvroDecoder(Framing(READER, "plain")).decode(
        MessageBatch.from_records(records), models.fields
    )
    assert models.canary is not None
    return decoded, score_and_flag(models.champion, decoded), score_and_flag(models.canary, decoded)


@pytest.fixture(scope="module")
def ten_times(
    champion: LoadedModel, records: list[SourceRecord], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, LoadedModel]:
    """A repository with fraud/1 and fraud/5: the same graph at the threshold that flags ten
    times the champion's share of these events."""
    root = tmp_path_factory.mktemp("models")
    shutil.copytree(FRAUD_MODEL, root / "fraud" / "1")
    decoded = ColumnarAvroDecoder(Framing(READER, "plain")).decode(
        MessageBatch.from_records(records), champion.features.fields
    )
    whole = score_and_flag(champion, decoded)
    rate = len(whole.flagged) / len(whole.rows)
    assert rate > 0
    scores = np.sort(whole.scores)
    threshold = float(scores[int(len(scores) * (1 - 10 * rate))])
    folder = _variant(root, "5", threshold)
    return root, load_model(folder, READER)


def _pipeline(live: LiveModels, monitor: Monitor | None) -> Pipeline:
    return Pipeline(
        ColumnarAvroDecoder(Framing(READER, "plain")),
        live,
        AlertEncoder(ALERT, b"", "t", EventFields("transaction_id", "event_time")),
        "alerts",
        "dlq",
        "t",
        clock_ms=lambda: 1_767_225_600_000,
        monitor=monitor,
    )


def _alerts(output: BatchOutput) -> list[dict[str, Any]]:
    parsed = fastavro.parse_schema(ALERT)
    return [
        fastavro.schemaless_reader(io.BytesIO(value), parsed)  # type: ignore[misc]
        for topic, _, value, _ in output.messages
        if topic == "alerts"
    ]


def _monitor(registry: CollectorRegistry, rollback: CanaryRollback | None) -> Monitor:
    return Monitor(score_and_flag, registry, drift_enabled=False, canary=rollback)


def test_canary_is_compared_with_the_champion_on_every_event(
    champion: LoadedModel, records: list[SourceRecord], tmp_path: Path
) -> None:
    """Agreement, confusion, score difference, correlation and alert rates of the pair
    champion/canary cover the whole batch (not only the canary's share), as for a shadow."""
    canary = load_model(_variant(tmp_path, "2", 0.2), READER)
    models = ModelSet(champion, canary=canary, canary_fraction=FRACTION)
    registry = CollectorRegistry()
    monitor = _monitor(registry, None)
    batch = records[:BATCH]
    _pipeline(LiveModels(models), monitor).process(MessageBatch.from_records(batch))

    _, a, b = _whole(models, batch)
    fa = np.isin(np.arange(len(a.rows)), a.flagged)
    fb = np.isin(np.arange(len(b.rows)), b.flagged)
    assert np.array_equal(a.rows, b.rows) and len(a.rows) == BATCH
    comparison = monitor.comparisons.pairs[("fraud/1", "fraud/2")]
    expected = {
        "both": int(np.count_nonzero(fa & fb)),
        "champion_only": int(np.count_nonzero(fa & ~fb)),
        "challenger_only": int(np.count_nonzero(~fa & fb)),
        "neither": int(np.count_nonzero(~fa & ~fb)),
    }
    assert comparison.summary()["confusion"] == expected
    assert expected["challenger_only"] > 0  # the canary's lower threshold disagrees
    assert comparison.n == BATCH
    pair = {"champion": "fraud/1", "challenger": "fraud/2"}
    for outcome, count in expected.items():
        assert (
            registry.get_sample_value(
                "stream_scorer_comparison_decisions_total", {**pair, "outcome": outcome}
            )
            == count
        )
    assert registry.get_sample_value(
        "stream_scorer_comparison_alert_ratio", {**pair, "role": "challenger"}
    ) == pytest.approx(fb.mean())
    assert registry.get_sample_value(
        "stream_scorer_comparison_score_abs_diff_mean", pair
    ) == pytest.approx(0.0)  # the same graph: only the thresholds differ
    assert registry.get_sample_value(
        "stream_scorer_comparison_score_correlation", pair
    ) == pytest.approx(1.0)


def _tally(**counts: Any) -> CanaryTally:
    base: dict[str, Any] = {"events": 5000, "champion_flagged": 50, "canary_flagged": 60,
                            "champion_score_s": 1.0, "canary_score_s": 1.2,
                            "batches": 5}  # fmt: skip
    return CanaryTally(**{**base, **counts})


RULES = RollbackRules(min_events=2000, alert_rate_ratio=3.0, latency_ratio=3.0, max_bisections=0)


@pytest.mark.parametrize(
    ("counts", "rule"),
    [
        ({}, None),
        ({"canary_flagged": 151}, "alert-rate"),
        ({"canary_flagged": 150}, None),  # exactly the bound: not above it
        ({"canary_flagged": 500, "events": 1999}, None),  # too few events to judge a rate
        ({"champion_flagged": 0, "canary_flagged": 500}, None),  # no rate to be a multiple of
        ({"canary_score_s": 3.01}, "latency"),
        ({"canary_score_s": 30.0, "events": 100}, None),
        ({"bisections": 1, "events": 10}, "bisections"),  # judged at once
        ({"bisections": 1, "canary_flagged": 500}, "bisections"),  # the first broken bound
    ],
)
def test_rules_judge_the_canary_against_the_champion(
    counts: dict[str, Any], rule: str | None
) -> None:
    """Each lifecycle rule fires just past its bound and only from min_events on (bisections
    at once); a rule names its measured values."""
    broken = broken_rule(_tally(**counts), RULES)
    assert (None if broken is None else broken[0]) == rule
    if broken is not None:
        assert any(ch.isdigit() for ch in broken[1])


def test_tally_counts_both_models_on_the_same_rows() -> None:
    """Rows one model rejected are left out of both rates; each model's score time and the
    canary's bisections are summed per batch."""

    def decision(rows: list[int], flagged: list[int], bisected: bool = False) -> ModelDecision:
        return ModelDecision(np.array(rows, dtype=np.intp), np.zeros(len(rows)),
                             np.array(flagged, dtype=np.intp), len(rows) - len(flagged), [],
                             bisected)  # fmt: skip

    tally = CanaryTally()
    # Champion scored rows 0-3 and flags row 1; the canary lost row 2 and flags rows 1, 3.
    tally.add(CanaryBatch(decision([0, 1, 2, 3], [1]), decision([0, 1, 3], [1, 2], True),
                          {"score": 0.5}, {"score": 2.0}))  # fmt: skip
    assert (tally.events, tally.champion_flagged, tally.canary_flagged) == (3, 1, 2)
    assert (tally.champion_score_s, tally.canary_score_s) == (0.5, 2.0)
    assert (tally.batches, tally.bisections) == (1, 1)


def test_ten_times_the_alert_rate_drops_the_canary_between_batches(
    champion: LoadedModel,
    records: list[SourceRecord],
    ten_times: tuple[Path, LoadedModel],
    tmp_path: Path,
) -> None:
    """A canary flagging ten times the champion's share is removed once min_events are in:
    nothing is lost, a warning is logged, the metric counts it, the repository's history has
    the auto-rollback by rule:alert-rate, and every later alert comes from the champion."""
    root, canary = ten_times
    repo = ModelRepository(root, tmp_path / "state")
    models = ModelSet(champion, canary=canary, canary_fraction=FRACTION)
    live = LiveModels(models)
    registry = CollectorRegistry()
    rollback = CanaryRollback(live, RollbackRules(min_events=2000), CanaryMetrics(registry),
                              repo.record, "host-1")  # fmt: skip
    pipeline = _pipeline(live, _monitor(registry, rollback))
    outputs = []
    with capture_logs() as logs:
        for start in range(0, len(records), BATCH):
            batch = MessageBatch.from_records(records[start : start + BATCH])
            outputs.append(pipeline.process(batch))
    for output in outputs:
        r = output.result
        assert r.flagged + r.unflagged + r.dead_lettered == r.consumed == BATCH
    # Batches 1 and 2 (2,000 events) had the canary; the rule broke after the second.
    assert [o.result.scored_by.get("fraud/5", 0) > 0 for o in outputs] == [True, True] + [False] * 4
    assert live.current.canary is None and live.current.champion is champion
    for output in outputs[2:]:
        alerts = _alerts(output)
        assert alerts and {a["model_version"] for a in alerts} == {"1"}
    canary_keys = {r.offset for r in records[:2000] if in_canary(r.key, FRACTION)}
    early = [a for o in outputs[:2] for a in _alerts(o)]
    assert {a["model_version"] for a in early if a["source_offset"] in canary_keys} == {"5"}
    warnings = [e for e in logs if e["event"] == "canary_rolled_back"]
    assert len(warnings) == 1 and warnings[0]["log_level"] == "warning"
    assert warnings[0]["rule"] == "alert-rate"
    assert (
        registry.get_sample_value(
            "stream_scorer_canary_rollbacks_total",
            {"model_name": "fraud", "model_version": "5", "rule": "alert-rate"},
        )
        == 1
    )
    (entry,) = repo.history("fraud")
    assert (entry.action, entry.version, entry.previous, entry.by, entry.instance) == (
        "auto-rollback",
        "1",
        "5",
        "rule:alert-rate",
        "host-1",
    )
    assert entry.detail["role"] == "canary" and entry.detail["events"] == 2000
    assert (
        registry.get_sample_value(
            "stream_scorer_canary_fraction", {"champion": "fraud/1", "canary": "fraud/5"}
        )
        == 0.0
    )


def test_canary_share_is_counted_by_deciding_model(
    champion: LoadedModel, records: list[SourceRecord], tmp_path: Path
) -> None:
    """The decided-by counters add up to the events and give the canary its key-hash share."""
    canary = load_model(_variant(tmp_path, "2", 0.2), READER)
    live = LiveModels(ModelSet(champion, canary=canary, canary_fraction=FRACTION))
    registry = CollectorRegistry()
    counting = CanaryRollback(live, None, CanaryMetrics(registry))
    pipeline = _pipeline(live, _monitor(registry, counting))
    pipeline.process(MessageBatch.from_records(records))
    labels = {"champion": "fraud/1", "canary": "fraud/2"}

    def decided(by: str) -> float:
        value = registry.get_sample_value(
            "stream_scorer_canary_decided_records_total", {**labels, "decided_by": by}
        )
        assert value is not None
        return value

    expected = sum(in_canary(r.key, FRACTION) for r in records)
    assert decided("canary") == expected
    assert decided("champion") == len(records) - expected
    assert live.current.canary is canary  # no rules: counting only, never rolled back


def test_a_newer_set_is_never_undone(
    champion: LoadedModel, records: list[SourceRecord], ten_times: tuple[Path, LoadedModel]
) -> None:
    """When the set was replaced after the batch was scored, the rule leaves the newer set
    alone and records nothing."""
    _, canary = ten_times
    models = ModelSet(champion, canary=canary, canary_fraction=FRACTION)
    live = LiveModels(models)
    recorded: list[Any] = []
    rollback = CanaryRollback(live, RollbackRules(min_events=1), None, recorded.append)
    newer = ModelSet(champion)
    live.replace(newer)
    decoded, a, b = _whole(models, records[:BATCH])
    assert rollback.observe(models, decoded, CanaryBatch(a, b, {}, {})) is None
    assert live.current is newer and recorded == [] and rollback.rolled_back == []


def _settings(tmp: Path, canary: Path, **lifecycle: Any) -> Any:
    return load_settings(None, environ={}, overrides={
        "lifecycle": {"repository": str(tmp / "models"), "state_dir": str(tmp / "state"),
                      **lifecycle},
        "monitoring": {"drift": False, "canary": str(canary), "canary_fraction": 0.1},
    })  # fmt: skip


def test_build_monitor_judges_a_canary_by_the_lifecycle_settings(tmp_path: Path) -> None:
    """A canary alone (drift off) gets a monitor with the lifecycle's rules; the history is
    written only when the repository holds the canary; auto_rollback off only counts."""
    inside = _variant(tmp_path / "models", "2", 0.2)
    outside = _variant(tmp_path / "elsewhere", "3", 0.2)
    settings = _settings(tmp_path, inside, rollback_min_events=1234, rollback_alert_rate_ratio=4)
    monitor = build_monitor(settings, CollectorRegistry())
    assert monitor is not None and monitor.canary is not None
    assert monitor.canary.rules is not None
    assert (monitor.canary.rules.min_events, monitor.canary.rules.alert_rate_ratio) == (1234, 4)
    assert monitor.canary._record is not None
    away = build_monitor(_settings(tmp_path, outside), CollectorRegistry())
    assert away is not None and away.canary is not None and away.canary._record is None
    off = build_monitor(_settings(tmp_path, inside, auto_rollback=False), CollectorRegistry())
    assert off is not None and off.canary is not None and off.canary.rules is None
