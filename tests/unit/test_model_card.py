"""Model cards: loading model.json, refusing bad cards, binding inputs to the reader schema."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stream_scorer.errors import ConfigurationError
from stream_scorer.model_card import ModelCard, bind_to_schema, field_kind, file_sha256

REPO_ROOT = Path(__file__).resolve().parents[2]
FRAUD_MODEL = REPO_ROOT / "models" / "fraud" / "1"
TEST_MODELS = REPO_ROOT / "tests" / "data" / "models"
WriteCard = Callable[..., Path]

MINIMAL: dict[str, Any] = {
    "name": "probe",
    "version": "2",
    "inputs": [{"name": "amount", "dtype": "float32"}],
    "threshold": 0.5,
}


def _card(**changes: Any) -> dict[str, Any]:
    """MINIMAL with keys replaced (a value of ... deletes the key)."""
    card = {**MINIMAL, **changes}
    return {k: v for k, v in card.items() if v is not ...}


def test_shipped_fraud_card_loads() -> None:
    """models/fraud/1/model.json loads with its per_field bindings, output, threshold and hash."""
    card = ModelCard.load(FRAUD_MODEL)

    assert (card.name, card.version, card.input_layout) == ("fraud", "1", "per_field")
    assert card.input_names == (
        "amount", "merchant_category", "channel", "card_present", "country", "home_country",
        "distance_from_home_km", "txn_count_1h", "seconds_since_last_txn", "is_new_device",
    )  # fmt: skip
    by_input = {b.input: b for b in card.bindings}
    assert by_input["channel"].dtype == "string"
    assert by_input["distance_from_home_km"].missing == "nan"
    assert by_input["amount"].missing == "reject"
    assert all(b.column == -1 for b in card.bindings)
    assert (card.output_name, card.positive_class_index) == ("probabilities", 1)
    assert 0.0 < card.threshold < 1.0
    assert card.model_file == FRAUD_MODEL / "model.onnx"
    assert card.sha256 == file_sha256(card.model_file)
    assert card.raw["training"]["script"] == "models/train_fraud.py"


def test_tensor_card_has_one_column_per_feature() -> None:
    """A tensor card binds each feature_order name to a column of the single input."""
    card = ModelCard.load(TEST_MODELS / "tensor" / "1")

    assert card.input_layout == "tensor"
    assert card.input_names == ("features",)
    assert [(b.field, b.column) for b in card.bindings] == [
        ("amount", 0),
        ("txn_count_1h", 1),
        ("distance_from_home_km", 2),
        ("card_present", 3),
    ]


def test_field_defaults_to_the_input_name(write_card: WriteCard) -> None:
    """A per_field input without 'field' binds the field of its own name, float32, reject."""
    card = ModelCard.load(write_card(_card()))

    (binding,) = card.bindings
    assert (binding.input, binding.field, binding.dtype, binding.missing) == (
        "amount",
        "amount",
        "float32",
        "reject",
    )


@pytest.mark.parametrize("model", ["fraud", "tensor", "zipmap"])
def test_shipped_and_test_models_bind_to_transaction(
    model: str, reader_schema: dict[str, Any]
) -> None:
    """Every bindable model's inputs fit schemas/transaction.avsc."""
    folder = FRAUD_MODEL if model == "fraud" else TEST_MODELS / model / "1"

    bind_to_schema(ModelCard.load(folder), reader_schema)  # raises when it does not bind

    assert ModelCard.load(folder).bindings


def test_unbindable_model_is_refused_naming_input_and_field(
    reader_schema: dict[str, Any],
) -> None:
    """A card input bound to a field the schema lacks is refused, naming both."""
    card = ModelCard.load(TEST_MODELS / "unbindable" / "1")

    with pytest.raises(ConfigurationError) as caught:
        bind_to_schema(card, reader_schema)

    message = str(caught.value)
    assert "input 'not_a_field'" in message
    assert "binds field 'not_a_field'" in message
    assert "Transaction" in message


