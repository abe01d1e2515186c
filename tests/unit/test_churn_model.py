"""The churn example: its card, its generator, and its scores through the service's own path.

The reference is a direct onnxruntime run of the same events with the card's null policies
applied by hand, and ``score-file`` on a container file written by a second Avro
implementation (the ``avro`` package), so neither fastavro nor featurize checks itself.
"""

from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path
from typing import Any

import avro.datafile
import avro.io
import avro.schema
import fastavro
import numpy as np
import onnxruntime as ort
import pytest
from numpy.typing import NDArray

from stream_scorer.app import build_decoder, load_model, load_schema
from stream_scorer.consume import MessageBatch
from stream_scorer.devtools.churn import ChurnGenerator
from stream_scorer.model_card import ModelCard, bind_to_schema
from stream_scorer.offline import score_file
from stream_scorer.pipeline import LoadedModel
from stream_scorer.records import SourceRecord
from stream_scorer.settings import Settings, load_settings

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG = REPO_ROOT / "examples" / "churn.toml"
SCHEMA_PATH = REPO_ROOT / "schemas" / "churn_event.avsc"
#: Events scored in the equality tests: enough for every null policy to occur many times.
N_EVENTS = 3_000
#: The churn card's inputs, in graph order, and how a null is fed to each.
NULLS: dict[str, Any] = {"contract": "none", "data_usage_gb": 0.0, "last_plan_change_days": np.nan}
STRINGS = ("plan", "contract")


@pytest.fixture(scope="module")
def reader() -> dict[str, Any]:
    """schemas/churn_event.avsc."""
    return load_schema(SCHEMA_PATH, "schema.reader")


@pytest.fixture(scope="module")
def settings() -> Settings:
    """examples/churn.toml as the service reads it, one onnxruntime thread (exact sums)."""
    overrides = {"model": {"intra_op_threads": 1}}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO_ROOT)  # the example's paths are relative to the repository root
        loaded = load_settings(CONFIG, overrides, environ={})
    return loaded.model_copy(
        update={
            "model": loaded.model.model_copy(update={"path": REPO_ROOT / loaded.model.path}),
        }
    )


@pytest.fixture(scope="module")
def model(settings: Settings, reader: dict[str, Any]) -> LoadedModel:
    """models/churn/1 loaded through the service's loader (hash check, binding, warm-up)."""
    return load_model(settings, reader)


@pytest.fixture(scope="module")
def events() -> list[dict[str, Any]]:
    """Generated snapshots, with nulls in every nullable field."""
    generated, _ = ChurnGenerator(seed=515).generate(N_EVENTS)
    return generated


def direct_scores(events: list[dict[str, Any]]) -> NDArray[np.float32]:
    """The churn probability of each event from onnxruntime alone, nulls fed by hand."""
    feeds: dict[str, NDArray[Any]] = {}
    for name in ModelCard.load(REPO_ROOT / "models" / "churn" / "1").input_names:
        values = [NULLS[name] if e[name] is None else e[name] for e in events]
        if name in STRINGS:
            feeds[name] = np.array(values, dtype=object).reshape(-1, 1)
        else:
            feeds[name] = np.array(values, dtype=np.float32).reshape(-1, 1)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        str(REPO_ROOT / "models" / "churn" / "1" / "model.onnx"), options
    )
    probabilities = session.run(["probabilities"], feeds)[0]
    return np.asarray(probabilities[:, 1], dtype=np.float32)


def test_example_config_binds_the_churn_card(settings: Settings, reader: dict[str, Any]) -> None:
    """examples/churn.toml points at the churn schema and card, which bind with all three
    null policies and the card's event fields."""
    card = ModelCard.load(settings.model.path)

    bind_to_schema(card, reader)  # raises ConfigurationError when it does not bind

    assert (settings.topics.input, settings.topics.alerts, settings.topics.dead_letter) == (
        "customer-usage",
        "churn-alerts",
        "customer-usage-dlq",
    )
    assert reader["name"] == "CustomerUsage"
    assert (card.name, card.version) == ("churn", "1")
    assert card.null_policies() == {
        "plan": "reject",
        "contract": "fill 'none'",
        "tenure_months": "reject",
        "monthly_charges": "reject",
        "data_usage_gb": "fill 0",
        "support_calls_30d": "reject",
        "has_autopay": "reject",
        "last_plan_change_days": "nan",
    }
    assert (card.event_id_field, card.event_time_field, card.key_field) == (
        "event_id",
        "event_time",
        "customer_id",
    )
    assert card.raw["training"]["script"] == "models/train_churn.py"


