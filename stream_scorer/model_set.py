"""The models that serve: each loaded and checked, held as one set, replaced whole.

A :class:`LoadedModel` is one model version ready to score: its ONNX session checked against its
card, its input builder bound to the reader schema, its threshold, and a canary batch that it
has already scored once (the warm-up). A :class:`ModelSet` is what one batch is scored with: the
champion, plus optional shadows and one canary model (the monitoring and lifecycle features fill
those slots). :class:`LiveModels` holds the current set; the pipeline reads it once per batch,
and :meth:`LiveModels.replace` swaps in a new set with one reference assignment, so a swap takes
effect between batches (in exactly-once mode, between transactions), never inside one.

Loading happens off the loop: build the next set (load, check, warm up), then replace. A model
that fails to load raises :class:`~stream_scorer.errors.ConfigurationError` and the old set keeps
serving.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import structlog

from stream_scorer.errors import ConfigurationError
from stream_scorer.featurize import FeatureBuilder, ModelInputs
from stream_scorer.integrity import IntegrityPolicy
from stream_scorer.model_card import ModelCard, bind_to_schema, field_kind
from stream_scorer.records import Event, SourceRecord
from stream_scorer.score import OnnxScorer, Scorer

__all__ = ["CANARY_ROWS", "LiveModels", "LoadedModel", "ModelSet", "load_model"]

log = structlog.get_logger(__name__)

#: Rows in the canary batch used for warm-up and to tell a broken model from bad events.
CANARY_ROWS = 4


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A model ready to serve: its scorer, input builder, threshold and a canary input."""

    scorer: Scorer
    features: FeatureBuilder
    threshold: float
    canary: ModelInputs

    @property
    def card(self) -> ModelCard:
        """The model card."""
        return self.scorer.card

    @property
    def name(self) -> str:
        """Model name from the card."""
        return self.scorer.card.name

    @property
    def version(self) -> str:
        """Model version from the card."""
        return self.scorer.card.version

    @property
    def label(self) -> str:
        """``name/version``, for logs."""
        return f"{self.name}/{self.version}"


@dataclass(frozen=True, slots=True)
class ModelSet:
    """The models one batch is scored with: the champion, shadows, and at most one canary.

    Only the champion (and, once the canary slot is used, the canary) publishes; shadows are
    scored for comparison only. The decoder delivers :attr:`fields`, the union of every model's
    bound fields, once per batch.
    """

    champion: LoadedModel
    shadows: tuple[LoadedModel, ...] = ()
    canary: LoadedModel | None = None
    #: Share of events (by key hash) the canary scores instead of the champion.
    canary_fraction: float = 0.0
    fields: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        """Compute the union of bound fields, in the champion's order first."""
        names: dict[str, None] = {}
        for model in self:
            names.update(dict.fromkeys(model.features.fields))
        object.__setattr__(self, "fields", tuple(names))
        if not 0.0 <= self.canary_fraction <= 1.0:
            msg = f"canary fraction must be in [0, 1], got {self.canary_fraction}"
            raise ConfigurationError(msg)

    def __iter__(self) -> Iterator[LoadedModel]:
        """Every model of the set: champion, canary, shadows."""
        yield self.champion
        if self.canary is not None:
            yield self.canary
        yield from self.shadows

    def describe(self) -> dict[str, Any]:
        """The set's models by role, for logs."""
        return {
            "champion": self.champion.label,
            "canary": None if self.canary is None else self.canary.label,
            "shadows": [m.label for m in self.shadows],
        }


class LiveModels:
    """The model set serving now; replaced whole, by one call, between batches."""

    def __init__(
        self, models: ModelSet, on_replace: Callable[[ModelSet], None] | None = None
    ) -> None:
        """Serve ``models`` from the first batch; ``on_replace`` hears of each new set (the
        live-model metrics)."""
        self._current = models
        self._on_replace = on_replace
        self._lock = threading.Lock()
        #: How many times the set was replaced since start.
        self.swaps = 0

    @property
    def current(self) -> ModelSet:
        """The set the next batch is scored with (read it once per batch)."""
        return self._current

    def replace(self, models: ModelSet) -> ModelSet:
        """Serve ``models`` from the next batch on; returns the set it replaces.

        Safe from any thread: the pipeline reads :attr:`current` once at the start of a batch,
        so a batch is scored wholly by the old set or wholly by the new one.
        """
        previous = self._swap(models, None)
        assert previous is not None  # noqa: S101 - no expected set: always swapped
        return previous

    def replace_if(self, expected: ModelSet, models: ModelSet) -> bool:
        """:meth:`replace`, only while ``expected`` still serves; False (nothing done) when
        another swap came first (a rule acting on an old set must not undo a newer one)."""
        return self._swap(models, expected) is not None

    def _swap(self, models: ModelSet, expected: ModelSet | None) -> ModelSet | None:
        with self._lock:
            if expected is not None and self._current is not expected:
                return None
            previous, self._current = self._current, models
            self.swaps += 1
        if self._on_replace is not None:
            self._on_replace(models)
        log.info("model_set_replaced", previous=previous.describe(), current=models.describe())
        return previous


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


def load_model(
    path: Any,
    reader: Mapping[str, Any],
    intra_op_threads: int = 0,
    verify_sha256: bool = True,
    threshold: float | None = None,
    integrity: IntegrityPolicy | None = None,
) -> LoadedModel:
    """Load a model folder, bind it to the reader schema, warm it up.

    Args:
        path: ``models/<name>/<version>/`` with ``model.onnx`` and ``model.json``.
        reader: The reader schema events are decoded with.
        intra_op_threads: onnxruntime intra-op threads; 0 picks a default.
        verify_sha256: Refuse a file whose hash differs from the card's.
        threshold: Overrides the card's threshold.
        integrity: Hash and signature policy; overrides ``verify_sha256`` when given.

    Raises:
        ConfigurationError: Bad card, unbindable input, wrong file hash, a model that fails.
    """
    card = ModelCard.load(path)
    bind_to_schema(card, reader)
    scorer = OnnxScorer(card, intra_op_threads, verify_sha256, integrity)
    features = FeatureBuilder(card)
    canary = _canary_inputs(features, reader)
    scorer.warm_up(canary)
    chosen = card.threshold if threshold is None else threshold
    log.info(
        "model_loaded",
        model=card.name,
        version=card.version,
        inputs=len(card.input_names),
        input_layout=card.input_layout,
        output=scorer.output_name,
        threshold=chosen,
        intra_op_threads=scorer.intra_op_threads,
        canary_score=float(np.max(scorer.score(canary))),
    )
    return LoadedModel(scorer=scorer, features=features, threshold=chosen, canary=canary)
