"""Canary routing by key hash: its share, stickiness, and the alerts it publishes."""

from __future__ import annotations

import io
import json
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import pytest

from stream_scorer.consume import MessageBatch
from stream_scorer.decode import ColumnarAvroDecoder, Framing
from stream_scorer.devtools.generate import TransactionGenerator
from stream_scorer.encode import AlertEncoder, EventFields
from stream_scorer.errors import ConfigurationError
from stream_scorer.model_set import LiveModels, ModelSet, load_model
from stream_scorer.monitoring.canary import in_canary, routed
from stream_scorer.pipeline import Pipeline
from stream_scorer.records import SourceRecord
from stream_scorer.settings import load_settings

REPO_ROOT = Path(__file__).resolve().parents[2]
FRAUD_MODEL = REPO_ROOT / "models" / "fraud" / "1"
READER = json.loads((REPO_ROOT / "schemas" / "transaction.avsc").read_text(encoding="utf-8"))
ALERT = json.loads((REPO_ROOT / "schemas" / "alert.avsc").read_text(encoding="utf-8"))


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.3])
def test_canary_share_is_within_one_point_over_50000_events_and_sticky(fraction: float) -> None:
    """Over 50,000 generated events keyed by card id, the canary's share is within ±1 pp of
    the configured fraction, and every key is routed the same way in every batch."""
    events, _ = TransactionGenerator(seed=12, fraud_rate=0.01).generate(50_000)
    records = [SourceRecord("t", 0, i, e["card_id"].encode(), None) for i, e in enumerate(events)]
    decided_by: dict[bytes, set[bool]] = defaultdict(set)
    canary = 0
    for start in range(0, len(records), 1000):
        batch = records[start : start + 1000]
        mask = routed(batch, fraction)
        canary += int(mask.sum())
        for record, to_canary in zip(batch, mask.tolist(), strict=True):
            assert record.key is not None
            decided_by[record.key].add(to_canary)
    share = canary / len(records)
    print(f"fraction {fraction}: canary share {share:.4f} over {len(decided_by)} keys")
    assert abs(share - fraction) <= 0.01
    assert all(len(models) == 1 for models in decided_by.values())


def test_events_without_a_key_stay_with_the_champion() -> None:
    """A null key is never routed to the canary, even at fraction 1."""
    assert routed([SourceRecord("t", 0, 0, None, None)], 1.0).tolist() == [False]
    assert in_canary(b"card-1", 1.0) and not in_canary(None, 1.0)


def _variant(tmp: Path, version: str, threshold: float) -> Path:
    folder = tmp / "fraud" / version
    folder.mkdir(parents=True)
    shutil.copy(FRAUD_MODEL / "model.onnx", folder / "model.onnx")
    card = json.loads((FRAUD_MODEL / "model.json").read_text(encoding="utf-8"))
    card.update(version=version, threshold=threshold)
    (folder / "model.json").write_text(json.dumps(card), encoding="utf-8")
    return folder


def _pipeline(models: ModelSet) -> Pipeline:
    return Pipeline(
        ColumnarAvroDecoder(Framing(READER, "plain")),
        LiveModels(models),
        AlertEncoder(ALERT, b"", "t", EventFields("transaction_id", "event_time")),
        "alerts",
        "dlq",
        "t",
        clock_ms=lambda: 1_767_225_600_000,
    )


def _alerts(messages: list[Any]) -> list[dict[str, Any]]:
    return [
        fastavro.schemaless_reader(io.BytesIO(value), fastavro.parse_schema(ALERT))  # type: ignore[misc]
        for topic, _, value, _ in messages
        if topic == "alerts"
    ]


def test_canary_decides_and_publishes_its_share_labelled_with_its_version(
    tmp_path: Path,
) -> None:
    """Alerts of canary keys come from the canary (its version and threshold), the others
    are exactly the champion's alerts on those keys, and every event is accounted for once."""
    champion = load_model(FRAUD_MODEL, READER)
    canary = load_model(_variant(tmp_path, "2", 0.2), READER)
    events, _ = TransactionGenerator(seed=13, fraud_rate=0.1).generate(3000)
    parsed = fastavro.parse_schema(READER)
    records = []
    for i, event in enumerate(events):
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed, event)
        records.append(SourceRecord("in", 0, i, event["card_id"].encode(), buf.getvalue()))
    batch = MessageBatch.from_records(records)
    with_canary = _pipeline(ModelSet(champion, canary=canary, canary_fraction=0.3)).process(batch)
    alone = _pipeline(ModelSet(champion)).process(batch)
    result = with_canary.result
    assert result.flagged + result.unflagged + result.dead_lettered == len(records)
    assert set(result.scored_by) == {"fraud/1", "fraud/2"}
    by_key = {r.offset: r.key for r in records}
    alerts = _alerts(with_canary.messages)
    canary_alerts = [a for a in alerts if in_canary(by_key[a["source_offset"]], 0.3)]
    champion_alerts = [a for a in alerts if not in_canary(by_key[a["source_offset"]], 0.3)]
    assert canary_alerts and champion_alerts
    assert {(a["model_version"], a["threshold"]) for a in canary_alerts} == {("2", 0.2)}
    assert {a["model_version"] for a in champion_alerts} == {"1"}
    expected = [
        a for a in _alerts(alone.messages) if not in_canary(by_key[a["source_offset"]], 0.3)
    ]
    assert champion_alerts == expected
    scores = np.array([a["score"] for a in canary_alerts])
    assert np.all(scores >= 0.2)
    assert result.scored_by["fraud/2"] == pytest.approx(0.3 * len(records), abs=0.05 * len(records))


def test_canary_settings_go_together() -> None:
    """A canary without a fraction (or a fraction without a canary) is a ConfigurationError."""
    with pytest.raises(ConfigurationError, match="canary_fraction"):
        load_settings(None, overrides={"monitoring": {"canary_fraction": 0.1}}, environ={})
    with pytest.raises(ConfigurationError, match="canary_fraction"):
        load_settings(None, overrides={"monitoring": {"canary": "models/fraud/1"}}, environ={})
    with pytest.raises(ConfigurationError, match=r"monitoring\.canary_fraction"):
        load_settings(None, overrides={"monitoring": {"canary_fraction": 1.5}}, environ={})
