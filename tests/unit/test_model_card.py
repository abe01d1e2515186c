"""Model cards: loading model.json, refusing bad cards, binding inputs to the reader schema."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stream_scorer.errors import ConfigurationError
from stream_scorer.model_card import (
    FieldBinding,
    ModelCard,
    bind_to_schema,
    field_kind,
    file_sha256,
)

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


@pytest.mark.parametrize("dtype", ["int64", "string"])
def test_nan_needs_a_float_dtype(dtype: str, write_card: WriteCard) -> None:
    """missing='nan' is refused when the card loads for int64 and string inputs (no NaN)."""
    spec = {"name": "secs", "field": "seconds_since_last_txn", "dtype": dtype, "missing": "nan"}

    with pytest.raises(ConfigurationError, match=f"input 'secs': missing 'nan' needs a float "
                       f"dtype, but the input is {dtype}"):  # fmt: skip
        ModelCard.load(write_card(_card(inputs=[spec])))


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


# Null policies: what each card spelling parses to, per dtype.
@pytest.mark.parametrize(
    ("dtype", "missing", "expected"),
    [
        ("float32", ..., ("reject", None, "reject")),
        ("float32", "reject", ("reject", None, "reject")),
        ("float32", "nan", ("nan", None, "nan")),
        ("float64", "nan", ("nan", None, "nan")),
        ("float32", {"fill": 0}, ("fill", 0, "fill 0")),
        ("float32", {"fill": -1.5}, ("fill", -1.5, "fill -1.5")),
        ("float64", {"fill": True}, ("fill", True, "fill True")),
        ("int64", {"fill": 0}, ("fill", 0, "fill 0")),
        ("int64", {"fill": 2.0}, ("fill", 2.0, "fill 2.0")),
        ("int64", {"fill": 2**63 - 1}, ("fill", 2**63 - 1, f"fill {2**63 - 1}")),
        ("int64", "reject", ("reject", None, "reject")),
        ("string", {"fill": "none"}, ("fill", "none", "fill 'none'")),
        ("string", {"fill": ""}, ("fill", "", "fill ''")),
        ("string", "reject", ("reject", None, "reject")),
    ],
    ids=repr,
)
def test_null_policy_parses(
    dtype: str, missing: Any, expected: tuple[str, Any, str], write_card: WriteCard
) -> None:
    """Each accepted 'missing' spelling gives the binding's policy, fill value and label."""
    spec = {"name": "x", "dtype": dtype, "missing": missing}
    card = ModelCard.load(write_card(_card(inputs=[{k: v for k, v in spec.items() if v != ...}])))

    (binding,) = card.bindings
    assert (binding.missing, binding.fill, binding.policy) == expected
    assert type(binding.fill) is type(expected[1])
    assert card.null_policies() == {"x": expected[2]}


@pytest.mark.parametrize(
    ("dtype", "missing", "fragment"),
    [
        ("string", {"fill": 0}, "dtype string needs a string fill, got 0"),
        ("string", {"fill": None}, "dtype string needs a string fill, got None"),
        (
            "float32",
            {"fill": "none"},
            "dtype float32 needs a numeric fill (number or boolean), got 'none'",
        ),
        (
            "float32",
            {"fill": None},
            "dtype float32 needs a numeric fill (number or boolean), got None",
        ),
        (
            "float32",
            {"fill": [0]},
            "dtype float32 needs a numeric fill (number or boolean), got [0]",
        ),
        ("int64", {"fill": "0"}, "dtype int64 needs a numeric fill (number or boolean), got '0'"),
        ("int64", {"fill": 0.5}, "dtype int64 needs an integral fill, got 0.5"),
        ("int64", {"fill": 2**63}, f"fill {2**63} does not fit in int64"),
        (
            "float32",
            {"fill": 1e39},
            "dtype float32 needs a fill that is finite in float32, got 1e+39",
        ),
        (
            "float64",
            {"fill": float("inf")},
            "dtype float64 needs a fill that is finite in float64, got inf",
        ),
        (
            "float64",
            {"fill": float("nan")},
            "dtype float64 needs a fill that is finite in float64, got nan",
        ),
        ("float32", {"fill": 0, "also": 1}, "missing must be 'reject', 'nan' or {\"fill\": VALUE}"),
        ("float32", {"value": 0}, "missing must be 'reject', 'nan' or {\"fill\": VALUE}"),
        ("float32", "fill", "missing must be 'reject', 'nan' or {\"fill\": VALUE}, got \"fill\""),
        ("float32", None, "missing must be 'reject', 'nan' or {\"fill\": VALUE}, got null"),
        ("string", "nan", "missing 'nan' needs a float dtype, but the input is string"),
        ("int64", "nan", "missing 'nan' needs a float dtype, but the input is int64"),
    ],
    ids=repr,
)
def test_bad_null_policy_is_refused_naming_the_input(
    dtype: str, missing: Any, fragment: str, write_card: WriteCard
) -> None:
    """A fill that does not suit the input's dtype, or an unknown policy, is a named error."""
    folder = write_card(_card(inputs=[{"name": "x", "dtype": dtype, "missing": missing}]))

    with pytest.raises(ConfigurationError) as caught:
        ModelCard.load(folder)

    assert f"input 'x': {fragment}" in str(caught.value)
    assert str(folder / "model.json") in str(caught.value)


