"""Stage 3, featurize: model inputs built from events by the card's bindings, and rejects."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stream_scorer.consume import MessageBatch
from stream_scorer.featurize import FeatureBuilder
from stream_scorer.model_card import ModelCard
from stream_scorer.records import Event, SourceRecord

MakeRecord = Callable[..., SourceRecord]
MakeTransaction = Callable[..., dict[str, Any]]
WriteCard = Callable[..., Path]

PER_FIELD_CARD: dict[str, Any] = {
    "name": "probe",
    "version": "3",
    "input_layout": "per_field",
    "inputs": [
        {"name": "amount_in", "field": "amount", "dtype": "float32", "missing": "reject"},
        {"name": "channel", "dtype": "string"},
        {"name": "card_present", "dtype": "float32"},
        {"name": "mcc", "dtype": "int64"},
        {"name": "distance_from_home_km", "dtype": "float32", "missing": "nan"},
        {"name": "seconds_since_last_txn", "dtype": "float64", "missing": "reject"},
        {"name": "event_time", "dtype": "float64"},
    ],
    "output": {"name": "probabilities"},
    "threshold": 0.5,
}

TENSOR_CARD: dict[str, Any] = {
    "name": "probe-tensor",
    "version": "1",
    "input_layout": "tensor",
    "inputs": [{"name": "features", "dtype": "float32"}],
    "feature_order": ["amount", "txn_count_1h", "distance_from_home_km", "is_new_device"],
    "feature_missing": {"distance_from_home_km": "nan"},
    "threshold": 0.5,
}


@pytest.fixture
def per_field(write_card: WriteCard) -> FeatureBuilder:
    """A builder for a per_field card covering every dtype and both missing policies."""
    return FeatureBuilder(ModelCard.load(write_card(PER_FIELD_CARD, "per_field")))


@pytest.fixture
def tensor(write_card: WriteCard) -> FeatureBuilder:
    """A builder for a tensor card with four columns."""
    return FeatureBuilder(ModelCard.load(write_card(TENSOR_CARD, "tensor")))


@pytest.fixture
def events_of(
    make_record: MakeRecord, make_transaction: MakeTransaction
) -> Callable[..., list[Event]]:
    """``events_of(overrides, ...)`` → one Event per overrides dict, offsets 0, 1, 2..."""

    def build(*overrides: dict[str, Any]) -> list[Event]:
        return [
            Event(make_record(b"", offset=i), make_transaction(**o))
            for i, o in enumerate(overrides)
        ]

    return build


def test_per_field_inputs_have_shape_dtype_and_values(
    per_field: FeatureBuilder, events_of: Callable[..., list[Event]]
) -> None:
    """Each per_field input is an [N, 1] array of the card's dtype holding the field's values."""
    time = dt.datetime(2026, 1, 1, 0, 0, 1, 500000, tzinfo=dt.UTC)
    events = events_of(
        {"amount": 10.25, "channel": "ECOM", "card_present": False, "mcc": 5732,
         "event_time": time},
        {"amount": 3.5, "channel": "ATM", "card_present": True, "mcc": 6011,
         "event_time": time + dt.timedelta(milliseconds=7)},
    )  # fmt: skip

    inputs, kept, rejected = per_field.build_inputs(events)

    assert rejected == []
    assert kept == events
    assert list(inputs) == [
        "amount_in", "channel", "card_present", "mcc", "distance_from_home_km",
        "seconds_since_last_txn", "event_time",
    ]  # fmt: skip
    expected_dtypes = {
        "amount_in": np.float32, "channel": np.object_, "card_present": np.float32,
        "mcc": np.int64, "distance_from_home_km": np.float32,
        "seconds_since_last_txn": np.float64, "event_time": np.float64,
    }  # fmt: skip
    for name, array in inputs.items():
        assert array.shape == (2, 1), name
        assert array.dtype == expected_dtypes[name], name
    assert inputs["amount_in"][:, 0].tolist() == [10.25, 3.5]
    assert inputs["mcc"][:, 0].tolist() == [5732, 6011]
    assert inputs["event_time"][:, 0].tolist() == [1_767_225_601_500, 1_767_225_601_507]


def test_booleans_become_zero_and_one(
    per_field: FeatureBuilder, events_of: Callable[..., list[Event]]
) -> None:
    """True and False are fed as 1.0 and 0.0."""
    inputs, _, _ = per_field.build_inputs(
        events_of({"card_present": True}, {"card_present": False})
    )

    assert inputs["card_present"][:, 0].tolist() == [1.0, 0.0]


def test_enums_become_their_symbol_strings(
    per_field: FeatureBuilder, events_of: Callable[..., list[Event]]
) -> None:
    """An enum field is fed as its symbol, a Python str in an object array."""
    inputs, _, _ = per_field.build_inputs(events_of({"channel": "MOTO"}, {"channel": "POS"}))

    assert inputs["channel"][:, 0].tolist() == ["MOTO", "POS"]
    assert all(type(v) is str for v in inputs["channel"][:, 0])


def test_null_with_missing_nan_is_fed_as_nan(
    per_field: FeatureBuilder, events_of: Callable[..., list[Event]]
) -> None:
    """A null where the card says missing 'nan' becomes NaN and the event is kept."""
    inputs, kept, rejected = per_field.build_inputs(
        events_of({"distance_from_home_km": None}, {"distance_from_home_km": 2.0})
    )

    assert rejected == []
    assert len(kept) == 2
    column = inputs["distance_from_home_km"][:, 0]
    assert math.isnan(column[0])
    assert column[1] == 2.0


def test_null_with_missing_reject_drops_the_row_and_keeps_others_aligned(
    per_field: FeatureBuilder, events_of: Callable[..., list[Event]]
) -> None:
    """A null where the card says 'reject' rejects that event; other rows stay aligned."""
    events = events_of(
        {"amount": 1.0, "channel": "POS", "seconds_since_last_txn": 10},
        {"amount": 2.0, "channel": "ECOM", "seconds_since_last_txn": None},
        {"amount": 3.0, "channel": "ATM", "seconds_since_last_txn": 30},
    )

    inputs, kept, rejected = per_field.build_inputs(events)

    assert [e.source.offset for e in kept] == [0, 2]
    assert len(rejected) == 1
    reject = rejected[0]
    assert reject.source is events[1].source
    assert (reject.stage, reject.error_type) == ("featurize", "FeatureError")
    assert "'seconds_since_last_txn' is null" in reject.message
    assert all(array.shape == (2, 1) for array in inputs.values())
    assert inputs["amount_in"][:, 0].tolist() == [1.0, 3.0]
    assert inputs["channel"][:, 0].tolist() == ["POS", "ATM"]
    assert inputs["seconds_since_last_txn"][:, 0].tolist() == [10.0, 30.0]


def test_nan_with_missing_reject_is_rejected(
    per_field: FeatureBuilder, events_of: Callable[..., list[Event]]
) -> None:
    """A NaN double where the card says 'reject' rejects the event, naming field and input."""
    inputs, kept, rejected = per_field.build_inputs(
        events_of({"amount": float("nan")}, {"amount": 5.0})
    )

    assert [e.source.offset for e in kept] == [1]
    assert [r.source.offset for r in rejected] == [0]
    assert "field 'amount' is not finite" in rejected[0].message
    assert "model input 'amount_in'" in rejected[0].message
    assert inputs["amount_in"][:, 0].tolist() == [5.0]


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), 1e300])
def test_infinite_with_missing_reject_is_rejected(
    per_field: FeatureBuilder, events_of: Callable[..., list[Event]], value: float
) -> None:
    """Infinity, and a double that overflows the model's float32 input, reject the event like
    NaN does: the model never saw such a value, so its score would mean nothing."""
    inputs, kept, rejected = per_field.build_inputs(events_of({"amount": 5.0}, {"amount": value}))

    assert [e.source.offset for e in kept] == [0]
    assert [r.source.offset for r in rejected] == [1]
    assert "field 'amount' is not finite" in rejected[0].message
    assert np.isfinite(inputs["amount_in"]).all()


def test_null_string_is_rejected(
    per_field: FeatureBuilder, events_of: Callable[..., list[Event]]
) -> None:
    """A null bound to a string input is rejected: strings have no NaN."""
    _, kept, rejected = per_field.build_inputs(events_of({"channel": None}))

    assert kept == []
    assert [r.stage for r in rejected] == ["featurize"]
    assert "'channel' is null" in rejected[0].message


def test_event_with_two_bad_fields_is_rejected_once(
    per_field: FeatureBuilder, events_of: Callable[..., list[Event]]
) -> None:
    """An event failing two bindings yields one Rejected, with the first reason."""
    _, kept, rejected = per_field.build_inputs(
        events_of({"amount": None, "seconds_since_last_txn": None}, {})
    )

    assert len(kept) == 1
    assert len(rejected) == 1
    assert "'amount' is null" in rejected[0].message


def test_tensor_layout_stacks_columns_in_feature_order(
    tensor: FeatureBuilder, events_of: Callable[..., list[Event]]
) -> None:
    """A tensor input is one [N, F] float array with columns in the card's feature_order."""
    inputs, kept, rejected = tensor.build_inputs(
        events_of(
            {"amount": 10.0, "txn_count_1h": 2, "distance_from_home_km": 1.5,
             "is_new_device": True},
            {"amount": 20.0, "txn_count_1h": 0, "distance_from_home_km": None,
             "is_new_device": False},
        )
    )  # fmt: skip

    assert rejected == []
    assert len(kept) == 2
    assert list(inputs) == ["features"]
    features = inputs["features"]
    assert features.shape == (2, 4)
    assert features.dtype == np.float32
    assert features[0].tolist() == [10.0, 2.0, 1.5, 1.0]
    assert features[1, [0, 1, 3]].tolist() == [20.0, 0.0, 0.0]
    assert math.isnan(features[1, 2])


