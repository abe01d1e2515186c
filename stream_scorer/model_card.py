"""The model card (``models/<name>/<version>/model.json``) and its binding to the reader schema.

A model folder holds ``model.onnx`` and ``model.json``. The card names the model and version,
says how each ONNX input is fed from event fields, which output holds the probability, the
threshold, the training data and the holdout metrics, and the sha256 of ``model.onnx``.

Two input layouts are supported:

* ``per_field`` (preferred): one ONNX input of shape ``[N, 1]`` per event field, named in the
  card; the model's own preprocessing (encoders, imputers) lives in the graph.
* ``tensor``: one float input ``[N, F]`` whose column order is the card's ``feature_order``.

Each input says what a null means (``missing``; ``feature_missing`` per column for ``tensor``):

* ``"reject"`` (the default): a null, NaN or infinite value makes the event a dead letter.
* ``"nan"`` (float inputs only): a null is passed as NaN, for the graph's own imputer.
* ``{"fill": VALUE}``: a null becomes ``VALUE``, exactly as the training script filled it
  (``{"fill": "none"}`` for a string, ``{"fill": 0}`` for a number). Only nulls are filled: a
  NaN or infinite value in a float input is still rejected, as with ``"reject"``.

An optional ``decision`` section (and ``output.type``) declares the output type and named bands
over the score; :mod:`stream_scorer.decision` parses it. Without it, ``threshold`` is the plain
policy (``PASS`` below, ``FLAG`` at or above, published).

An optional ``event`` object names the fields that identify an event:
``{"id_field": "...", "time_field": "...", "key_field": null}`` (each may be omitted or null).

:func:`bind_to_schema` checks every input against the reader schema at start-up, so a model that
cannot be fed is refused before it serves, with a message naming the input and the field.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from stream_scorer.decision import DecisionPolicy, parse_policy, threshold_policy
from stream_scorer.errors import ConfigurationError

__all__ = [
    "FieldBinding",
    "FillValue",
    "ModelCard",
    "bind_to_schema",
    "field_kind",
    "file_sha256",
]

InputDtype = Literal["float32", "float64", "int64", "string"]
Missing = Literal["reject", "nan", "fill"]
#: What a ``{"fill": VALUE}`` policy may put in place of a null.
FillValue = str | int | float | bool
FieldKind = Literal["number", "boolean", "string", "other"]

#: The dtypes a card may give an input, mapped to what each accepts from Avro.
ACCEPTED_KINDS: dict[str, tuple[FieldKind, ...]] = {
    "float32": ("number", "boolean"),
    "float64": ("number", "boolean"),
    "int64": ("number", "boolean"),
    "string": ("string",),
}
#: Avro primitive types that bind to numeric model inputs.
NUMERIC_AVRO = frozenset({"int", "long", "float", "double"})
#: Bytes read per step when hashing a model file.
HASH_CHUNK = 1 << 20
#: Range of an int64 fill value.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
#: Card dtypes that can hold NaN (``missing: "nan"``).
FLOAT_DTYPES = frozenset({"float32", "float64"})
#: Keys of the card's optional ``event`` object, mapped to the ModelCard attribute they set.
EVENT_KEYS = {
    "id_field": "event_id_field",
    "time_field": "event_time_field",
    "key_field": "key_field",
}
#: Avro primitives an event id may have (any logical type on them, e.g. ``uuid``, is fine).
ID_AVRO = frozenset({"string", "int", "long"})
#: Avro types a Kafka key field may have: any scalar.
KEY_AVRO = frozenset(
    {"string", "bytes", "int", "long", "float", "double", "boolean", "enum", "fixed"}
)


@dataclass(frozen=True, slots=True)
class FieldBinding:
    """How one model input column is fed: from which field, as which dtype, nulls how.

    ``missing`` is ``"reject"``, ``"nan"`` or ``"fill"``; with ``"fill"``, :attr:`fill` holds
    the value a null becomes (it is None for the other two policies).
    """

    input: str
    field: str
    dtype: InputDtype
    missing: Missing = "reject"
    #: Column within a ``tensor`` input; -1 for ``per_field`` inputs.
    column: int = -1
    #: The value a null becomes when ``missing == "fill"``.
    fill: FillValue | None = None

    def __post_init__(self) -> None:
        """Keep ``fill`` and ``missing`` consistent, whoever builds the binding."""
        if (self.missing == "fill") != (self.fill is not None):
            msg = f"input {self.input!r}: a fill value goes with missing='fill' and only with it"
            raise ValueError(msg)

    @property
    def policy(self) -> str:
        """The null policy as a person reads it: ``reject``, ``nan`` or ``fill 'none'``."""
        return f"fill {self.fill!r}" if self.missing == "fill" else self.missing


@dataclass(frozen=True, slots=True)
class ModelCard:
    """The parsed ``model.json`` of one model version."""

    path: Path
    name: str
    version: str
    input_layout: Literal["per_field", "tensor"]
    bindings: tuple[FieldBinding, ...]
    output_name: str | None
    positive_class_index: int
    threshold: float
    sha256: str | None
    raw: Mapping[str, Any] = field(repr=False, default_factory=dict)
    #: Field holding the event's id (the alert's ``event_id``); None when the card names none.
    event_id_field: str | None = None
    #: Field holding the event time (epoch ms or timestamp-millis); None when unnamed.
    event_time_field: str | None = None
    #: Field standing for the Kafka key; None means the message key itself.
    key_field: str | None = None
    #: sha256 of the card file's bytes as read, so a signature can be checked against them.
    card_sha256: str | None = None
    #: The card's output type and decision bands (:mod:`stream_scorer.decision`); a card
    #: without a ``decision`` section has the plain policy of its ``threshold``.
    decision: DecisionPolicy | None = None

    @property
    def policy(self) -> DecisionPolicy:
        """The decision policy: the card's, or the plain policy of :attr:`threshold`."""
        return self.decision if self.decision is not None else threshold_policy(self.threshold)

    @property
    def model_file(self) -> Path:
        """The ONNX file next to the card."""
        return self.path / "model.onnx"

    @property
    def input_names(self) -> tuple[str, ...]:
        """ONNX input names the card expects, in order, without repeats."""
        return tuple(dict.fromkeys(b.input for b in self.bindings))

    def null_policies(self) -> dict[str, str]:
        """The null policy in force per input, for ``config check`` to print.

        Returns:
            ``{input: policy}`` for ``per_field`` cards and ``{"input[field]": policy}`` for
            the columns of a ``tensor`` card, in card order; policies read ``reject``, ``nan``
            or ``fill 'none'`` / ``fill 0``.
        """
        return {
            (b.input if b.column < 0 else f"{b.input}[{b.field}]"): b.policy for b in self.bindings
        }

    @classmethod
    def load(cls, folder: Path) -> ModelCard:
        """Read and check ``folder/model.json``.

        Raises:
            ConfigurationError: Missing file, invalid JSON, or a missing or wrong key (named).
        """
        card_file = folder / "model.json"
        try:
            data = card_file.read_bytes()
            raw = json.loads(data.decode("utf-8"))
        except OSError as exc:
            msg = f"model.path: cannot read model card {card_file}: {exc}"
            raise ConfigurationError(msg) from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            msg = f"model card {card_file} is not valid JSON: {exc}"
            raise ConfigurationError(msg) from exc
        try:
            if not isinstance(raw, dict):
                msg = f"expected a JSON object, got {type(raw).__name__}"
                raise TypeError(msg)
            card = cls._from_raw(folder, raw)
            return replace(card, card_sha256=hashlib.sha256(data).hexdigest())
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            msg = f"model card {card_file}: {exc}"
            raise ConfigurationError(msg) from exc

    @classmethod
    def _from_raw(cls, folder: Path, raw: Mapping[str, Any]) -> ModelCard:
        layout = raw.get("input_layout", "per_field")
        if layout not in ("per_field", "tensor"):
            msg = f"input_layout must be 'per_field' or 'tensor', got {layout!r}"
            raise ValueError(msg)
        bindings: list[FieldBinding] = []
        if layout == "per_field":
            for spec in raw["inputs"]:
                dtype = _dtype(spec.get("dtype", "float32"), spec["name"])
                missing, fill = _missing(spec.get("missing", "reject"), spec["name"], dtype)
                bindings.append(
                    FieldBinding(
                        input=str(spec["name"]),
                        field=str(spec.get("field", spec["name"])),
                        dtype=dtype,
                        missing=missing,
                        fill=fill,
                    )
                )
        else:
            (tensor,) = raw["inputs"]
            dtype = _dtype(tensor.get("dtype", "float32"), tensor["name"])
            policies = raw.get("feature_missing", {})
            for column, name in enumerate(raw["feature_order"]):
                missing, fill = _missing(policies.get(name, "reject"), name, dtype)
                bindings.append(
                    FieldBinding(
                        input=str(tensor["name"]),
                        field=str(name),
                        dtype=dtype,
                        missing=missing,
                        column=column,
                        fill=fill,
                    )
                )
        decision = parse_policy(raw)
        # With bands the threshold is the lowest published band's edge (for logs, metrics).
        threshold = decision.threshold
        output = raw.get("output", {})
        event = _event_fields(raw.get("event"))
        return cls(
            path=folder,
            name=str(raw["name"]),
            version=str(raw["version"]),
            input_layout=layout,
            bindings=tuple(bindings),
            output_name=output.get("name"),
            positive_class_index=int(output.get("positive_class_index", 1)),
            threshold=threshold,
            sha256=raw.get("sha256"),
            raw=raw,
            decision=decision,
            **event,
        )


