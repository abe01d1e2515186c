"""Stage 4: model inputs ``[N, ...]`` → positive-class probabilities ``[N]``, one run per batch.

:class:`OnnxScorer` loads one onnxruntime session at start-up and checks it against the model
card before it serves: the sha256 of every file it loads (loading the very bytes that were
hashed, :mod:`stream_scorer.integrity`), every input's name and element type, and an
output that holds probabilities (``[N, 2]`` takes the card's positive class, ``[N, 1]`` and
``[N]`` are taken as they are, a ZipMap sequence of maps works but is logged as slow). It then
runs one warm-up batch. A model that fails any check raises
:class:`~stream_scorer.errors.ConfigurationError`; a run that fails raises
:class:`~stream_scorer.errors.ModelError` (the pipeline decides whether to bisect or stop).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort
import structlog
from numpy.typing import NDArray
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from stream_scorer.errors import ConfigurationError, ModelError
from stream_scorer.integrity import IntegrityPolicy, read_model_files
from stream_scorer.model_card import ModelCard

__all__ = ["OnnxScorer", "Scorer", "default_intra_op_threads"]

log = structlog.get_logger(__name__)

#: ONNX tensor element types for each card dtype.
ONNX_TYPES = {
    "float32": "tensor(float)",
    "float64": "tensor(double)",
    "int64": "tensor(int64)",
    "string": "tensor(string)",
}
#: Output names converters give the probability output, in order of preference.
PROBABILITY_OUTPUT_NAMES = ("probabilities", "output_probability", "probability", "scores")
#: Output names regressors get from converters (skl2onnx: ``variable``), in order of preference.
VALUE_OUTPUT_NAMES = ("variable", "predictions", "prediction", "value")
#: ``_column`` for an output read whole (``[N, C]`` class probabilities).
ALL_COLUMNS = -2
#: Errors onnxruntime raises from ``run``; anything else is a bug, not a model failure.
RUN_ERRORS = (
    ort_state.Fail,
    ort_state.InvalidArgument,
    ort_state.RuntimeException,
    ort_state.EPFail,
    ValueError,
    TypeError,
    RuntimeError,
)
#: Threads past two did not pay on the GBDT in bench/ (2-core machines); more members do.
MAX_DEFAULT_THREADS = 2


class Scorer(Protocol):
    """Scores a batch of model inputs; fakes implement it in tests."""

    card: ModelCard

    def score(self, inputs: Mapping[str, NDArray[Any]]) -> NDArray[np.float64]:
        """Positive-class probability (or value) per row; ``[N, C]`` for multiclass cards."""
        ...


def default_intra_op_threads() -> int:
    """One thread per core this process may use, at most :data:`MAX_DEFAULT_THREADS`."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(MAX_DEFAULT_THREADS, cores or 1))