def test_tensor_layout_drops_rejected_rows(
    tensor: FeatureBuilder, events_of: Callable[..., list[Event]]
) -> None:
    """A rejected event's row is removed from the tensor; the other rows keep their order."""
    inputs, kept, rejected = tensor.build_inputs(
        events_of({"amount": 1.0}, {"amount": None}, {"amount": 3.0})
    )

    assert inputs["features"].shape == (2, 4)
    assert inputs["features"][:, 0].tolist() == [1.0, 3.0]
    assert [e.source.offset for e in kept] == [0, 2]
    assert [r.source.offset for r in rejected] == [1]


@pytest.mark.parametrize(("builder_name", "shape"), [("per_field", (0, 1)), ("tensor", (0, 4))])
def test_empty_batch_gives_empty_inputs(
    builder_name: str, shape: tuple[int, int], request: pytest.FixtureRequest
) -> None:
    """No events give zero-row inputs of the right width and no rejects."""
    builder: FeatureBuilder = request.getfixturevalue(builder_name)

    inputs, kept, rejected = builder.build_inputs([])

    assert (kept, rejected) == ([], [])
    assert all(array.shape == shape for array in inputs.values())


def test_date_fields_are_days_since_epoch(write_card: WriteCard, make_record: MakeRecord) -> None:
    """A date (Avro date logical type) is fed as days since 1970-01-01."""
    card = ModelCard.load(
        write_card(
            {"name": "d", "version": "1", "threshold": 0.5,
             "inputs": [{"name": "day", "dtype": "int64"}]}
        )
    )  # fmt: skip
    event = Event(make_record(b""), {"day": dt.date(1970, 1, 31)})

    inputs, _, _ = FeatureBuilder(card).build_inputs([event])

    assert inputs["day"].tolist() == [[30]]


