"""Assembles the stages from settings: schemas, registry, decoder, model, encoder.

Shared by ``run``, ``config check`` and ``score-file``, so the offline scorer and the stream
build the same decoder, model binding and threshold from the same settings.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import structlog

from stream_scorer import __version__
from stream_scorer.decode import (
    AvroDecoder,
    ColumnarAvroDecoder,
    Framing,
    fingerprint,
    frame_body,
)
from stream_scorer.encode import AlertEncoder
from stream_scorer.errors import ConfigurationError
from stream_scorer.featurize import FeatureBuilder, ModelInputs
from stream_scorer.model_card import ModelCard, bind_to_schema, field_kind
from stream_scorer.pipeline import LoadedModel
from stream_scorer.records import Event, SourceRecord
from stream_scorer.registry import RegistryError, SchemaRegistryClient
from stream_scorer.score import OnnxScorer
from stream_scorer.settings import Settings

__all__ = [
    "build_alert_encoder",
    "build_decoder",
    "build_registry",
    "load_model",
    "load_schema",
]

log = structlog.get_logger(__name__)

#: Rows in the canary batch used for warm-up and to tell a broken model from bad events.
CANARY_ROWS = 4


def load_schema(path: Path, key: str) -> dict[str, Any]:
    """Read and parse an ``.avsc`` file.

    Raises:
        ConfigurationError: Unreadable file or invalid schema, naming ``key``.
    """
    try:
        schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        fastavro.parse_schema(schema)
    except OSError as exc:
        msg = f"{key}: cannot read schema {path}: {exc}"
        raise ConfigurationError(msg) from exc
    except (json.JSONDecodeError, fastavro.schema.SchemaParseException, ValueError) as exc:
        msg = f"{key}: {path} is not a valid Avro schema: {exc}"
        raise ConfigurationError(msg) from exc
    return schema


def build_registry(settings: Settings) -> SchemaRegistryClient | None:
    """The registry client when the wire format needs one."""
    schema = settings.schema_
    if schema.wire_format != "confluent" or schema.registry_url is None:
        return None
    password = schema.registry_password.get_secret_value() if schema.registry_password else None
    return SchemaRegistryClient(
        schema.registry_url, schema.registry_username, password, schema.registry_timeout_s
    )


def build_decoder(
    settings: Settings, reader: Mapping[str, Any], registry: SchemaRegistryClient | None
) -> ColumnarAvroDecoder | AvroDecoder:
    """The decoder for the configured wire format and decoder kind."""
    writers = [load_schema(path, "schema.writers") for path in settings.schema_.writers]
    framing = Framing(reader, settings.schema_.wire_format, writers, registry)
    kind = ColumnarAvroDecoder if settings.schema_.decoder == "columnar" else AvroDecoder
    return kind(framing)


def _canary_value(avro_type: Any) -> Any:
    kind, _ = field_kind(avro_type)
    if isinstance(avro_type, list):
        avro_type = next(t for t in avro_type if t != "null")
    if isinstance(avro_type, Mapping) and avro_type.get("type") == "enum":
        return avro_type["symbols"][0]
    return {"number": 0, "boolean": False, "string": ""}.get(kind)


def _canary_inputs(features: FeatureBuilder, reader: Mapping[str, Any]) -> ModelInputs:
    """A small batch of neutral values (zeros, empty strings, first enum symbols)."""
    fields = {f["name"]: _canary_value(f["type"]) for f in reader["fields"]}
    source = SourceRecord("canary", 0, 0, None, None)
    events = [Event(source, fields) for _ in range(CANARY_ROWS)]
    inputs, _, rejected = features.build_inputs(events)
    if rejected:  # cannot happen: canary values are never null
        msg = f"cannot build the canary batch: {rejected[0].message}"
        raise ConfigurationError(msg)
    return inputs


def load_model(settings: Settings, reader: Mapping[str, Any]) -> LoadedModel:
    """Load the configured model, bind it to the reader schema, warm it up.

    Raises:
        ConfigurationError: Bad card, unbindable input, wrong file hash, a model that fails.
    """
    model_settings = settings.model
    card = ModelCard.load(model_settings.path)
    bind_to_schema(card, reader)
    scorer = OnnxScorer(card, model_settings.intra_op_threads, model_settings.verify_sha256)
    features = FeatureBuilder(card)
    canary = _canary_inputs(features, reader)
    scorer.warm_up(canary)
    threshold = card.threshold if model_settings.threshold is None else model_settings.threshold
    log.info(
        "model_loaded",
        model=card.name,
        version=card.version,
        inputs=len(card.input_names),
        input_layout=card.input_layout,
        output=scorer.output_name,
        threshold=threshold,
        intra_op_threads=scorer.intra_op_threads,
        canary_score=float(np.max(scorer.score(canary))),
    )
    return LoadedModel(scorer=scorer, features=features, threshold=threshold, canary=canary)


def build_alert_encoder(settings: Settings, registry: SchemaRegistryClient | None) -> AlertEncoder:
    """The alert encoder, framing alerts in the same wire format as the input.

    Raises:
        ConfigurationError: The alert schema cannot be read or registered.
    """
    schema = load_schema(settings.schema_.alert, "schema.alert")
    header = b""
    if settings.schema_.wire_format == "confluent":
        if registry is None:
            msg = "schema.registry_url is needed to register the alert schema"
            raise ConfigurationError(msg)
        subject = settings.schema_.alert_subject or f"{settings.topics.alerts}-value"
        try:
            schema_id = registry.register(subject, schema)
        except RegistryError as exc:
            msg = f"schema.registry_url: cannot register the alert schema: {exc}"
            raise ConfigurationError(msg) from exc
        header = frame_body("confluent", b"", schema_id=schema_id)
    elif settings.schema_.wire_format == "single-object":
        header = frame_body("single-object", b"", schema=schema)
        log.debug("alert_schema_fingerprint", fingerprint=f"{fingerprint(schema):016x}")
    return AlertEncoder(schema, header, __version__)
