"""The decision policy as data: the model's output type and ordered, named bands over its score.

A model card declares what its graph outputs and what the service makes of it:

* ``output.type`` (default ``"binary"``): ``"binary"`` (a positive-class probability, today's
  models), ``"multiclass"`` (one probability per class, ``[N, C]``, with ``output.labels``
  naming the C classes; alerts carry the ``decision.top_k`` most likely) or ``"regression"``
  (one value per event, ``[N]`` or ``[N, 1]``, e.g. an expected loss).
* ``decision.bands``: ordered bands over the *decision value* (the probability for binary, the
  top class's probability for multiclass, the value for regression). Each band has a ``name``,
  a ``from`` (inclusive lower edge; the first band has none: it starts at 0 for probabilities
  and at -infinity for values) and ``publish`` (whether an event in it becomes an alert).
  A value falls in the last band whose ``from`` it reaches.

A card without ``decision`` keeps working exactly as before: its ``threshold`` is the policy
``PASS`` (below, not published) < threshold <= ``FLAG`` (published). :func:`parse_policy` reads
the card's sections; the arrays it precomputes let :mod:`stream_scorer.flag` assign bands to a
whole batch with one ``searchsorted``. No side effects.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal, cast

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "FLAG",
    "OUTPUT_TYPES",
    "PASS",
    "Band",
    "DecisionPolicy",
    "OutputType",
    "parse_policy",
    "threshold_policy",
]

OutputType = Literal["binary", "multiclass", "regression"]
#: The output types a card may declare.
OUTPUT_TYPES: tuple[OutputType, ...] = ("binary", "multiclass", "regression")
#: The band of a plain threshold at or above it: published, as every alert was before bands.
FLAG = "FLAG"
#: The band of a plain threshold below it: counted, not published.
PASS = "PASS"  # noqa: S105 - a band name, not a password
#: Band names are Avro names, so that the alert schema's ``Decision`` enum can hold them.
BAND_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: Keys a band object may have.
BAND_KEYS = frozenset({"name", "from", "publish"})
#: Keys of the card's ``decision`` object.
DECISION_KEYS = frozenset({"bands", "top_k"})


@dataclass(frozen=True, slots=True)
class Band:
    """One named band: values at or above ``lower`` (and below the next band's) fall in it."""

    name: str
    lower: float
    publish: bool


@dataclass(frozen=True)
class DecisionPolicy:
    """What the service makes of one model's output: its type, the bands, the top-k classes."""

    output: OutputType
    bands: tuple[Band, ...]
    #: Class labels, by output column (multiclass only).
    labels: tuple[str, ...] = ()
    #: Classes published per event, most likely first (multiclass only).
    top_k: int = 0
    #: True for the plain-threshold policy of a card without a ``decision`` section.
    from_threshold: bool = False
    #: Lower edges of bands 1.. (band 0 has no edge): ``searchsorted`` gives the band index.
    edges: NDArray[np.float64] = field(init=False, compare=False, hash=False, repr=False)
    #: Whether each band publishes, by band index.
    published: NDArray[np.bool_] = field(init=False, compare=False, hash=False, repr=False)
    #: Each band's lower edge, by band index, for the alert's ``threshold`` field.
    lowers: NDArray[np.float64] = field(init=False, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        """Precompute the arrays the flag stage reads."""
        object.__setattr__(self, "edges", np.array([b.lower for b in self.bands[1:]]))
        object.__setattr__(self, "published", np.array([b.publish for b in self.bands]))
        object.__setattr__(self, "lowers", np.array([b.lower for b in self.bands]))

    @property
    def names(self) -> tuple[str, ...]:
        """Band names, in order."""
        return tuple(b.name for b in self.bands)

    @property
    def threshold(self) -> float:
        """The lowest edge of a published band: the card's threshold, for logs and metrics."""
        return next((b.lower for b in self.bands if b.publish), math.inf)

    @property
    def is_probability(self) -> bool:
        """True when the decision value is a probability (binary and multiclass)."""
        return self.output != "regression"

    def at_threshold(self, threshold: float) -> DecisionPolicy:
        """This policy with the threshold overridden (``model.threshold``): plain policies only.

        Raises:
            ValueError: The card declares bands; a single threshold cannot replace them.
        """
        if threshold == self.threshold:
            return self
        if not self.from_threshold:
            msg = "the model card declares decision bands; model.threshold cannot override them"
            raise ValueError(msg)
        return _threshold_policy(threshold, self.output)

    def decision_values(self, outputs: NDArray[np.float64]) -> NDArray[np.float64]:
        """The value the bands are drawn over: the top class's probability for multiclass."""
        if outputs.ndim == 2:
            return outputs.max(axis=1) if outputs.shape[1] else np.full(len(outputs), np.nan)
        return outputs

    def valid(self, outputs: NDArray[np.float64]) -> NDArray[np.bool_]:
        """Rows whose output is usable: probabilities in [0, 1], values finite (never NaN)."""
        # Comparisons are False for NaN, so NaN is never a valid probability.
        ok: NDArray[np.bool_] = (
            (outputs >= 0.0) & (outputs <= 1.0) if self.is_probability else np.isfinite(outputs)
        )
        if ok.ndim == 2:  # [N, C]: a row is valid when every class's probability is
            return cast(NDArray[np.bool_], ok.all(axis=1))
        return ok

    def assign(self, values: NDArray[np.float64]) -> NDArray[np.intp]:
        """The band index of each (valid) decision value."""
        return np.searchsorted(self.edges, values, side="right").astype(np.intp, copy=False)

    def top_classes(
        self, outputs: NDArray[np.float64]
    ) -> tuple[NDArray[np.intp], NDArray[np.float64]]:
        """The ``top_k`` most likely classes per row (column indices) and their probabilities,
        most likely first; ties go to the lower column, as ``argmax`` does."""
        order = np.argsort(-outputs, axis=1, kind="stable")[:, : self.top_k]
        return order, np.take_along_axis(outputs, order, axis=1)

    def describe(self) -> str:
        """The policy in one line, as ``config check`` prints it."""
        bands = " < ".join(
            f"{b.name}{'*' if b.publish else ''}" + (f" from {b.lower:g}" if i else "")
            for i, b in enumerate(self.bands)
        )
        extra = ""
        if self.output == "multiclass":
            extra = f", top {self.top_k} of {len(self.labels)} classes"
        return f"output {self.output}{extra}; bands {bands} (* published)"


@lru_cache(maxsize=64)
def _threshold_policy(threshold: float, output: OutputType) -> DecisionPolicy:
    low = 0.0 if output != "regression" else -math.inf
    bands = (Band(PASS, low, publish=False), Band(FLAG, threshold, publish=True))
    return DecisionPolicy(output, bands, from_threshold=True)


def threshold_policy(threshold: float) -> DecisionPolicy:
    """The plain policy of a binary card: ``PASS`` below ``threshold``, ``FLAG`` at or above."""
    return _threshold_policy(float(threshold), "binary")


def parse_policy(raw: Mapping[str, Any]) -> DecisionPolicy:
    """The decision policy of a raw model card (its ``output``, ``decision``, ``threshold``).

    Raises:
        ValueError: A key is missing or wrong; the message names it.
        TypeError: A section is not the JSON type it must be.
    """
    output = raw.get("output", {})
    if not isinstance(output, Mapping):
        msg = f"output must be an object, got {json.dumps(output)}"
        raise TypeError(msg)
    kind = output.get("type", "binary")
    if kind not in OUTPUT_TYPES:
        msg = f"output.type must be one of {list(OUTPUT_TYPES)}, got {json.dumps(kind)}"
        raise ValueError(msg)
    labels = _labels(output.get("labels"), kind)
    decision = raw.get("decision")
    if decision is None:
        if kind != "binary":
            msg = f"output.type {kind!r} needs a decision section with bands"
            raise ValueError(msg)
        threshold = float(raw["threshold"])
        if not 0.0 <= threshold <= 1.0:
            msg = f"threshold must be in [0, 1], got {threshold}"
            raise ValueError(msg)
        return threshold_policy(threshold)
    if "threshold" in raw:
        msg = "give either threshold or decision.bands, not both (a threshold is two bands)"
        raise ValueError(msg)
    if not isinstance(decision, Mapping):
        msg = f"decision must be an object, got {json.dumps(decision)}"
        raise TypeError(msg)
    unknown = sorted(set(decision) - DECISION_KEYS)
    if unknown:
        msg = f"decision: unknown key(s) {unknown}; expected {sorted(DECISION_KEYS)}"
        raise ValueError(msg)
    top_k = decision.get("top_k", 0)
    if kind == "multiclass":
        if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= len(labels):
            msg = f"decision.top_k must be an integer in [1, {len(labels)}], got {top_k!r}"
            raise ValueError(msg)
    elif "top_k" in decision:
        msg = f"decision.top_k applies to multiclass outputs only, not {kind}"
        raise ValueError(msg)
    bands = _bands(decision.get("bands"), kind)
    return DecisionPolicy(kind, bands, labels, top_k)


def _labels(raw: Any, kind: str) -> tuple[str, ...]:
    if kind != "multiclass":
        if raw is not None:
            msg = f"output.labels applies to multiclass outputs only, not {kind}"
            raise ValueError(msg)
        return ()
    if not isinstance(raw, list) or len(raw) < 2 or not all(isinstance(x, str) for x in raw):
        msg = f"output.labels must list at least two class labels (strings), got {raw!r}"
        raise ValueError(msg)
    if len(set(raw)) != len(raw):
        msg = "output.labels: class labels must be unique"
        raise ValueError(msg)
    return tuple(raw)


def _bands(raw: Any, kind: str) -> tuple[Band, ...]:
    if not isinstance(raw, list) or not raw:
        msg = f"decision.bands must be a non-empty list of bands, got {json.dumps(raw)}"
        raise ValueError(msg)
    probability = kind != "regression"
    bands: list[Band] = []
    for i, spec in enumerate(raw):
        band = _band(i, spec, bands[-1] if bands else None, probability)
        if any(b.name == band.name for b in bands):
            msg = f"decision.bands[{i}].name {band.name!r} is used twice"
            raise ValueError(msg)
        bands.append(band)
    return tuple(bands)


def _band(i: int, spec: Any, previous: Band | None, probability: bool) -> Band:
    """Parse band ``i``; the first (``previous`` None) starts at the lowest value."""
    where = f"decision.bands[{i}]"
    if not isinstance(spec, Mapping):
        msg = f"{where} must be an object, got {json.dumps(spec)}"
        raise TypeError(msg)
    unknown = sorted(set(spec) - BAND_KEYS)
    if unknown:
        msg = f"{where}: unknown key(s) {unknown}; expected {sorted(BAND_KEYS)}"
        raise ValueError(msg)
    name = spec.get("name")
    if not isinstance(name, str) or not BAND_NAME.fullmatch(name):
        msg = f"{where}.name must be an Avro name ([A-Za-z_][A-Za-z0-9_]*), got {name!r}"
        raise ValueError(msg)
    publish = spec.get("publish")
    if not isinstance(publish, bool):
        msg = f"{where}.publish must be true or false, got {json.dumps(publish)}"
        raise ValueError(msg)
    if previous is None:
        if "from" in spec:
            msg = f"{where}: the first band starts at the lowest value; it takes no 'from'"
            raise ValueError(msg)
        return Band(name, 0.0 if probability else -math.inf, publish)
    lower = spec.get("from")
    if not isinstance(lower, int | float) or isinstance(lower, bool):
        msg = f"{where}.from must be a number, got {json.dumps(lower)}"
        raise ValueError(msg)
    lower = float(lower)
    if not math.isfinite(lower) or (probability and not 0.0 < lower <= 1.0):
        bound = "in (0, 1]" if probability else "finite"
        msg = f"{where}.from must be {bound}, got {lower}"
        raise ValueError(msg)
    if lower <= previous.lower:
        msg = f"{where}.from ({lower}) must be above the previous band's"
        raise ValueError(msg)
    return Band(name, lower, publish)