def _dtype(value: Any, name: str) -> InputDtype:
    if value not in ACCEPTED_KINDS:
        msg = f"input {name!r}: dtype must be one of {sorted(ACCEPTED_KINDS)}, got {value!r}"
        raise ValueError(msg)
    return value  # type: ignore[no-any-return]  # narrowed by the membership test above


def _missing(value: Any, name: str, dtype: InputDtype) -> tuple[Missing, FillValue | None]:
    """Parse one input's null policy: ``(missing, fill)``; raises naming the input."""
    if value == "reject":
        return "reject", None
    if value == "nan":
        if dtype not in FLOAT_DTYPES:
            msg = f"input {name!r}: missing 'nan' needs a float dtype, but the input is {dtype}"
            raise ValueError(msg)
        return "nan", None
    if isinstance(value, Mapping) and list(value) == ["fill"]:
        return "fill", _fill(value["fill"], name, dtype)
    msg = (
        f"input {name!r}: missing must be 'reject', 'nan' or {{\"fill\": VALUE}}, "
        f"got {json.dumps(value)}"
    )
    raise ValueError(msg)


def _fill(value: Any, name: str, dtype: InputDtype) -> FillValue:
    """Check that a fill value suits the input's dtype, exactly as the model will receive it."""
    if dtype == "string":
        if not isinstance(value, str):
            msg = f"input {name!r}: dtype string needs a string fill, got {value!r}"
            raise ValueError(msg)
        return value
    if isinstance(value, bool):
        return value  # 0/1, as booleans are fed
    if not isinstance(value, int | float):
        msg = (
            f"input {name!r}: dtype {dtype} needs a numeric fill (number or boolean), got {value!r}"
        )
        raise ValueError(msg)
    if dtype == "int64":
        if isinstance(value, float) and not value.is_integer():
            msg = f"input {name!r}: dtype int64 needs an integral fill, got {value!r}"
            raise ValueError(msg)
        if not INT64_MIN <= value <= INT64_MAX:
            msg = f"input {name!r}: fill {value!r} does not fit in int64"
            raise ValueError(msg)
        return value
    # A NaN fill would be missing 'nan'; an infinite one, or one that overflows float32,
    # is a value the model was never trained on.
    with np.errstate(over="ignore"):
        finite = bool(np.isfinite(np.dtype(dtype).type(value)))
    if not finite:
        msg = f"input {name!r}: dtype {dtype} needs a fill that is finite in {dtype}, got {value!r}"
        raise ValueError(msg)
    return value