@pytest.mark.parametrize(
    ("input_spec", "fragments"),
    [
        (
            {"name": "amount_text", "field": "amount", "dtype": "string"},
            ["input 'amount_text' wants string", "field 'amount'", '"double"'],
        ),
        (
            {"name": "currency_num", "field": "currency", "dtype": "float32"},
            ["input 'currency_num' wants float32", "field 'currency'", '"string"'],
        ),
        (
            {"name": "channel_num", "field": "channel", "dtype": "int64"},
            ["input 'channel_num' wants int64", "field 'channel'", '"enum"'],
        ),
        (
            {"name": "flag_text", "field": "card_present", "dtype": "string"},
            ["input 'flag_text' wants string", "field 'card_present'", '"boolean"'],
        ),
    ],
    ids=["string-from-double", "float-from-string", "int-from-enum", "string-from-boolean"],
)
def test_dtype_mismatch_is_refused_naming_input_and_field(
    input_spec: dict[str, Any],
    fragments: list[str],
    write_card: WriteCard,
    reader_schema: dict[str, Any],
) -> None:
    """An input whose dtype cannot take the field's Avro type is refused, naming both."""
    card = ModelCard.load(write_card(_card(inputs=[input_spec])))

    with pytest.raises(ConfigurationError) as caught:
        bind_to_schema(card, reader_schema)

    for fragment in fragments:
        assert fragment in str(caught.value)


def test_nan_for_nullable_field_needs_a_float_dtype(
    write_card: WriteCard, reader_schema: dict[str, Any]
) -> None:
    """missing='nan' on a nullable field is refused for int64, which has no NaN."""
    spec = {"name": "secs", "field": "seconds_since_last_txn", "dtype": "int64", "missing": "nan"}
    card = ModelCard.load(write_card(_card(inputs=[spec])))

    with pytest.raises(ConfigurationError, match="input 'secs' says missing='nan'"):
        bind_to_schema(card, reader_schema)


@pytest.mark.parametrize(
    "spec",
    [
        {"name": "when", "field": "event_time", "dtype": "float64"},
        {"name": "secs", "field": "seconds_since_last_txn", "dtype": "int64"},
        {"name": "new", "field": "is_new_device", "dtype": "int64"},
        {"name": "dist", "field": "distance_from_home_km", "dtype": "float32", "missing": "nan"},
    ],
    ids=["timestamp-as-number", "nullable-long-reject", "boolean-as-int", "nullable-nan"],
)
def test_compatible_bindings_are_accepted(
    spec: dict[str, Any], write_card: WriteCard, reader_schema: dict[str, Any]
) -> None:
    """Timestamps, nullable numbers and booleans bind to numeric inputs without complaint."""
    card = ModelCard.load(write_card(_card(inputs=[spec])))

    bind_to_schema(card, reader_schema)  # raises ConfigurationError when refused

    assert [(b.input, b.field) for b in card.bindings] == [(spec["name"], spec["field"])]


@pytest.mark.parametrize(
    ("avro_type", "expected"),
    [
        ("int", ("number", False)),
        ("long", ("number", False)),
        ("float", ("number", False)),
        ("double", ("number", False)),
        ("boolean", ("boolean", False)),
        ("string", ("string", False)),
        ("bytes", ("other", False)),
        (["null", "double"], ("number", True)),
        (["string", "null"], ("string", True)),
        (["null", "int", "string"], ("other", True)),
        (["int", "string"], ("other", False)),
        ({"type": "enum", "name": "E", "symbols": ["A"]}, ("string", False)),
        ({"type": "long", "logicalType": "timestamp-millis"}, ("number", False)),
        ({"type": "long", "logicalType": "timestamp-micros"}, ("number", False)),
        ({"type": "int", "logicalType": "date"}, ("number", False)),
        (["null", {"type": "long", "logicalType": "timestamp-millis"}], ("number", True)),
        ({"type": "array", "items": "int"}, ("other", False)),
        ({"type": "int"}, ("number", False)),
    ],
    ids=repr,
)
def test_field_kind(avro_type: Any, expected: tuple[str, bool]) -> None:
    """Avro types classify into number, boolean, string or other, and nullability."""
    assert field_kind(avro_type) == expected