def test_int64_inputs_keep_large_longs_exact(
    write_card: WriteCard, make_record: MakeRecord
) -> None:
    """An int64 input receives a long field's value exactly, even above 2**53."""
    card = ModelCard.load(
        write_card(
            {"name": "n", "version": "1", "threshold": 0.5,
             "inputs": [{"name": "big", "dtype": "int64"}]}
        )
    )  # fmt: skip
    event = Event(make_record(b""), {"big": 2**53 + 1})

    inputs, _, _ = FeatureBuilder(card).build_inputs([event])

    assert inputs["big"].tolist() == [[2**53 + 1]]


#: Marks a table row whose event must be rejected (with that reason), not fed.
REJECT_NULL = "rejected: is null"
REJECT_NONFINITE = "rejected: is not finite"
NAN = float("nan")


@pytest.mark.parametrize(
    ("dtype", "missing", "value", "expected"),
    [
        ("float32", "reject", None, REJECT_NULL),
        ("float32", "reject", NAN, REJECT_NONFINITE),
        ("float32", "reject", 2.5, 2.5),
        ("float32", "nan", None, NAN),
        ("float32", "nan", NAN, NAN),
        ("float32", "nan", 2.5, 2.5),
        ("float32", {"fill": 0}, None, 0.0),
        ("float32", {"fill": 0}, NAN, REJECT_NONFINITE),
        ("float32", {"fill": 0}, float("inf"), REJECT_NONFINITE),
        ("float32", {"fill": 0}, 2.5, 2.5),
        ("float64", {"fill": -1.5}, None, -1.5),
        ("float64", {"fill": True}, None, 1.0),
        ("float64", {"fill": -1.5}, 7, 7.0),
        ("int64", "reject", None, REJECT_NULL),
        ("int64", {"fill": -1}, None, -1),
        ("int64", {"fill": 3.0}, None, 3),
        ("int64", {"fill": -1}, 2**53 + 1, 2**53 + 1),
        ("string", "reject", None, REJECT_NULL),
        ("string", {"fill": "none"}, None, "none"),
        ("string", {"fill": "none"}, "POS", "POS"),
        ("string", {"fill": ""}, None, ""),
    ],
    ids=repr,
)
def test_null_policy_table(
    dtype: str,
    missing: Any,
    value: Any,
    expected: Any,
    write_card: WriteCard,
    make_record: MakeRecord,
) -> None:
    """Per dtype and policy: a null is rejected, NaN or filled; only nulls are ever filled."""
    card = ModelCard.load(
        write_card(
            {"name": "p", "version": "1", "threshold": 0.5,
             "inputs": [{"name": "x", "dtype": dtype, "missing": missing}]}
        )
    )  # fmt: skip
    plain = "POS" if dtype == "string" else 1
    events = [Event(make_record(b"", offset=i), {"x": v}) for i, v in enumerate([value, plain])]

    inputs, kept, rejected = FeatureBuilder(card).build_inputs(events)

    column = inputs["x"][:, 0].tolist()
    if isinstance(expected, str) and expected.startswith("rejected: "):
        assert [r.source.offset for r in rejected] == [0]
        assert f"field 'x' {expected.removeprefix('rejected: ')}" in rejected[0].message
        assert [e.source.offset for e in kept] == [1]
        assert column == [plain]
        return
    assert rejected == []
    assert [e.source.offset for e in kept] == [0, 1]
    assert column[1] == plain
    if isinstance(expected, float) and math.isnan(expected):
        assert math.isnan(column[0])
    else:
        assert column[0] == expected
        assert type(column[0]) is type(expected)


