"""Shadow models and the champion/challenger comparison, on the champion's decoded batch."""

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
from stream_scorer.errors import ConfigurationError, ModelError
from stream_scorer.model_set import LiveModels, LoadedModel, ModelSet, load_model
from stream_scorer.monitoring.compare import Comparisons
from stream_scorer.monitoring.monitor import Monitor
from stream_scorer.monitoring.setup import build_monitor, check_shadows
from stream_scorer.monitoring.shadow import ShadowBudget, ShadowRunner
from stream_scorer.pipeline import ModelDecision, Pipeline, score_and_flag
from stream_scorer.records import DecodedBatch, SourceRecord
from stream_scorer.settings import load_settings

REPO_ROOT = Path(__file__).resolve().parents[2]
FRAUD_MODEL = REPO_ROOT / "models" / "fraud" / "1"
READER = json.loads((REPO_ROOT / "schemas" / "transaction.avsc").read_text(encoding="utf-8"))
N = 2000
#: The shadow flags from here: far lower than the champion's 0.76, so decisions differ.
SHADOW_THRESHOLD = 0.2


def _variant(tmp: Path, version: str, threshold: float) -> Path:
    """fraud/1's ONNX file under another version and threshold: a real second model."""
    folder = tmp / "fraud" / version
    folder.mkdir(parents=True)
    shutil.copy(FRAUD_MODEL / "model.onnx", folder / "model.onnx")
    card = json.loads((FRAUD_MODEL / "model.json").read_text(encoding="utf-8"))
    card.update(version=version, threshold=threshold)
    (folder / "model.json").write_text(json.dumps(card), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def champion() -> LoadedModel:
    """The shipped fraud model."""
    return load_model(FRAUD_MODEL, READER)


@pytest.fixture(scope="module")
def shadow(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """A second fraud model version with a lower threshold."""
    return load_model(_variant(tmp_path_factory.mktemp("m"), "2", SHADOW_THRESHOLD), READER)


@pytest.fixture(scope="module")
def records() -> list[SourceRecord]:
    """N plain-Avro transactions (fraud-rich, so both models flag some) as consumed records."""
    events, _ = TransactionGenerator(seed=31, fraud_rate=0.1).generate(N)
    parsed = fastavro.parse_schema(READER)
    out = []
    for i, event in enumerate(events):
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed, event)
        out.append(SourceRecord("in", i % 3, i, event["card_id"].encode(), buf.getvalue()))
    return out


def _decoded(records: list[SourceRecord], models: ModelSet) -> DecodedBatch:
    decoder = ColumnarAvroDecoder(Framing(READER, "plain"))
    return decoder.decode(MessageBatch.from_records(records), models.fields)


def _pipeline(models: ModelSet, alert_schema: dict[str, Any], monitor: Monitor | None) -> Pipeline:
    return Pipeline(
        ColumnarAvroDecoder(Framing(READER, "plain")),
        LiveModels(models),
        AlertEncoder(alert_schema, b"", "t", EventFields("transaction_id", "event_time")),
        "alerts",
        "dlq",
        "t",
        clock_ms=lambda: 1_767_225_600_000,
        monitor=monitor,
    )


def test_shadow_changes_nothing_the_pipeline_returns(
    champion: LoadedModel,
    shadow: LoadedModel,
    records: list[SourceRecord],
    alert_schema: dict[str, Any],
) -> None:
    """Alerts and dead letters are byte-identical with and without a shadow in the set."""
    registry = CollectorRegistry()
    plain = _pipeline(ModelSet(champion), alert_schema, None)
    watched = _pipeline(
        ModelSet(champion, shadows=(shadow,)), alert_schema, Monitor(score_and_flag, registry)
    )
    for start in range(0, N, 500):
        batch = MessageBatch.from_records(records[start : start + 500])
        assert watched.process(batch).messages == plain.process(batch).messages
    labels = {"model_name": "fraud", "model_version": "2"}
    assert registry.get_sample_value("stream_scorer_shadow_records_scored_total", labels) == N
    pair = {"champion": "fraud/1", "challenger": "fraud/2"}
    assert registry.get_sample_value("stream_scorer_comparison_agreement_ratio", pair) is not None
    watched.models.replace(ModelSet(champion))  # the shadow retires: its series go with it
    watched.process(MessageBatch.from_records(records[:10]))
    assert registry.get_sample_value("stream_scorer_comparison_agreement_ratio", pair) is None


def test_comparison_counts_the_confusion_of_decisions(
    champion: LoadedModel, shadow: LoadedModel, records: list[SourceRecord]
) -> None:
    """both / champion only / challenger only / neither equal the decisions made apart."""
    models = ModelSet(champion, shadows=(shadow,))
    decoded = _decoded(records, models)
    a = score_and_flag(champion, decoded)
    b = score_and_flag(shadow, decoded)
    comparison = Comparisons().observe(champion, a, shadow, b, decoded)
    fa = np.zeros(N, dtype=bool)
    fa[a.rows[a.flagged]] = True
    fb = np.zeros(N, dtype=bool)
    fb[b.rows[b.flagged]] = True
    assert comparison.both == int((fa & fb).sum()) > 0
    assert comparison.challenger_only == int((~fa & fb).sum()) > 0
    assert comparison.champion_only == 0  # same scores, lower threshold
    assert comparison.neither == int((~fa & ~fb).sum())
    assert comparison.agreement == pytest.approx(float((fa == fb).mean()))


def _decision(rows: list[int], scores: list[float], threshold: float) -> ModelDecision:
    s = np.asarray(scores)
    return ModelDecision(
        np.asarray(rows, dtype=np.intp), s, np.flatnonzero(s >= threshold), 0, [], False
    )


def test_score_difference_and_correlation_are_exact_over_batches(
    champion: LoadedModel, shadow: LoadedModel
) -> None:
    """Running sums give the mean absolute difference and the Pearson correlation of all
    events seen, and only rows both models scored are compared."""
    rng = np.random.default_rng(8)
    comparisons = Comparisons()
    xs, ys = [], []
    for _ in range(5):
        x = rng.random(100)
        y = np.clip(x + rng.normal(0, 0.2, 100), 0, 1)
        # the challenger rejected row 7: it is left out of the comparison
        rows_b = [r for r in range(100) if r != 7]
        decoded = DecodedBatch([SourceRecord("t", 0, i, None, None) for i in range(100)], {}, [],
                               lambda i: None)  # type: ignore[arg-type,return-value]  # fmt: skip
        c = comparisons.observe(
            champion, _decision(list(range(100)), x.tolist(), 0.5),
            shadow, _decision(rows_b, y[rows_b].tolist(), 0.5), decoded,
        )  # fmt: skip
        xs.append(np.delete(x, 7))
        ys.append(np.delete(y, 7))
    x_all, y_all = np.concatenate(xs), np.concatenate(ys)
    assert c.n == 5 * 99
    assert c.mean_abs_diff == pytest.approx(float(np.abs(x_all - y_all).mean()))
    assert c.correlation == pytest.approx(float(np.corrcoef(x_all, y_all)[0, 1]))
    assert c.alert_rates() == pytest.approx(((x_all >= 0.5).mean(), (y_all >= 0.5).mean()))


def test_disagreements_are_logged_largest_first_at_a_bounded_rate(
    champion: LoadedModel, shadow: LoadedModel
) -> None:
    """With 3 lines a minute, a batch of 50 disagreements logs the 3 widest; a minute later
    3 more; the rest are counted as suppressed."""
    now = [0.0]
    comparisons = Comparisons(disagreements_per_minute=3, clock_s=lambda: now[0])
    x = np.linspace(0.51, 0.99, 50)  # champion flags all, challenger none
    y = np.linspace(0.49, 0.01, 50)
    decoded = DecodedBatch([SourceRecord("t", 0, i, None, None) for i in range(50)], {}, [],
                           lambda i: None)  # type: ignore[arg-type,return-value]  # fmt: skip
    a, b = _decision(list(range(50)), x.tolist(), 0.5), _decision(list(range(50)), y.tolist(), 0.5)
    with capture_logs() as logs:
        comparisons.observe(champion, a, shadow, b, decoded)
        now[0] = 10.0
        comparisons.observe(champion, a, shadow, b, decoded)  # half a token: nothing
        now[0] = 70.0
        comparisons.observe(champion, a, shadow, b, decoded)
    lines = [e for e in logs if e["event"] == "model_disagreement"]
    assert [e["record"] for e in lines[:3]] == ["t[0]@49", "t[0]@48", "t[0]@47"]
    assert len(lines) == 6
    assert comparisons.suppressed == 150 - 6


class _Exploding:
    """A scorer that fails every run: a broken shadow."""

    def __init__(self, model: LoadedModel) -> None:
        """Stand in for ``model``'s scorer."""
        self.card = model.card

    def score(self, inputs: Any) -> Any:
        """Always fails."""
        msg = "shadow session lost"
        raise ModelError(msg)


def test_failing_shadow_is_dropped_and_the_champion_goes_on(
    champion: LoadedModel, shadow: LoadedModel, records: list[SourceRecord],
    alert_schema: dict[str, Any],
) -> None:  # fmt: skip
    """A shadow whose model is down is dropped with one warning; the champion's output is
    what it is without the shadow, and later batches no longer try it."""
    broken = LoadedModel(_Exploding(shadow), shadow.features, shadow.threshold, shadow.canary)  # type: ignore[arg-type]
    registry = CollectorRegistry()
    monitor = Monitor(score_and_flag, registry)
    watched = _pipeline(ModelSet(champion, shadows=(broken,)), alert_schema, monitor)
    plain = _pipeline(ModelSet(champion), alert_schema, None)
    with capture_logs() as logs:
        for start in range(0, 1500, 500):
            batch = MessageBatch.from_records(records[start : start + 500])
            assert watched.process(batch).messages == plain.process(batch).messages
    drops = [e for e in logs if e["event"] == "shadow_dropped"]
    assert len(drops) == 1 and drops[0]["reason"] == "failed"
    assert monitor.shadows.dropped() == {"fraud/2": "failed"}
    labels = {"model_name": "fraud", "model_version": "2", "reason": "failed"}
    assert registry.get_sample_value("stream_scorer_shadow_dropped_total", labels) == 1


def test_slow_shadow_is_dropped_after_its_strikes(
    champion: LoadedModel, shadow: LoadedModel, records: list[SourceRecord]
) -> None:
    """Over budget for `strikes` batches in a row drops the shadow; a batch within budget
    resets the count."""
    spent = iter([0.5, 0.5, 0.001, 0.5, 0.5, 0.5])  # seconds per shadow run
    now = [0.0]

    def clock() -> float:
        return now[0]

    def slow_score(model: LoadedModel, batch: DecodedBatch) -> ModelDecision:
        now[0] += next(spent)
        return score_and_flag(model, batch)

    runner = ShadowRunner(slow_score, ShadowBudget(max_ratio=2.0, min_budget_ms=5, strikes=3),
                          clock_s=clock)  # fmt: skip
    decoded = _decoded(records[:100], ModelSet(champion, shadows=(shadow,)))
    results = [runner.run(shadow, decoded, champion_s=0.01) for _ in range(7)]
    assert [r is not None for r in results] == [True, True, True, True, True, True, False]
    assert runner.dropped() == {"fraud/2": "slow"}
    runner.retain(())
    assert runner.dropped() == {}


def test_monitor_failure_never_reaches_the_pipeline(
    champion: LoadedModel, records: list[SourceRecord], alert_schema: dict[str, Any]
) -> None:
    """A bug inside monitoring is logged and counted; the batch's output is unchanged."""
    registry = CollectorRegistry()
    monitor = Monitor(score_and_flag, registry)
    assert monitor.drift is not None

    def broken(*args: Any) -> None:
        msg = "bug"
        raise RuntimeError(msg)

    monitor.drift.observe = broken  # type: ignore[method-assign]
    watched = _pipeline(ModelSet(champion), alert_schema, monitor)
    plain = _pipeline(ModelSet(champion), alert_schema, None)
    batch = MessageBatch.from_records(records[:200])
    assert watched.process(batch).messages == plain.process(batch).messages
    assert registry.get_sample_value("stream_scorer_monitoring_errors_total") == 1


def test_shadow_must_be_another_model_version(champion: LoadedModel) -> None:
    """A shadow with the champion's name/version is refused at start-up, naming the key."""
    with pytest.raises(ConfigurationError, match=r"monitoring\.shadows/canary: fraud/1"):
        check_shadows(champion, (champion,))


@pytest.mark.parametrize(
    ("section", "named"),
    [
        ({"window_events": 0, "window_seconds": 0}, "cannot both be 0"),
        ({"psi_warn": 0.3, "psi_alert": 0.2}, "psi_warn"),
        ({"thresholds": "magic"}, "monitoring.thresholds"),
        ({"shadow_strikes": 0}, "monitoring.shadow_strikes"),
    ],
)
def test_bad_monitoring_settings_name_the_key(section: dict[str, Any], named: str) -> None:
    """A bad [monitoring] section is a ConfigurationError that names the key."""
    with pytest.raises(ConfigurationError, match=named):
        load_settings(None, overrides={"monitoring": section}, environ={})


def test_build_monitor_follows_the_settings() -> None:
    """Drift off and no shadows: no monitor at all; otherwise one with the configured window."""
    off = load_settings(None, overrides={"monitoring": {"drift": False}}, environ={})
    assert build_monitor(off, None) is None
    on = load_settings(None, overrides={"monitoring": {"window_events": 123}}, environ={})
    monitor = build_monitor(on, None)
    assert monitor is not None and monitor.drift is not None
    assert monitor.drift.config.window_events == 123


def test_drift_time_cap_skips_whole_batches_and_counts_them(
    champion: LoadedModel, records: list[SourceRecord], alert_schema: dict[str, Any]
) -> None:
    """With no cap every event is counted; with a tiny share only the first batch is, and the
    rest are counted as skipped."""
    for share, counted in ((1.0, N), (1e-12, 500)):
        registry = CollectorRegistry()
        monitor = Monitor(score_and_flag, registry, drift_max_share=share)
        pipeline = _pipeline(ModelSet(champion), alert_schema, monitor)
        for start in range(0, N, 500):
            pipeline.process(MessageBatch.from_records(records[start : start + 500]))
        assert (monitor.drift_counted, monitor.drift_skipped) == (counted, N - counted)
        skipped = registry.get_sample_value("stream_scorer_drift_records_skipped_total")
        assert skipped == N - counted