def _event_fields(raw: Any) -> dict[str, str | None]:
    """Parse the optional ``event`` object into ModelCard keyword arguments."""
    out: dict[str, str | None] = dict.fromkeys(EVENT_KEYS.values())
    if raw is None:
        return out
    if not isinstance(raw, Mapping):
        msg = f"event must be an object with {sorted(EVENT_KEYS)}, got {json.dumps(raw)}"
        raise TypeError(msg)
    unknown = sorted(set(raw) - set(EVENT_KEYS))
    if unknown:
        msg = f"event: unknown key(s) {unknown}; expected {sorted(EVENT_KEYS)}"
        raise ValueError(msg)
    for key, attribute in EVENT_KEYS.items():
        value = raw.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            msg = f"event.{key} must be a field name or null, got {json.dumps(value)}"
            raise ValueError(msg)
        out[attribute] = value
    return out


def field_kind(avro_type: Any) -> tuple[FieldKind, bool]:
    """Classify an Avro field type for binding: its kind and whether it is nullable."""
    nullable = False
    if isinstance(avro_type, list):
        branches = [t for t in avro_type if t != "null"]
        nullable = len(branches) < len(avro_type)
        if len(branches) != 1:
            return "other", nullable
        avro_type = branches[0]
    if isinstance(avro_type, Mapping):
        if avro_type.get("type") == "enum":
            return "string", nullable
        if avro_type.get("logicalType") in ("timestamp-millis", "timestamp-micros", "date"):
            return "number", nullable
        avro_type = avro_type.get("type")
    if avro_type in NUMERIC_AVRO:
        return "number", nullable
    if avro_type == "boolean":
        return "boolean", nullable
    if avro_type == "string":
        return "string", nullable
    return "other", nullable