def test_tensor_feature_missing_takes_the_same_policies(write_card: WriteCard) -> None:
    """feature_missing accepts reject, nan and fills per column, validated against the dtype."""
    card = ModelCard.load(
        write_card(
            _card(
                input_layout="tensor",
                inputs=[{"name": "features", "dtype": "float32"}],
                feature_order=["amount", "distance_from_home_km", "seconds_since_last_txn"],
                feature_missing={
                    "distance_from_home_km": "nan",
                    "seconds_since_last_txn": {"fill": -1},
                },
            )
        )
    )  # fmt: skip

    assert card.null_policies() == {
        "features[amount]": "reject",
        "features[distance_from_home_km]": "nan",
        "features[seconds_since_last_txn]": "fill -1",
    }
    assert card.bindings[2].fill == -1


def test_tensor_feature_missing_refuses_a_fill_of_the_wrong_type(write_card: WriteCard) -> None:
    """A string fill for a float tensor column is refused, naming the column."""
    raw = _card(
        input_layout="tensor",
        inputs=[{"name": "features", "dtype": "float32"}],
        feature_order=["amount"],
        feature_missing={"amount": {"fill": "zero"}},
    )

    with pytest.raises(
        ConfigurationError, match="input 'amount': dtype float32 needs a numeric fill"
    ):
        ModelCard.load(write_card(raw))


@pytest.mark.parametrize(
    ("missing", "fill"), [("fill", None), ("reject", 0), ("nan", 0.0)], ids=repr
)
def test_binding_keeps_fill_and_missing_consistent(missing: str, fill: Any) -> None:
    """A FieldBinding has a fill value exactly when its policy is 'fill'."""
    with pytest.raises(ValueError, match="a fill value goes with missing='fill'"):
        FieldBinding("x", "x", "float32", missing, fill=fill)  # type: ignore[arg-type]


def test_shipped_fraud_card_names_its_event_fields(reader_schema: dict[str, Any]) -> None:
    """The fraud card names transaction_id and event_time; the key is the message key."""
    card = ModelCard.load(FRAUD_MODEL)

    assert (card.event_id_field, card.event_time_field, card.key_field) == (
        "transaction_id",
        "event_time",
        None,
    )
    assert set(card.null_policies().values()) == {"reject", "nan"}
    bind_to_schema(card, reader_schema)  # raises when a named field does not fit


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (..., (None, None, None)),
        (None, (None, None, None)),
        ({}, (None, None, None)),
        ({"id_field": "a"}, ("a", None, None)),
        ({"id_field": "a", "time_field": "t", "key_field": None}, ("a", "t", None)),
        ({"key_field": "k"}, (None, None, "k")),
    ],
    ids=repr,
)
def test_event_section_parses(
    event: Any, expected: tuple[str | None, ...], write_card: WriteCard
) -> None:
    """The optional event object sets event_id_field, event_time_field and key_field."""
    card = ModelCard.load(write_card(_card(event=event)))

    assert (card.event_id_field, card.event_time_field, card.key_field) == expected


