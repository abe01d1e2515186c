"""Build the small ONNX models the unit tests load, each with a model.json card.

Run from the repository root::

    .venv/bin/python tests/data/make_test_models.py

Writes ``tests/data/models/<name>/<version>/{model.onnx,model.json}``:

* ``tensor/1``: LogisticRegression on one float input ``features`` ``[None, 4]``
  (``input_layout: tensor`` with a ``feature_order``), ZipMap off.
* ``zipmap/1``: the same classifier exported with ZipMap on (output ``probabilities`` is a
  sequence of maps), so tests can check that start-up detects it.
* ``unbindable/1``: a ``per_field`` model whose second input is named ``not_a_field``, which
  transaction.avsc does not have; start-up must refuse it.

Seeded: reruns give the same weights (and, with this converter, the same bytes).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Final

import numpy as np
import onnx
import onnxruntime as ort
import skl2onnx
import sklearn
from numpy.typing import NDArray
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from stream_scorer.devtools.generate import TransactionGenerator  # noqa: E402

# Output root: tests/data/models/<name>/<version>/.
MODELS_DIR: Final = Path(__file__).resolve().parent / "models"

# Generator seeds and sizes: small, the models only need to be real, not good.
SEED: Final = 11
HOLDOUT_SEED: Final = 12
N_EVENTS: Final = 20_000
N_HOLDOUT: Final = 5_000

# A higher fraud rate than production so a linear model has something to fit.
FRAUD_RATE: Final = 0.05

# Fields of the tensor model, in column order.
FEATURE_ORDER: Final = ("amount", "txn_count_1h", "distance_from_home_km", "card_present")

# ONNX opset for the default domain.
TARGET_OPSET: Final = 17

# Threshold written in the test cards (any value in (0, 1) will do for tests).
THRESHOLD: Final = 0.5


def feature_matrix(seed: int, n: int) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """Generate events and keep those with a distance, as a ``(n, 4)`` float32 matrix.

    Args:
        seed: Generator seed.
        n: Events to draw (about 10 % are dropped for a null distance).

    Returns:
        The features in :data:`FEATURE_ORDER` and the labels.
    """
    events, labels = TransactionGenerator(seed=seed, fraud_rate=FRAUD_RATE).generate(n)
    keep = [i for i, e in enumerate(events) if e["distance_from_home_km"] is not None]
    x = np.array([[float(events[i][f]) for f in FEATURE_ORDER] for i in keep], dtype=np.float32)
    return x, labels[keep]


def sort_opsets(model: onnx.ModelProto) -> None:
    """Sort opset imports by domain: skl2onnx emits them in hash-seed order.

    Args:
        model: The model to fix up, in place.
    """
    imports = sorted(((o.domain, o.version) for o in model.opset_import), key=lambda dv: dv[0])
    del model.opset_import[:]
    for domain, version in imports:
        model.opset_import.add(domain=domain, version=version)


def holdout_metrics(
    sess: ort.InferenceSession,
    feeds: dict[str, NDArray[np.float32]],
    sk_score: NDArray[np.float64],
    y: NDArray[np.bool_],
) -> dict[str, float]:
    """Compute the card's metrics on the holdout at :data:`THRESHOLD`.

    Args:
        sess: Session on the written model.
        feeds: Holdout inputs by name.
        sk_score: scikit-learn's positive-class probabilities for the same rows.
        y: Holdout labels.

    Returns:
        The ``metrics`` object of the card.
    """
    out = sess.run(None, feeds)[1]
    if isinstance(out, list):  # ZipMap: one {class: probability} map per row
        score = np.array([row[1] for row in out], dtype=np.float64)
    else:
        score = np.asarray(out, dtype=np.float64)[:, 1]
    flagged = score >= THRESHOLD
    tp = int(np.sum(flagged & y))
    return {
        "holdout_auc": round(float(roc_auc_score(y, score)), 6),
        "precision_at_threshold": round(tp / max(1, int(flagged.sum())), 6),
        "recall_at_threshold": round(tp / max(1, int(y.sum())), 6),
        "flagged_rate": round(float(flagged.mean()), 6),
        "onnx_vs_sklearn_max_abs_diff": float(f"{np.max(np.abs(score - sk_score)):.3g}"),
    }


def write_model(
    name: str,
    model: onnx.ModelProto,
    description: str,
    layout: str,
    inputs: list[dict[str, Any]],
    output_name: str,
    check: tuple[dict[str, NDArray[np.float32]], NDArray[np.float64], NDArray[np.bool_]],
    extra: dict[str, Any] | None = None,
) -> None:
    """Write ``model.onnx`` and a ``model.json`` shaped like models/fraud/1/model.json.

    Args:
        name: Model name (the folder); the version is always "1".
        model: The ONNX model.
        description: One sentence.
        layout: ``tensor`` or ``per_field``.
        inputs: The card's ``inputs`` list.
        output_name: The ONNX output that holds the probabilities.
        check: Holdout feeds, scikit-learn scores and labels, for the metrics.
        extra: Keys placed right after ``inputs`` (``feature_order``).
    """
    out_dir = MODELS_DIR / name / "1"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "model.onnx"
    sort_opsets(model)
    path.write_bytes(model.SerializeToString())
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    card: dict[str, Any] = {
        "name": name,
        "version": "1",
        "description": description,
        "input_layout": layout,
        "inputs": inputs,
        **(extra or {}),
        "output": {"name": output_name, "positive_class_index": 1},
        "threshold": THRESHOLD,
        "training": {
            "script": "tests/data/make_test_models.py",
            "generator": "stream_scorer.devtools.generate.TransactionGenerator",
            "train_seed": SEED,
            "holdout_seed": HOLDOUT_SEED,
            "n_train": N_EVENTS,
            "n_holdout": N_HOLDOUT,
            "fraud_rate": FRAUD_RATE,
            "estimator": "sklearn.linear_model.LogisticRegression",
            "hyperparameters": {"max_iter": 1000},
            "threshold_rule": "fixed at 0.5 for tests",
        },
        "metrics": holdout_metrics(sess, *check),
        "versions": {
            "scikit-learn": sklearn.__version__,
            "skl2onnx": skl2onnx.__version__,
            "onnx": onnx.__version__,
            "opset": opset,
        },
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        # Every file the model loads (these graphs keep their weights inline).
        "files": {"model.onnx": hashlib.sha256(path.read_bytes()).hexdigest()},
    }
    (out_dir / "model.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    print(f"{out_dir.relative_to(REPO_ROOT)}: {path.stat().st_size} bytes, {card['metrics']}")


def main() -> None:
    """Build and write the three test models."""
    x, y = feature_matrix(SEED, N_EVENTS)
    x_hold, y_hold = feature_matrix(HOLDOUT_SEED, N_HOLDOUT)
    opsets = {"": TARGET_OPSET, "ai.onnx.ml": 3}

    clf = LogisticRegression(max_iter=1000).fit(x, y)
    tensor_types = [("features", FloatTensorType([None, len(FEATURE_ORDER)]))]
    tensor_check = ({"features": x_hold}, clf.predict_proba(x_hold)[:, 1], y_hold)
    tensor_inputs = [{"name": "features", "dtype": "float32"}]
    order = {"feature_order": list(FEATURE_ORDER)}

    plain = convert_sklearn(
        clf,
        name="tensor-1",
        initial_types=tensor_types,
        options={id(clf): {"zipmap": False}},
        target_opset=opsets,
    )
    write_model(
        "tensor",
        plain,
        "Test fixture: logistic regression on one [N, 4] float tensor, ZipMap off.",
        "tensor",
        tensor_inputs,
        "probabilities",
        tensor_check,
        order,
    )

    # skl2onnx's default with ZipMap: outputs output_label and output_probability (maps).
    zipped = convert_sklearn(clf, name="zipmap-1", initial_types=tensor_types, target_opset=opsets)
    write_model(
        "zipmap",
        zipped,
        "Test fixture: the tensor model exported with ZipMap on (a sequence of maps).",
        "tensor",
        tensor_inputs,
        "output_probability",
        tensor_check,
        order,
    )

    # Per-field model whose second input is not a transaction field (it carries
    # txn_count_1h's values under a name start-up cannot bind).
    fields = ("amount", "not_a_field")
    pipe = Pipeline(
        [
            ("pre", ColumnTransformer([("numbers", "passthrough", [0, 1])])),
            ("lr", LogisticRegression(max_iter=1000)),
        ]
    ).fit(x[:, :2], y)
    unbindable = convert_sklearn(
        pipe,
        name="unbindable-1",
        initial_types=[(f, FloatTensorType([None, 1])) for f in fields],
        options={id(pipe.named_steps["lr"]): {"zipmap": False}},
        target_opset=opsets,
    )
    per_field_check = (
        {f: x_hold[:, i : i + 1] for i, f in enumerate(fields)},
        pipe.predict_proba(x_hold[:, :2])[:, 1],
        y_hold,
    )
    write_model(
        "unbindable",
        unbindable,
        "Test fixture: a per_field model with an input that is not in transaction.avsc.",
        "per_field",
        [{"name": f, "field": f, "dtype": "float32", "missing": "reject"} for f in fields],
        "probabilities",
        per_field_check,
    )


if __name__ == "__main__":
    main()