def test_fills_apply_to_columnar_decoder_columns(
    write_card: WriteCard,
    reader_schema: dict[str, Any],
    make_record: MakeRecord,
    make_transaction: MakeTransaction,
    avro_bytes: Callable[..., bytes],
) -> None:
    """Fills work on the service decoder's own columns (strings, longs, doubles), as offline."""
    from stream_scorer.decode import ColumnarAvroDecoder, Framing  # noqa: PLC0415 - only this test

    card = ModelCard.load(
        write_card(
            {"name": "p", "version": "1", "threshold": 0.5, "inputs": [
                {"name": "device_id", "dtype": "string", "missing": {"fill": "none"}},
                {"name": "seconds_since_last_txn", "dtype": "int64", "missing": {"fill": -1}},
                {"name": "distance_from_home_km", "dtype": "float32", "missing": {"fill": 0}},
            ]}
        )
    )  # fmt: skip
    builder = FeatureBuilder(card)
    rows = [
        make_transaction(device_id=None, seconds_since_last_txn=None, distance_from_home_km=None),
        make_transaction(device_id="d-1", seconds_since_last_txn=60, distance_from_home_km=2.5),
    ]
    records = [make_record(avro_bytes(reader_schema, r), offset=i) for i, r in enumerate(rows)]
    decoder = ColumnarAvroDecoder(Framing(reader_schema, "plain"))

    streamed, kept, rejected = builder.build_batch_inputs(
        decoder.decode(MessageBatch.from_records(records), builder.fields)
    )
    offline, _, _ = builder.build_inputs(
        [Event(rec, r) for rec, r in zip(records, rows, strict=True)]
    )

    assert rejected == []
    assert kept.tolist() == [0, 1]
    assert streamed["device_id"][:, 0].tolist() == ["none", "d-1"]
    assert streamed["seconds_since_last_txn"][:, 0].tolist() == [-1, 60]
    assert streamed["distance_from_home_km"][:, 0].tolist() == [0.0, 2.5]
    for name, array in streamed.items():
        assert array.dtype == offline[name].dtype, name
        assert array.tolist() == offline[name].tolist(), name


def test_tensor_layout_fills_a_column(write_card: WriteCard, make_record: MakeRecord) -> None:
    """A tensor column with a fill policy takes its value for nulls; other columns keep NaN."""
    policies = {"distance_from_home_km": "nan", "txn_count_1h": {"fill": 9}}
    card = ModelCard.load(write_card({**TENSOR_CARD, "feature_missing": policies}, "tensor-fill"))
    fields = {"amount": 1.0, "txn_count_1h": None, "distance_from_home_km": None,
              "is_new_device": True}  # fmt: skip

    inputs, kept, rejected = FeatureBuilder(card).build_inputs([Event(make_record(b""), fields)])

    assert (len(kept), rejected) == (1, [])
    row = inputs["features"][0]
    assert row[[0, 1, 3]].tolist() == [1.0, 9.0, 1.0]
    assert math.isnan(row[2])
