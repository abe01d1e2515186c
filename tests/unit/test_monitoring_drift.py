"""Drift per input and of the score: frozen reference bins, windows, PSI/JS, alarms."""

from __future__ import annotations

import copy
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import pytest
import structlog
from prometheus_client import CollectorRegistry

from stream_scorer.app import load_model
from stream_scorer.consume import MessageBatch
from stream_scorer.decode import ColumnarAvroDecoder, Framing
from stream_scorer.decode.columnar import BytesColumn
from stream_scorer.devtools.generate import TransactionGenerator
from stream_scorer.errors import ConfigurationError
from stream_scorer.model_set import LoadedModel
from stream_scorer.monitoring.drift import DriftConfig, DriftMetrics, DriftMonitor, WindowReport
from stream_scorer.monitoring.reference import (
    SCORE,
    Reference,
    build_reference,
    feature_reference,
    js_distance,
    psi,
)
from stream_scorer.pipeline import ModelDecision, score_and_flag
from stream_scorer.records import DecodedBatch, Event, SourceRecord
from stream_scorer.settings import load_settings

REPO_ROOT = Path(__file__).resolve().parents[2]
FRAUD_MODEL = REPO_ROOT / "models" / "fraud" / "1"
WINDOW = 2000
BATCH = 500


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    """The shipped fraud model (its card carries the reference) as the service loads it."""
    settings = load_settings(None, overrides={"model": {"path": str(FRAUD_MODEL)}}, environ={})
    reader = json.loads((REPO_ROOT / "schemas" / "transaction.avsc").read_text(encoding="utf-8"))
    return load_model(settings, reader)


def _batches(
    model: LoadedModel, events: list[dict[str, Any]], size: int = BATCH
) -> Iterator[tuple[DecodedBatch, ModelDecision]]:
    """Decoded batches of ``events`` and the model's decisions on them."""
    fields = model.features.fields
    for start in range(0, len(events), size):
        chunk = [
            Event(SourceRecord("t", 0, start + i, None, None), e)
            for i, e in enumerate(events[start : start + size])
        ]
        decoded = DecodedBatch.from_events(chunk, fields)
        yield decoded, score_and_flag(model, decoded)


def _run(
    monitor: DriftMonitor, model: LoadedModel, events: list[dict[str, Any]]
) -> list[WindowReport]:
    reports = []
    for decoded, decision in _batches(model, events):
        report = monitor.observe(model, decoded, decision)
        if report is not None:
            reports.append(report)
    return reports