@pytest.mark.parametrize(
    ("event", "fragment"),
    [
        ("transaction_id", "event must be an object with"),
        (["id_field"], "event must be an object with"),
        ({"id": "a"}, "event: unknown key(s) ['id']"),
        ({"id_field": 3}, "event.id_field must be a field name or null, got 3"),
        ({"time_field": ""}, 'event.time_field must be a field name or null, got ""'),
    ],
    ids=repr,
)
def test_bad_event_section_is_refused(event: Any, fragment: str, write_card: WriteCard) -> None:
    """A malformed event object is a configuration error naming the key."""
    with pytest.raises(ConfigurationError) as caught:
        ModelCard.load(write_card(_card(event=event)))

    assert fragment in str(caught.value)


#: A reader schema with one field of each type an event field may or may not have.
EVENT_SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "Probe",
    "fields": [
        {"name": "amount", "type": "double"},
        {"name": "s", "type": "string"},
        {"name": "uuid", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "n_int", "type": "int"},
        {"name": "n_long", "type": "long"},
        {"name": "opt_s", "type": ["null", "string"], "default": None},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "opt_ts", "type": ["null", {"type": "long", "logicalType": "timestamp-millis"}]},
        {"name": "ts_us", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "day", "type": {"type": "int", "logicalType": "date"}},
        {"name": "d", "type": "double"},
        {"name": "flag", "type": "boolean"},
        {"name": "raw", "type": "bytes"},
        {"name": "plan", "type": {"type": "enum", "name": "Plan", "symbols": ["A", "B"]}},
        {"name": "arr", "type": {"type": "array", "items": "int"}},
        {"name": "m", "type": {"type": "map", "values": "string"}},
        {"name": "rec", "type": {"type": "record", "name": "R", "fields": []}},
        {"name": "multi", "type": ["null", "string", "long"]},
    ],
}


@pytest.mark.parametrize(
    ("key", "field"),
    [
        ("id_field", "s"), ("id_field", "uuid"), ("id_field", "n_int"), ("id_field", "n_long"),
        ("id_field", "opt_s"),
        ("time_field", "ts"), ("time_field", "opt_ts"), ("time_field", "n_long"),
        ("time_field", "n_int"),
        ("key_field", "s"), ("key_field", "n_long"), ("key_field", "d"), ("key_field", "flag"),
        ("key_field", "raw"), ("key_field", "plan"), ("key_field", "opt_s"),
    ],
    ids=repr,
)  # fmt: skip
def test_event_fields_that_fit_bind(key: str, field: str, write_card: WriteCard) -> None:
    """Ids (string/int/long), times (epoch ms) and scalar keys bind, nullable or not."""
    card = ModelCard.load(write_card(_card(event={key: field})))

    bind_to_schema(card, EVENT_SCHEMA)  # raises ConfigurationError when refused

    assert field in (card.event_id_field, card.event_time_field, card.key_field)


@pytest.mark.parametrize(
    ("key", "field", "fragment"),
    [
        ("id_field", "nowhere", "names field 'nowhere', which the reader schema Probe"),
        ("time_field", "nowhere", "event.time_field names field 'nowhere'"),
        ("key_field", "nowhere", "event.key_field names field 'nowhere'"),
        ("id_field", "d", "an event id must be a string, int or long"),
        ("id_field", "plan", "an event id must be a string, int or long"),
        ("id_field", "multi", "expected one type, optionally nullable"),
        ("time_field", "ts_us", "an event time must be epoch milliseconds"),
        ("time_field", "day", "an event time must be epoch milliseconds"),
        ("time_field", "s", "an event time must be epoch milliseconds"),
        ("time_field", "d", "an event time must be epoch milliseconds"),
        ("key_field", "arr", "a key must be a scalar"),
        ("key_field", "m", "a key must be a scalar"),
        ("key_field", "rec", "a key must be a scalar"),
    ],
    ids=repr,
)  # fmt: skip
def test_event_fields_that_do_not_fit_are_refused(
    key: str, field: str, fragment: str, write_card: WriteCard
) -> None:
    """An event field missing from the schema or of the wrong type is refused, naming both."""
    card = ModelCard.load(write_card(_card(event={key: field})))

    with pytest.raises(ConfigurationError) as caught:
        bind_to_schema(card, EVENT_SCHEMA)

    assert fragment in str(caught.value)
    assert "model probe/2" in str(caught.value)