@pytest.mark.parametrize(
    ("card", "fragment"),
    [
        (_card(name=...), "'name'"),
        (_card(version=...), "'version'"),
        (_card(threshold=...), "'threshold'"),
        (_card(inputs=...), "'inputs'"),
        (_card(inputs=[{"dtype": "float32"}]), "'name'"),
        (_card(threshold=1.5), "threshold must be in [0, 1], got 1.5"),
        (_card(threshold="high"), "high"),
        (_card(inputs=[{"name": "a", "dtype": "float16"}]), "input 'a': dtype must be one of"),
        (_card(inputs=[{"name": "a", "missing": "zero"}]), "input 'a': missing must be"),
        (_card(input_layout="columns"), "input_layout must be 'per_field' or 'tensor'"),
        (_card(input_layout="tensor"), "'feature_order'"),
        (
            _card(input_layout="tensor", inputs=[{"name": "a"}, {"name": "b"}], feature_order=[]),
            "too many values to unpack",
        ),
        (
            _card(
                input_layout="tensor", feature_order=["amount"], feature_missing={"amount": "drop"}
            ),
            "input 'amount': missing must be",
        ),
    ],
    ids=[
        "no-name",
        "no-version",
        "no-threshold",
        "no-inputs",
        "input-without-name",
        "threshold-range",
        "threshold-type",
        "dtype",
        "missing",
        "layout",
        "tensor-without-feature-order",
        "tensor-two-inputs",
        "feature-missing",
    ],
)
def test_bad_card_is_a_configuration_error(
    card: dict[str, Any], fragment: str, write_card: WriteCard
) -> None:
    """A card with a missing or wrong key raises ConfigurationError naming the card and key."""
    folder = write_card(card)

    with pytest.raises(ConfigurationError) as caught:
        ModelCard.load(folder)

    assert fragment in str(caught.value)
    assert str(folder / "model.json") in str(caught.value)


@pytest.mark.parametrize(
    "raw",
    [
        [],
        _card(output=None),
        _card(output="probabilities"),
        _card(input_layout="tensor", feature_order=["amount"], feature_missing=["amount"]),
    ],
    ids=["top-level-array", "output-null", "output-string", "feature-missing-list"],
)
def test_card_with_wrong_json_shape_is_a_configuration_error(
    raw: Any, write_card: WriteCard
) -> None:
    """A card whose JSON has the wrong shape raises ConfigurationError, not a crash."""
    with pytest.raises(ConfigurationError):
        ModelCard.load(write_card(raw))


def test_card_that_is_not_json_is_a_configuration_error(tmp_path: Path) -> None:
    """A model.json that is not JSON raises ConfigurationError saying so."""
    (tmp_path / "model.json").write_text("{name: fraud", encoding="utf-8")

    with pytest.raises(ConfigurationError, match="is not valid JSON"):
        ModelCard.load(tmp_path)


def test_missing_card_is_a_configuration_error(tmp_path: Path) -> None:
    """A model folder without model.json raises ConfigurationError naming model.path."""
    with pytest.raises(ConfigurationError, match=re.escape("model.path: cannot read model card")):
        ModelCard.load(tmp_path / "nowhere")


def test_file_sha256_matches_hashlib(tmp_path: Path) -> None:
    """file_sha256 is the hex sha256 of the whole file, read in chunks."""
    import hashlib  # noqa: PLC0415 - only this test needs it

    data = bytes(range(256)) * 9000  # > one 1 MiB chunk
    path = tmp_path / "blob"
    path.write_bytes(data)

    assert file_sha256(path) == hashlib.sha256(data).hexdigest()


def test_write_card_fixture_round_trips(write_card: WriteCard) -> None:
    """The raw card is kept on the ModelCard for documentation (training, metrics)."""
    card = ModelCard.load(write_card(_card(metrics={"auc": 0.9})))

    assert card.raw["metrics"] == {"auc": 0.9}
    assert json.loads((card.path / "model.json").read_text())["name"] == "probe"