def test_psi_and_js_match_hand_computed_values() -> None:
    """PSI of (0.5, 0.5) → (0.9, 0.1) is 0.4·ln 1.8 + 0.4·ln 5; JS is 0 for equal, 1 for
    disjoint distributions."""
    expected = 0.4 * np.log(1.8) + 0.4 * np.log(5.0)
    assert psi(np.array([5.0, 5.0]), np.array([9.0, 1.0])) == pytest.approx(expected, rel=1e-9)
    assert psi(np.array([1.0, 3.0]), np.array([2.0, 6.0])) == pytest.approx(0.0, abs=1e-12)
    assert js_distance(np.array([1.0, 3.0]), np.array([1.0, 3.0])) == pytest.approx(0.0)
    assert js_distance(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(1.0)


def test_numeric_counts_match_a_per_value_count() -> None:
    """searchsorted/bincount counts equal the bins a value-by-value loop assigns, nulls last."""
    rng = np.random.default_rng(3)
    train = rng.lognormal(3, 1, 20_000).astype(np.float32)
    ref = feature_reference(train, "numeric")
    values = np.append(rng.lognormal(3, 1.5, 999).astype(np.float32), np.nan)
    counts = ref.counts(values, None)
    naive = np.zeros(ref.n_bins + 1, dtype=np.int64)
    for v in values.tolist():
        if np.isnan(v):
            naive[-1] += 1
        else:
            naive[sum(1 for e in ref.edges.tolist() if np.float32(v) >= e)] += 1
    assert counts.tolist() == naive.tolist()
    assert ref.freq.sum() == pytest.approx(1.0)
    assert np.all(np.diff(ref.edges) > 0)


def test_categorical_reference_has_an_other_bucket_and_null_rate() -> None:
    """Categories by frequency; values outside them and never-seen ones share ``other``."""
    train = np.array(["a"] * 60 + ["b"] * 30 + [None] * 10, dtype=object)
    ref = feature_reference(train, "categorical")
    assert ref.categories == ("a", "b")
    assert ref.freq.tolist() == pytest.approx([60 / 90, 30 / 90, 0.0])
    assert ref.null_rate == pytest.approx(0.1)
    live = np.array(["a", "zzz", "b", "zzz", None], dtype=object)
    null = np.array([v is None for v in live])
    assert ref.counts(live, null).tolist() == [1, 1, 2, 1]


def test_reference_survives_the_card_round_trip() -> None:
    """build_reference → JSON → Reference.from_card gives the same bins and shares."""
    rng = np.random.default_rng(5)
    columns = {
        "x": rng.normal(size=12_000).astype(np.float32),
        "c": rng.choice(np.array(["u", "v", "w"], dtype=object), 12_000),
    }
    section = build_reference(columns, {"x": "numeric", "c": "categorical"}, rng.random(12_000))
    parsed = Reference.from_card(json.loads(json.dumps({"reference": section})))
    assert parsed is not None and parsed.score is not None
    assert parsed.inputs["x"].edges.tolist() == section["inputs"]["x"]["edges"]
    assert parsed.inputs["c"].categories == tuple(section["inputs"]["c"]["categories"])
    assert parsed.inputs["x"].chunk_psi is not None  # 12,000 events: two 5,000-event chunks


def test_shipped_card_has_a_reference_for_every_input_and_the_score(model: LoadedModel) -> None:
    """models/fraud/1/model.json carries frozen bins for all ten fields and the score."""
    reference = Reference.from_card(model.card.raw)
    assert reference is not None and reference.score is not None
    assert set(reference.inputs) == set(model.features.fields)
    assert reference.inputs["merchant_category"].kind == "categorical"
    assert reference.inputs["distance_from_home_km"].null_rate > 0.1


@pytest.mark.parametrize(
    ("entry", "named"),
    [
        ({"kind": "numeric", "edges": [2.0, 1.0], "freq": [1, 1, 1]}, "ascending"),
        ({"kind": "numeric", "edges": [1.0], "freq": [1]}, "2 non-negative shares"),
        ({"kind": "histogram", "freq": [1]}, "kind"),
        ({"kind": "categorical", "categories": ["a"], "freq": [1, 1], "null_rate": 2}, "null_rate"),
    ],
)
def test_bad_reference_names_the_entry(entry: dict[str, Any], named: str) -> None:
    """A malformed reference is a ConfigurationError naming the input and the problem."""
    with pytest.raises(ConfigurationError, match=rf"inputs\.amount: .*{named}"):
        Reference.from_card({"reference": {"inputs": {"amount": entry}}})


def test_stationary_stream_raises_no_alarm(model: LoadedModel) -> None:
    """40 windows of fresh events from the training distribution: no alarm at PSI 0.25, and
    the learned mean ± 3σ thresholds alarm on at most 2 % of (window, input) pairs."""
    events, _ = TransactionGenerator(seed=4242, fraud_rate=0.01).generate(40 * WINDOW)
    fixed = _run(DriftMonitor(DriftConfig(window_events=WINDOW, window_seconds=0)), model, events)
    learned = _run(
        DriftMonitor(DriftConfig(window_events=WINDOW, window_seconds=0, thresholds="learned")),
        model,
        events,
    )
    assert len(fixed) == len(learned) == 40
    assert [r.crossed for r in fixed] == [[]] * 40
    pairs = sum(len(r.psi) for r in learned)
    false_alarms = sum(len(r.crossed) for r in learned)
    print(f"learned thresholds: {false_alarms} false alarms in {pairs} (window, input) pairs")
    assert false_alarms / pairs <= 0.02


@pytest.mark.parametrize("thresholds", ["fixed", "learned"])
def test_shift_in_one_input_crosses_within_two_windows(model: LoadedModel, thresholds: str) -> None:
    """amount ×3 from mid-window 5 on: amount alarms within two windows, nothing before, and
    the unshifted categorical inputs stay quiet."""
    events, _ = TransactionGenerator(seed=777, fraud_rate=0.01).generate(12 * WINDOW)
    shift_at = 4 * WINDOW + WINDOW // 2
    events = [
        {**e, "amount": e["amount"] * 3} if i >= shift_at else e for i, e in enumerate(events)
    ]
    config = DriftConfig(window_events=WINDOW, window_seconds=0, thresholds=thresholds)  # type: ignore[arg-type]
    reports = _run(DriftMonitor(config), model, events)
    first = next(i for i, r in enumerate(reports) if "amount" in r.crossed)
    assert all("amount" not in r.crossed for r in reports[:4])
    assert first <= 5  # window 4 holds the shift's start; 5 is the first wholly shifted one
    for name in ("merchant_category", "channel", "country"):
        assert all(name not in r.crossed for r in reports), name


def test_one_warning_per_crossing_window(model: LoadedModel) -> None:
    """Every window with a crossing logs exactly one drift_alarm warning; quiet windows none."""
    events, _ = TransactionGenerator(seed=778, fraud_rate=0.01).generate(4 * WINDOW)
    shifted = [{**e, "amount": e["amount"] * 5} for e in events[2 * WINDOW :]]
    monitor = DriftMonitor(DriftConfig(window_events=WINDOW, window_seconds=0))
    with structlog.testing.capture_logs() as logs:
        reports = _run(monitor, model, events[: 2 * WINDOW] + shifted)
    alarms = [e for e in logs if e["event"] == "drift_alarm"]
    assert [bool(r.crossed) for r in reports] == [False, False, True, True]
    assert len(alarms) == 2
    assert all(e["log_level"] == "warning" and "amount" in e["crossed"] for e in alarms)


def test_time_window_closes_after_its_seconds_once_it_has_enough_events(
    model: LoadedModel,
) -> None:
    """A time window does not close early, nor with fewer than min_window_events."""
    now = [0.0]
    config = DriftConfig(window_events=0, window_seconds=60, min_window_events=1000)
    monitor = DriftMonitor(config, clock_s=lambda: now[0])
    events, _ = TransactionGenerator(seed=779, fraud_rate=0.01).generate(2000)
    batches = list(_batches(model, events))
    assert monitor.observe(model, *batches[0]) is None  # 500 events, t = 0
    now[0] = 61.0
    assert monitor.observe(model, *batches[1]) is not None  # 1000 events, t = 61: closes
    now[0] = 200.0
    assert monitor.observe(model, *batches[2]) is None  # 500 events only: keeps collecting
    report = monitor.observe(model, *batches[3])
    assert report is not None and report.events == 1000


def test_null_and_unseen_category_rates_are_measured(model: LoadedModel) -> None:
    """Nulls in a nullable input and categories never seen in training show in the window."""
    events, _ = TransactionGenerator(seed=780, fraud_rate=0.01).generate(WINDOW)
    changed = [
        {**e, "distance_from_home_km": None, "merchant_category": "teleportation"}
        if i % 4 == 0
        else e
        for i, e in enumerate(events)
    ]
    monitor = DriftMonitor(DriftConfig(window_events=WINDOW, window_seconds=0))
    (report,) = _run(monitor, model, changed)
    reference = Reference.from_card(model.card.raw)
    assert reference is not None
    base_null = reference.inputs["distance_from_home_km"].null_rate
    null_rate = report.null_rate["distance_from_home_km"]
    assert null_rate == pytest.approx(0.25 + 0.75 * base_null, abs=0.03)
    assert report.unseen_rate["merchant_category"] == pytest.approx(0.25, abs=0.001)
    assert "merchant_category" in report.crossed


def test_gauges_are_labelled_and_forgotten_with_the_model(model: LoadedModel) -> None:
    """Gauges carry model, version and input; a retired version's series are removed."""
    registry = CollectorRegistry()
    monitor = DriftMonitor(
        DriftConfig(window_events=WINDOW, window_seconds=0), DriftMetrics(registry)
    )
    events, _ = TransactionGenerator(seed=781, fraud_rate=0.01).generate(WINDOW)
    (report,) = _run(monitor, model, events)
    labels = {"model_name": "fraud", "model_version": "1"}
    value = registry.get_sample_value("stream_scorer_drift_psi", {**labels, "input": "amount"})
    assert value == pytest.approx(report.psi["amount"])
    score = registry.get_sample_value("stream_scorer_drift_psi", {**labels, "input": SCORE})
    assert score == pytest.approx(report.psi[SCORE])
    assert registry.get_sample_value("stream_scorer_drift_windows_total", labels) == 1
    rate = registry.get_sample_value("stream_scorer_drift_alert_ratio", labels)
    assert rate == pytest.approx(report.alert_rate)
    monitor.retain([])
    assert (
        registry.get_sample_value("stream_scorer_drift_psi", {**labels, "input": "amount"}) is None
    )


def test_card_without_reference_turns_drift_off(model: LoadedModel) -> None:
    """A model whose card has no reference is scored as usual and never reported on."""
    raw = copy.deepcopy(dict(model.card.raw))
    del raw["reference"]
    card = type(model.card)(**{**_fields(model.card), "raw": raw, "version": "no-ref"})
    bare = type(model)(
        scorer=_with_card(model, card), features=model.features, threshold=0.5, canary=model.canary
    )
    monitor = DriftMonitor(DriftConfig(window_events=BATCH, window_seconds=0))
    events, _ = TransactionGenerator(seed=782, fraud_rate=0.01).generate(BATCH)
    decoded, decision = next(_batches(model, events))
    assert monitor.observe(bare, decoded, decision) is None
    assert monitor.reports == []


def _fields(card: Any) -> dict[str, Any]:
    return {name: getattr(card, name) for name in card.__dataclass_fields__}


def _with_card(model: LoadedModel, card: Any) -> Any:
    scorer = copy.copy(model.scorer)
    scorer.card = card
    return scorer


def test_string_columns_binned_by_bytes_match_binning_by_value() -> None:
    """Prefixes, longer values, trailing NULs, multi-byte UTF-8, empty and null strings land
    in the same bins by bytes as by Python value."""
    schema = {
        "type": "record",
        "name": "R",
        "fields": [{"name": "c", "type": ["null", "string"]}],
    }
    categories = ["grocery", "gro", "électronique", "a\x00", "", "x" * 17]
    ref = feature_reference(np.array(categories * 10, dtype=object), "categorical")
    live = [*categories, "groceryX", "grocer", "a", "électroniqu", None, "x" * 16, "x" * 18, "zz"]
    values = live * 50
    parsed = fastavro.parse_schema(schema)
    records = []
    for i, v in enumerate(values):
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed, {"c": v})
        records.append(SourceRecord("t", 0, i, None, buf.getvalue()))
    decoded = ColumnarAvroDecoder(Framing(schema, "plain")).decode(
        MessageBatch.from_records(records), ["c"]
    )
    column = decoded.columns["c"]
    assert isinstance(column, BytesColumn)
    by_bytes = ref.counts_binned(ref.by_bytes.bins(column), column.null)
    by_value = ref.counts(column.to_objects(), column.null)
    assert by_bytes.tolist() == by_value.tolist()
    assert by_bytes[-1] == 50  # the nulls
    assert by_bytes[-2] == 50 * 7  # the seven values the card does not list: other
