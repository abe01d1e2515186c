"""The model card (``models/<name>/<version>/model.json``) and its binding to the reader schema.

A model folder holds ``model.onnx`` and ``model.json``. The card names the model and version,
says how each ONNX input is fed from event fields, which output holds the probability, the
threshold, the training data and the holdout metrics, and the sha256 of ``model.onnx``.

Two input layouts are supported:

* ``per_field`` (preferred): one ONNX input of shape ``[N, 1]`` per event field, named in the
  card; the model's own preprocessing (encoders, imputers) lives in the graph.
* ``tensor``: one float input ``[N, F]`` whose column order is the card's ``feature_order``.

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

from stream_scorer.errors import ConfigurationError

__all__ = [
    "FieldBinding",
    "ModelCard",
    "bind_to_schema",
    "field_kind",
    "file_sha256",
]

InputDtype = Literal["float32", "float64", "int64", "string"]
Missing = Literal["reject", "nan"]
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


@dataclass(frozen=True, slots=True)
class FieldBinding:
    """How one model input column is fed: from which field, as which dtype, nulls how."""

    input: str
    field: str
    dtype: InputDtype
    missing: Missing = "reject"
    #: Column within a ``tensor`` input; -1 for ``per_field`` inputs.
    column: int = -1


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
    #: Input fields that identify an event on its alert (the card's ``event`` section).
    event_id_field: str | None = None
    event_time_field: str | None = None
    key_field: str | None = None
    #: sha256 of the card file's bytes as read, so a signature can be checked against them.
    card_sha256: str | None = None

    @property
    def model_file(self) -> Path:
        """The ONNX file next to the card."""
        return self.path / "model.onnx"

    @property
    def input_names(self) -> tuple[str, ...]:
        """ONNX input names the card expects, in order, without repeats."""
        return tuple(dict.fromkeys(b.input for b in self.bindings))

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
                bindings.append(
                    FieldBinding(
                        input=str(spec["name"]),
                        field=str(spec.get("field", spec["name"])),
                        dtype=_dtype(spec.get("dtype", "float32"), spec["name"]),
                        missing=_missing(spec.get("missing", "reject"), spec["name"]),
                    )
                )
        else:
            (tensor,) = raw["inputs"]
            dtype = _dtype(tensor.get("dtype", "float32"), tensor["name"])
            missing = raw.get("feature_missing", {})
            for column, name in enumerate(raw["feature_order"]):
                bindings.append(
                    FieldBinding(
                        input=str(tensor["name"]),
                        field=str(name),
                        dtype=dtype,
                        missing=_missing(missing.get(name, "reject"), name),
                        column=column,
                    )
                )
        threshold = float(raw["threshold"])
        if not 0.0 <= threshold <= 1.0:
            msg = f"threshold must be in [0, 1], got {threshold}"
            raise ValueError(msg)
        output = raw.get("output", {})
        event = raw.get("event", {})
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
            event_id_field=event.get("id_field"),
            event_time_field=event.get("time_field"),
            key_field=event.get("key_field"),
        )


def _dtype(value: Any, name: str) -> InputDtype:
    if value not in ACCEPTED_KINDS:
        msg = f"input {name!r}: dtype must be one of {sorted(ACCEPTED_KINDS)}, got {value!r}"
        raise ValueError(msg)
    return value  # type: ignore[no-any-return]  # narrowed by the membership test above


def _missing(value: Any, name: str) -> Missing:
    if value not in ("reject", "nan"):
        msg = f"input {name!r}: missing must be 'reject' or 'nan', got {value!r}"
        raise ValueError(msg)
    return value  # type: ignore[no-any-return]  # narrowed by the membership test above


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
        kind, nullable = field_kind(fields[binding.field])
        if kind not in ACCEPTED_KINDS[binding.dtype]:
            msg = (
                f"model {card.name}/{card.version}: input {binding.input!r} wants "
                f"{binding.dtype} but field {binding.field!r} has Avro type "
                f"{json.dumps(fields[binding.field])}"
            )
            raise ConfigurationError(msg)
        if nullable and binding.missing == "nan" and binding.dtype not in ("float32", "float64"):
            msg = (
                f"model {card.name}/{card.version}: input {binding.input!r} says missing='nan' "
                f"but its dtype {binding.dtype} has no NaN"
            )
            raise ConfigurationError(msg)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
