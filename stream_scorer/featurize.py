"""Stage 3: decoded events → the model's input arrays, bound by name.

In: the batch's :class:`Event` values. Out: one numpy array per ONNX input (``[N, 1]`` per field
for ``per_field`` models, ``[N, F]`` for ``tensor`` models), the events that made it, and
:class:`Rejected` for events the model cannot take: a null or NaN where the model card says
``missing: reject``. A null where the card says ``missing: nan`` is passed as NaN for the graph's
own imputer. Nothing is ever filled silently. No side effects.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from stream_scorer.model_card import FieldBinding, ModelCard
from stream_scorer.records import Event, Rejected

__all__ = ["FeatureBuilder", "ModelInputs"]

ModelInputs = dict[str, NDArray[Any]]

#: numpy dtype of each card dtype; strings go to onnxruntime as object arrays of str.
NUMPY_DTYPES: dict[str, Any] = {
    "float32": np.float32,
    "float64": np.float64,
    "int64": np.int64,
    "string": object,
}
#: The Unix epoch, for timestamp fields decoded as datetimes.
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
#: One millisecond, the unit timestamps are fed to models in.
ONE_MS = dt.timedelta(milliseconds=1)


def _plain(value: Any) -> Any:
    """Datetimes (timestamp logical types) as epoch milliseconds, dates as days."""
    if isinstance(value, dt.datetime):
        return (value - EPOCH) // ONE_MS
    if isinstance(value, dt.date):
        return (value - EPOCH.date()).days
    return value


class FeatureBuilder:
    """Gathers event fields into the model's inputs, following the model card's bindings."""

    def __init__(self, card: ModelCard) -> None:
        """Group the card's bindings by ONNX input."""
        self.card = card
        self._inputs: dict[str, list[FieldBinding]] = {}
        for binding in card.bindings:
            self._inputs.setdefault(binding.input, []).append(binding)

    def _column(
        self, events: Sequence[Event], binding: FieldBinding, bad: dict[int, str]
    ) -> NDArray[Any]:
        values = [_plain(event.fields.get(binding.field)) for event in events]
        nulls = [i for i, value in enumerate(values) if value is None]
        if binding.dtype == "string":
            for i in nulls:
                bad.setdefault(i, f"field {binding.field!r} is null; model input {binding.input!r}")
            return np.array(["" if v is None else str(v) for v in values], dtype=object)
        if nulls:
            if binding.missing == "reject":
                for i in nulls:
                    bad.setdefault(
                        i, f"field {binding.field!r} is null; model input {binding.input!r}"
                    )
            for i in nulls:
                values[i] = np.nan if binding.dtype != "int64" else 0
        if binding.dtype == "int64":
            # Not through float64: longs above 2**53 must stay exact.
            return np.asarray(values, dtype=np.int64)
        column = np.asarray(values, dtype=np.float64)
        if binding.missing == "reject":
            for i in np.flatnonzero(np.isnan(column)).tolist():
                bad.setdefault(i, f"field {binding.field!r} is NaN; model input {binding.input!r}")
        return column.astype(NUMPY_DTYPES[binding.dtype], copy=False)

    def build_inputs(
        self, events: Sequence[Event]
    ) -> tuple[ModelInputs, list[Event], list[Rejected]]:
        """Build the model inputs for ``events``.

        Returns:
            The inputs by ONNX input name (rows of rejected events removed), the events they
            hold in row order, and the rejected events.
        """
        bad: dict[int, str] = {}
        inputs: ModelInputs = {}
        for name, bindings in self._inputs.items():
            columns = [self._column(events, binding, bad) for binding in bindings]
            if self.card.input_layout == "tensor":
                inputs[name] = np.stack(columns, axis=1)
            else:
                inputs[name] = columns[0].reshape(-1, 1)
        if not bad:
            return inputs, list(events), []
        keep = np.ones(len(events), dtype=bool)
        keep[list(bad)] = False
        rejected = [
            Rejected(events[i].source, "featurize", "FeatureError", reason)
            for i, reason in sorted(bad.items())
        ]
        kept = [event for event, ok in zip(events, keep, strict=True) if ok]
        return {name: array[keep] for name, array in inputs.items()}, kept, rejected