def test_generator_is_seeded_and_conforms_to_the_schema(reader: dict[str, Any]) -> None:
    """Same seed, same events and labels; every event is valid Avro of the churn schema and
    each nullable, array and map field takes both empty and non-empty values."""
    first, labels = ChurnGenerator(seed=3).generate(2_000)
    again, labels_again = ChurnGenerator(seed=3).generate(2_000)

    assert first == again
    assert np.array_equal(labels, labels_again)
    assert 0.02 < labels.mean() < 0.15
    parsed = fastavro.parse_schema(reader)
    assert all(fastavro.validate(e, parsed, raise_errors=False) for e in first)
    assert len({e["event_id"] for e in first}) == len(first)
    for name in ("contract", "data_usage_gb", "last_plan_change_days"):
        nulls = sum(e[name] is None for e in first)
        assert 0 < nulls < len(first), name
    assert any(e["dropped_call_minutes"] for e in first)
    assert any(not e["dropped_call_minutes"] for e in first)
    assert any(e["device_attrs"] for e in first)
    assert any(not e["device_attrs"] for e in first)


@pytest.mark.parametrize("decoder_kind", ["columnar", "record"])
def test_stream_scores_equal_onnxruntime_with_the_fills_applied(
    decoder_kind: str,
    settings: Settings,
    reader: dict[str, Any],
    model: LoadedModel,
    events: list[dict[str, Any]],
) -> None:
    """Decoded from Avro bytes (array and map skipped), featurized by the card and scored,
    every event's score equals onnxruntime's on the same events with nulls fed by hand."""
    plain = settings.model_copy(
        update={
            "schema_": settings.schema_.model_copy(
                update={"wire_format": "plain", "decoder": decoder_kind}
            )
        }
    )
    decoder = build_decoder(plain, reader, None)
    writer = fastavro.parse_schema(reader)
    records = []
    for offset, event in enumerate(events):
        body = io.BytesIO()
        fastavro.schemaless_writer(body, writer, event)
        records.append(SourceRecord("customer-usage", 0, offset, None, body.getvalue()))

    batch = decoder.decode(MessageBatch.from_records(records), model.features.fields)
    inputs, rows, rejected = model.features.build_batch_inputs(batch)
    scores = model.scorer.score(inputs)

    assert (batch.rejected, rejected) == ([], [])
    assert rows.tolist() == list(range(N_EVENTS))
    assert inputs["contract"][:, 0].tolist().count("none") == sum(
        e["contract"] is None for e in events
    )
    assert np.array_equal(scores, direct_scores(events))
    assert 0 < int(np.sum(scores >= model.threshold)) < N_EVENTS // 5


def write_with_avro_package(path: Path, events: list[dict[str, Any]]) -> None:
    """An object container file of ``events`` written by the ``avro`` package (not fastavro)."""
    schema = avro.schema.parse(SCHEMA_PATH.read_text(encoding="utf-8"))
    with path.open("wb") as fh:
        writer = avro.datafile.DataFileWriter(fh, avro.io.DatumWriter(), schema)
        for event in events:
            # The avro package takes timestamp-millis as an aware datetime only.
            when = dt.datetime.fromtimestamp(event["event_time"] / 1000, tz=dt.UTC)
            writer.append({**event, "event_time": when})
        writer.flush()
        writer.close()


def test_score_file_on_another_implementations_container_equals_onnxruntime(
    tmp_path: Path, settings: Settings, model: LoadedModel, events: list[dict[str, Any]]
) -> None:
    """score-file on churn events written by the avro package gives, per event, the score of
    a direct onnxruntime run with the fills applied, and flags by the card's threshold."""
    container = tmp_path / "usage.avro"
    write_with_avro_package(container, events)
    out = tmp_path / "scores.jsonl"

    counts = score_file(container, model, settings.batch.max_size, out)

    results = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    expected = direct_scores(events)
    assert counts == {
        "events": N_EVENTS,
        "flagged": int(np.sum(expected >= model.threshold)),
        "errors": 0,
    }
    assert [r["index"] for r in results] == list(range(N_EVENTS))
    assert np.array_equal(np.array([r["score"] for r in results], dtype=np.float32), expected)
    assert [r["flagged"] for r in results] == (expected >= model.threshold).tolist()
    assert {(r["model_name"], r["model_version"], r["threshold"]) for r in results} == {
        ("churn", "1", model.threshold)
    }