class OnnxScorer:
    """One onnxruntime session for one model version, checked against its card."""

    def __init__(
        self,
        card: ModelCard,
        intra_op_threads: int = 0,
        verify_sha256: bool = True,
        integrity: IntegrityPolicy | None = None,
    ):
        """Load and check the model, then run one warm-up batch.

        Args:
            card: The model card; ``card.model_file`` is loaded.
            intra_op_threads: onnxruntime intra-op threads; 0 picks a default.
            verify_sha256: Refuse a card without hashes or a file whose sha256 differs.
            integrity: Hash and signature policy; overrides ``verify_sha256`` when given.

        Raises:
            ConfigurationError: The model cannot be loaded or does not match its card.
        """
        self.card = card
        # Read and checked once; the session is built from these bytes, never from the path.
        verified = read_model_files(card, integrity or IntegrityPolicy(verify_sha256))
        #: sha256 of every file the session was built from.
        self.file_hashes = dict(verified.hashes)
        #: True when a signature over the folder was verified against those bytes.
        self.is_signed = verified.is_signed
        options = ort.SessionOptions()
        self.intra_op_threads = intra_op_threads or default_intra_op_threads()
        options.intra_op_num_threads = self.intra_op_threads
        # Inter-op parallelism only helps graphs with parallel branches; ours are chains.
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle intra-op threads spin by default, taking the cores librdkafka and the broker
        # need between batches: on 2 cores, batch 1000 cost 9.6 ms CPU spinning vs 3.0 ms not.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(
                verified.model_bytes,
                sess_options=verified.session_options(options),
                providers=["CPUExecutionProvider"],
            )
        except (*RUN_ERRORS, ort_state.InvalidProtobuf, ort_state.InvalidGraph, OSError) as exc:
            msg = f"model {card.name}/{card.version}: cannot load {card.model_file}: {exc}"
            raise ConfigurationError(msg) from exc
        self._check_inputs()
        self._output, self._is_zipmap, self._column = self._pick_output()
        self._output_names = [self._output]

    def _check_inputs(self) -> None:
        card = self.card
        session_inputs = {i.name: i for i in self._session.get_inputs()}
        expected = set(card.input_names)
        if set(session_inputs) != expected:
            msg = (
                f"model {card.name}/{card.version}: ONNX inputs {sorted(session_inputs)} differ "
                f"from the model card's {sorted(expected)}"
            )
            raise ConfigurationError(msg)
        for binding in card.bindings:
            node = session_inputs[binding.input]
            if node.type != ONNX_TYPES[binding.dtype]:
                msg = (
                    f"model {card.name}/{card.version}: input {binding.input!r} is {node.type} "
                    f"in the graph, the card says {binding.dtype}"
                )
                raise ConfigurationError(msg)
            width = len([b for b in card.bindings if b.input == binding.input])
            shape = node.shape
            if len(shape) != 2 or (isinstance(shape[1], int) and shape[1] != width):
                msg = (
                    f"model {card.name}/{card.version}: input {binding.input!r} has shape "
                    f"{shape}; expected [N, {width}]"
                )
                raise ConfigurationError(msg)

    def _pick_output(self) -> tuple[str, bool, int]:
        card = self.card
        outputs = {o.name: o for o in self._session.get_outputs()}
        kind = card.policy.output
        name = card.output_name
        if name is None:
            names = VALUE_OUTPUT_NAMES if kind == "regression" else PROBABILITY_OUTPUT_NAMES
            name = next((n for n in names if n in outputs), None)
        if name is None or name not in outputs:
            what = "value" if kind == "regression" else "probability"
            msg = (
                f"model {card.name}/{card.version}: no {what} output "
                f"(card names {card.output_name!r}; graph has {sorted(outputs)}; "
                f"output.type {kind})"
            )
            raise ConfigurationError(msg)
        node = outputs[name]
        if kind != "binary":
            return name, False, self._check_output_type(name, node.type, node.shape)
        if node.type.startswith("seq(map"):
            log.warning(
                "zipmap_output_detected",
                model=card.name,
                version=card.version,
                output=name,
                hint="re-export with zipmap disabled (skl2onnx options {'zipmap': False}); "
                "ZipMap costs 13-26% of inference time",
            )
            return name, True, card.positive_class_index
        if node.type not in ("tensor(float)", "tensor(double)"):
            msg = f"model {card.name}/{card.version}: output {name!r} is {node.type}, not float"
            raise ConfigurationError(msg)
        shape = node.shape
        if len(shape) == 1:
            return name, False, -1
        if len(shape) == 2 and shape[1] == 1:
            return name, False, 0
        if len(shape) == 2:
            if isinstance(shape[1], int) and shape[1] > 2:
                msg = (
                    f"model {card.name}/{card.version}: output {name!r} has {shape[1]} classes "
                    f"({shape}); the card declares output.type binary: declare multiclass"
                )
                raise ConfigurationError(msg)
            return name, False, card.positive_class_index
        msg = f"model {card.name}/{card.version}: output {name!r} has shape {shape}"
        raise ConfigurationError(msg)

    def _check_output_type(self, name: str, node_type: str, shape: list[Any]) -> int:
        """The column to read for a multiclass or regression card; refuses a mismatched graph."""
        card = self.card
        policy = card.policy
        where = f"model {card.name}/{card.version}: output {name!r} is {node_type} {shape}"
        if node_type not in ("tensor(float)", "tensor(double)"):
            msg = f"{where}; output.type {policy.output} needs a float tensor (ZipMap off)"
            raise ConfigurationError(msg)
        if policy.output == "multiclass":
            classes = len(policy.labels)
            if len(shape) != 2 or (isinstance(shape[1], int) and shape[1] != classes):
                msg = f"{where}; output.type multiclass with {classes} labels needs [N, {classes}]"
                raise ConfigurationError(msg)
            return ALL_COLUMNS
        if len(shape) == 1:
            return -1
        if len(shape) == 2 and shape[1] == 1:
            return 0
        msg = f"{where}; output.type regression needs one value per event ([N] or [N, 1])"
        raise ConfigurationError(msg)

    @property
    def output_name(self) -> str:
        """Name of the ONNX output read as probability."""
        return self._output

    @property
    def is_zipmap(self) -> bool:
        """True when the output is a ZipMap sequence of maps (slow)."""
        return self._is_zipmap

    def score(self, inputs: Mapping[str, NDArray[Any]]) -> NDArray[np.float64]:
        """Run the model once on the whole batch.

        Raises:
            ModelError: The run failed or returned the wrong number of rows.
        """
        n = len(next(iter(inputs.values())))
        if n == 0:
            return np.empty(0, dtype=np.float64)
        try:
            (raw,) = self._session.run(self._output_names, dict(inputs))
        except RUN_ERRORS as exc:
            msg = f"model {self.card.name}/{self.card.version} failed on a batch of {n}: {exc}"
            raise ModelError(msg) from exc
        if self._is_zipmap:
            key = self._column
            scores = np.array([row.get(key, row.get(str(key), np.nan)) for row in raw])
        else:
            array = np.asarray(raw)
            scores = array if self._column < 0 else array[:, self._column]
        if self._column == ALL_COLUMNS:  # class probabilities, [N, C]
            if scores.ndim != 2 or len(scores) != n:
                msg = (
                    f"model {self.card.name}/{self.card.version} returned {scores.shape} "
                    f"class probabilities for {n} rows"
                )
                raise ModelError(msg)
            return scores.astype(np.float64, copy=False)
        if scores.shape != (n,):
            msg = (
                f"model {self.card.name}/{self.card.version} returned {scores.shape} scores "
                f"for {n} rows"
            )
            raise ModelError(msg)
        return scores.astype(np.float64, copy=False)

    def warm_up(self, inputs: Mapping[str, NDArray[Any]]) -> None:
        """Run one batch to allocate buffers before the first real batch.

        Raises:
            ConfigurationError: The model cannot score even a valid batch.
        """
        try:
            self.score(inputs)
        except ModelError as exc:
            msg = f"model {self.card.name}/{self.card.version} failed its warm-up batch: {exc}"
            raise ConfigurationError(msg) from exc
