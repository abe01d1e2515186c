"""What every training script under ``models/`` does the same way (needs the ``train`` extra).

Export a fitted scikit-learn pipeline with one ``[None, 1]`` input per event field and the
opset imports in a fixed order, so that a seeded run writes the same bytes every time; check
onnxruntime against scikit-learn on the holdout; pick a threshold by precision; hash files;
write ``model.json``. Each script keeps what is its own: data, pipeline, card content and the
Markdown view. The scripts import this file by path (``models/`` is not a package), as they
import ``example_events.py``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from numpy.typing import NDArray
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType, StringTensorType
from sklearn.metrics import precision_recall_curve, roc_auc_score
from sklearn.pipeline import Pipeline

__all__ = [
    "binary_metrics",
    "check_agreement",
    "choose_threshold",
    "export_pipeline",
    "onnx_session",
    "sha256_of",
    "sort_opsets",
    "write_card_json",
]


def sort_opsets(model: onnx.ModelProto) -> None:
    """Sort the model's opset imports by domain, in place.

    skl2onnx emits them in set order, which follows Python's string hash seed, so the same
    model could serialise to different bytes (and SHA-256) from run to run.

    Args:
        model: The model to fix up.
    """
    imports = sorted(((o.domain, o.version) for o in model.opset_import), key=lambda dv: dv[0])
    del model.opset_import[:]
    for domain, version in imports:
        model.opset_import.add(domain=domain, version=version)


def export_pipeline(
    pipe: Pipeline,
    graph_name: str,
    features: Sequence[tuple[str, ...]],
    target_opset: int,
    doc_string: str,
    classifier_step: str | None = None,
) -> onnx.ModelProto:
    """Convert a fitted pipeline: one ``[None, 1]`` input per field, ZipMap off, opsets sorted.

    Args:
        pipe: The fitted pipeline; its column ``i`` is ``features[i]``.
        graph_name: The graph's name (``<model>-<version>``).
        features: ``(field, kind, ...)`` in input order; kind ``"string"`` makes a string
            input, any other a float one.
        target_opset: The default domain's opset (``ai.onnx.ml`` is 3).
        doc_string: The graph's doc string.
        classifier_step: The classifier's step name, whose ZipMap output is turned off (a
            sequence of maps costs 13-26 % at batch 512); None for a regressor.

    Returns:
        The ONNX model.
    """
    initial_types: list[tuple[str, Any]] = [
        (f[0], StringTensorType([None, 1]) if f[1] == "string" else FloatTensorType([None, 1]))
        for f in features
    ]
    options = None
    if classifier_step is not None:
        options = {id(pipe.named_steps[classifier_step]): {"zipmap": False}}
    model = convert_sklearn(
        pipe,
        name=graph_name,
        initial_types=initial_types,
        options=options,
        target_opset={"": target_opset, "ai.onnx.ml": 3},
    )
    model.doc_string = doc_string
    sort_opsets(model)
    return model


def onnx_session(path: Path) -> ort.InferenceSession:
    """An onnxruntime session on one CPU thread, as the checks run it."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_agreement(
    onnx_values: NDArray[Any], sklearn_values: NDArray[Any], max_abs_diff: float
) -> float:
    """The largest difference between the exported graph's outputs and scikit-learn's.

    Raises:
        RuntimeError: It exceeds ``max_abs_diff``: the export changed what the model says.
    """
    diff = float(np.max(np.abs(onnx_values - sklearn_values)))
    if diff > max_abs_diff:
        msg = f"onnxruntime differs from scikit-learn by {diff:.3g} > {max_abs_diff}"
        raise RuntimeError(msg)
    return diff


def choose_threshold(
    y: NDArray[np.bool_], score: NDArray[np.float64], target_precision: float, decimals: int
) -> float:
    """The lowest score whose holdout precision is at least ``target_precision``.

    Flagging is ``score >= threshold``. The value is rounded down to ``decimals``, which can
    only add flags.

    Raises:
        RuntimeError: No threshold reaches the precision.
    """
    precision, _, thresholds = precision_recall_curve(y, score)
    ok = np.flatnonzero(precision[:-1] >= target_precision)
    if ok.size == 0:
        msg = f"no threshold reaches precision {target_precision}"
        raise RuntimeError(msg)
    scale = 10**decimals
    return float(np.floor(thresholds[ok[0]] * scale) / scale)


def binary_metrics(
    y: NDArray[np.bool_], score: NDArray[np.float64], threshold: float, max_diff: float
) -> dict[str, float]:
    """A binary card's holdout ``metrics``: AUC, precision, recall and share flagged at the
    threshold, and the ONNX/scikit-learn difference (rounded as the shipped cards are)."""
    flagged = score >= threshold
    tp = int(np.sum(flagged & y))
    return {
        "holdout_auc": round(float(roc_auc_score(y, score)), 6),
        "precision_at_threshold": round(tp / max(1, int(flagged.sum())), 6),
        "recall_at_threshold": round(tp / max(1, int(y.sum())), 6),
        "flagged_rate": round(float(flagged.mean()), 6),
        "onnx_vs_sklearn_max_abs_diff": float(f"{max_diff:.3g}"),
    }


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_card_json(card: dict[str, Any], folder: Path) -> None:
    """Write ``folder/model.json``: two-space indent, key order as built, final newline."""
    (folder / "model.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
