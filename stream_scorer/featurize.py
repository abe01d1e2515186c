"""Stage 3: decoded columns → the model's input arrays, bound by name.

In: a :class:`DecodedBatch` whose columns are the fields the model card binds. Out: one numpy
array per ONNX input (``[N, 1]`` per field for ``per_field`` models, ``[N, F]`` for ``tensor``
models), the batch rows they hold, and :class:`Rejected` for events the model cannot take.

Nulls follow the card's policy per input (one small function, :func:`FeatureBuilder._column`):

========================  =================  ==================  ============================
policy                    null               NaN / ±inf (float)  typical use
========================  =================  ==================  ============================
``reject`` (default)      rejected           rejected            a field that is never null
``nan`` (float only)      NaN                NaN                 the graph's own imputer
``{"fill": VALUE}``       ``VALUE``          rejected            a fill the training applied
========================  =================  ==================  ============================

Only a null is ever filled, and only where the card says so: nothing is filled silently.
Whole-array numpy work only: no per-event Python on numeric fields. No side effects.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from stream_scorer.model_card import FieldBinding, ModelCard
from stream_scorer.records import DecodedBatch, Event, FieldColumn, Rejected

__all__ = ["FeatureBuilder", "ModelInputs"]

ModelInputs = dict[str, NDArray[Any]]

#: numpy dtype of each card dtype; strings go to onnxruntime as object arrays of str.
NUMPY_DTYPES: dict[str, Any] = {
    "float32": np.float32,
    "float64": np.float64,
    "int64": np.int64,
    "string": object,
}
#: Card dtypes without NaN: a null there can only be rejected or filled.
_NO_NAN = frozenset({"string", "int64"})


class FeatureBuilder:
    """Gathers event fields into the model's inputs, following the model card's bindings."""

    def __init__(self, card: ModelCard) -> None:
        """Group the card's bindings by ONNX input."""
        self.card = card
        self._inputs: dict[str, list[FieldBinding]] = {}
        for binding in card.bindings:
            self._inputs.setdefault(binding.input, []).append(binding)
        #: The event fields the model reads, in binding order (what decode must deliver).
        self.fields: tuple[str, ...] = tuple(dict.fromkeys(b.field for b in card.bindings))

    @staticmethod
    def _column(
        column: FieldColumn, binding: FieldBinding, bad: NDArray[np.bool_], reasons: list[Any]
    ) -> NDArray[Any]:
        # The null mask, or None when this batch has no null in the column.
        null = column.null if column.null is not None and column.null.any() else None
        fill = binding.fill
        # A null is rejected unless the card fills it or passes it as NaN to a float input
        # (the card refuses missing 'nan' for string and int64 inputs when it loads).
        passes_nan = binding.missing == "nan" and binding.dtype not in _NO_NAN
        if null is not None and fill is None and not passes_nan:
            _mark(bad, reasons, null, f"field {binding.field!r} is null; model input "
                  f"{binding.input!r}")  # fmt: skip
        if binding.dtype == "string":
            values = column.to_objects()
            if null is not None:
                values = values.copy()  # the column may hand out its own array
                values[null] = "" if fill is None else fill  # "" only in rows rejected above
            return values
        number = None if isinstance(fill, str) else fill  # a string fill is refused for numbers
        if binding.dtype == "int64":
            # Not through float64: longs above 2**53 must stay exact.
            return column.to_numpy(np.int64, fill=0 if number is None else number)
        values = column.to_numpy(NUMPY_DTYPES[binding.dtype], fill=number)
        if binding.missing == "nan":
            return values
        # NaN and ±inf, including a double too large for a float32 input: the model was never
        # trained on either, so its score would mean nothing. A fill replaces nulls only, so
        # a NaN in a filled input is rejected as well.
        nonfinite = ~np.isfinite(values)
        if null is not None and fill is None:
            nonfinite &= ~null  # already rejected as null, with that reason
        if nonfinite.any():
            _mark(bad, reasons, nonfinite, f"field {binding.field!r} is not finite "
                  f"(NaN or infinite as {binding.dtype}); model input "
                  f"{binding.input!r}")  # fmt: skip
        return values

    def build_batch_inputs(
        self, batch: DecodedBatch
    ) -> tuple[ModelInputs, NDArray[np.intp], list[Rejected]]:
        """Build the model inputs for a decoded batch.

        Returns:
            The inputs by ONNX input name (rows of rejected events removed), the batch rows
            they hold, in order, and the rejected events.
        """
        n = len(batch.records)
        bad = np.zeros(n, dtype=bool)
        reasons: list[Any] = [None] * n
        inputs: ModelInputs = {}
        for name, bindings in self._inputs.items():
            columns = [self._column(batch.columns[b.field], b, bad, reasons) for b in bindings]
            if self.card.input_layout == "tensor":
                inputs[name] = np.stack(columns, axis=1)
            else:
                inputs[name] = columns[0].reshape(-1, 1)
        if not bad.any():
            return inputs, np.arange(n), []
        rejected = [
            Rejected(batch.records[i], "featurize", "FeatureError", reasons[i])
            for i in np.flatnonzero(bad).tolist()
        ]
        keep = ~bad
        return {k: v[keep] for k, v in inputs.items()}, np.flatnonzero(keep), rejected

    def build_inputs(
        self, events: Sequence[Event]
    ) -> tuple[ModelInputs, list[Event], list[Rejected]]:
        """Build the model inputs for already decoded events (offline scoring, tests).

        Returns:
            The inputs, the events they hold in row order, and the rejected events.
        """
        batch = DecodedBatch.from_events(events, self.fields)
        inputs, rows, rejected = self.build_batch_inputs(batch)
        return inputs, [events[i] for i in rows.tolist()], rejected


def _mark(bad: NDArray[np.bool_], reasons: list[Any], rows: NDArray[np.bool_], reason: str) -> None:
    """Flag ``rows`` as unusable, keeping the first reason found for each."""
    for i in np.flatnonzero(rows & ~bad).tolist():
        reasons[i] = reason
    bad |= rows