def bind_to_schema(card: ModelCard, reader_schema: Mapping[str, Any]) -> None:
    """Check that every model input can be fed from the reader schema.

    Raises:
        ConfigurationError: Names the input and the field that do not fit.
    """
    fields = {f["name"]: f["type"] for f in reader_schema.get("fields", [])}
    for binding in card.bindings:
        if binding.field not in fields:
            msg = (
                f"model {card.name}/{card.version}: input {binding.input!r} binds field "
                f"{binding.field!r}, which the reader schema {reader_schema.get('name')} lacks"
            )
            raise ConfigurationError(msg)
        kind, _ = field_kind(fields[binding.field])
        if kind not in ACCEPTED_KINDS[binding.dtype]:
            msg = (
                f"model {card.name}/{card.version}: input {binding.input!r} wants "
                f"{binding.dtype} but field {binding.field!r} has Avro type "
                f"{json.dumps(fields[binding.field])}"
            )
            raise ConfigurationError(msg)
    for key, attribute in EVENT_KEYS.items():
        name = getattr(card, attribute)
        if name is None:
            continue
        if name not in fields:
            msg = (
                f"model {card.name}/{card.version}: event.{key} names field {name!r}, which "
                f"the reader schema {reader_schema.get('name')} lacks"
            )
            raise ConfigurationError(msg)
        problem = _event_field_problem(key, fields[name])
        if problem:
            msg = (
                f"model {card.name}/{card.version}: event.{key} field {name!r} has Avro type "
                f"{json.dumps(fields[name])}; {problem}"
            )
            raise ConfigurationError(msg)


def _event_field_problem(key: str, avro_type: Any) -> str | None:
    """Why a field cannot serve as the event's id, time or key; None when it can.

    A nullable field is accepted: a null id, time or key falls back to the record's
    coordinates, broker timestamp or message key.
    """
    if isinstance(avro_type, list):
        branches = [t for t in avro_type if t != "null"]
        if len(branches) != 1:
            return "expected one type, optionally nullable"
        avro_type = branches[0]
    logical = None
    if isinstance(avro_type, Mapping):
        logical = avro_type.get("logicalType")
        avro_type = avro_type.get("type")
    if key == "id_field" and avro_type not in ID_AVRO:
        return "an event id must be a string, int or long"
    if key == "time_field":
        millis = (avro_type == "long" and logical in (None, "timestamp-millis")) or (
            avro_type == "int" and logical is None
        )
        if not millis:
            return "an event time must be epoch milliseconds: long, int or timestamp-millis"
    if key == "key_field" and avro_type not in KEY_AVRO:
        return "a key must be a scalar (string, bytes, number, boolean, enum or fixed)"
    return None


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
