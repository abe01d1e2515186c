"""Train the top-k recommender on synthetic product views; export it to ONNX with its card.

The multiclass example: which product category a shopper buys next, from one product view
(``schemas/product_view.avsc``). Its card declares ``output.type = "multiclass"`` with the six
category labels and ``decision.top_k = 3``, and two bands over the top category's
probability: ``LOW`` (not published) and ``RECOMMEND`` (published, with the top three
categories). Run from the repository root (``make model`` does)::

    .venv/bin/python models/train_recommender.py

What it does:

1. Draws ``N_TRAIN`` views with ``models/example_events.py``'s ``product_views`` (seed
   ``TRAIN_SEED``) and ``N_HOLDOUT`` with seed ``HOLDOUT_SEED``: the next category follows a
   seeded multinomial logit of the viewed category, price, device, session length, hour and
   membership.
2. Fits a scikit-learn ``Pipeline``: one-hot for the two enums, the numbers passed through,
   and a multinomial ``LogisticRegression``.
3. Exports it with skl2onnx, one ``[None, 1]`` input per field, ZipMap off: ``probabilities``
   ``[N, 6]`` float32, columns in :data:`LABELS` order.
4. Checks onnxruntime against ``predict_proba``, picks the ``RECOMMEND`` edge (the holdout's
   :data:`PUBLISH_QUANTILE` quantile of the top probability) and writes
   ``models/recommender/1/{model.onnx,model.json,MODEL_CARD.md}``.

Everything is seeded: two runs write the same bytes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Final

import numpy as np
import onnx
import skl2onnx
import sklearn
from numpy.typing import NDArray
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "models"))

from example_events import CATEGORIES, DEVICES, product_views  # noqa: E402
from training import (  # noqa: E402
    check_agreement,
    export_pipeline,
    onnx_session,
    sha256_of,
    write_card_json,
)

MODEL_NAME: Final = "recommender"
MODEL_VERSION: Final = "1"
OUT_DIR: Final = REPO_ROOT / "models" / MODEL_NAME / MODEL_VERSION

TRAIN_SEED: Final = 20260501
HOLDOUT_SEED: Final = 20260502
N_TRAIN: Final = 40_000
N_HOLDOUT: Final = 10_000

#: The card's class labels (what a recommendation says), by output column.
LABELS: Final = ("electronics", "books", "fashion", "home", "sports", "toys")
#: Categories published per recommendation.
TOP_K: Final = 3
#: Share of holdout views below the RECOMMEND edge: recommend for the most confident fifth.
PUBLISH_QUANTILE: Final = 0.8
#: The edge is rounded down to this many decimals, which can only add recommendations.
EDGE_DECIMALS: Final = 2
TARGET_OPSET: Final = 17
MAX_ABS_DIFF: Final = 1e-5

# Model inputs in graph order: (Avro field, kind). Strings are one-hot encoded in the graph.
FEATURES: Final = (
    ("category", "string"),
    ("device", "string"),
    ("price", "number"),
    ("session_views", "number"),
    ("hour_of_day", "number"),
    ("is_member", "boolean"),
)


def to_columns(events: list[dict[str, Any]]) -> dict[str, NDArray[Any]]:
    """One ``(n, 1)`` array per ONNX input, as the service's featurize stage builds them."""
    cols: dict[str, NDArray[Any]] = {}
    for name, kind in FEATURES:
        values = [e[name] for e in events]
        if kind == "string":
            cols[name] = np.array(values, dtype=object).reshape(-1, 1)
        else:
            cols[name] = np.array([float(v) for v in values], dtype=np.float32).reshape(-1, 1)
    return cols


def to_matrix(cols: dict[str, NDArray[Any]]) -> NDArray[np.object_]:
    """The object matrix scikit-learn trains on; column ``i`` is ONNX input ``i``."""
    return np.hstack([cols[name].astype(object) for name, _ in FEATURES])


def build_pipeline() -> Pipeline:
    """One-hot for the enums (every schema symbol known), numbers through, multinomial logit."""
    strings = [i for i, (_, kind) in enumerate(FEATURES) if kind == "string"]
    numbers = [i for i, (_, kind) in enumerate(FEATURES) if kind != "string"]
    pre = ColumnTransformer(
        [
            (
                "onehot",
                OneHotEncoder(
                    categories=[list(CATEGORIES), list(DEVICES)],
                    handle_unknown="ignore",
                    sparse_output=False,
                ),
                strings,
            ),
            ("numbers", "passthrough", numbers),
        ],
        sparse_threshold=0.0,
    )
    return Pipeline([("pre", pre), ("logit", LogisticRegression(max_iter=2000, C=1.0))])


def export_onnx(pipe: Pipeline) -> onnx.ModelProto:
    """Convert the fitted pipeline: one ``[None, 1]`` input per field, ZipMap off."""
    return export_pipeline(
        pipe, f"{MODEL_NAME}-{MODEL_VERSION}", FEATURES, TARGET_OPSET,
        "Next-category recommender; see model.json and MODEL_CARD.md.", classifier_step="logit",
    )  # fmt: skip


def main() -> None:
    """Train, export, verify and write the model version directory."""
    train, y_train = product_views(N_TRAIN, TRAIN_SEED)
    hold, y_hold = product_views(N_HOLDOUT, HOLDOUT_SEED)
    pipe = build_pipeline()
    pipe.fit(to_matrix(to_columns(train)), y_train)
    hold_cols = to_columns(hold)
    sk_proba = pipe.predict_proba(to_matrix(hold_cols))

    model = export_onnx(pipe)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    onnx_path = OUT_DIR / "model.onnx"
    onnx_path.write_bytes(model.SerializeToString())
    (proba,) = onnx_session(onnx_path).run(["probabilities"], hold_cols)
    max_diff = check_agreement(proba, sk_proba, MAX_ABS_DIFF)

    top = proba.max(axis=1).astype(np.float64)
    scale = 10**EDGE_DECIMALS
    edge = float(np.floor(np.quantile(top, PUBLISH_QUANTILE) * scale) / scale)
    ranked = np.argsort(-proba, axis=1, kind="stable")[:, :TOP_K]
    published = top >= edge
    metrics = {
        "holdout_top1_accuracy": round(float(np.mean(ranked[:, 0] == y_hold)), 6),
        "holdout_top3_hit_rate": round(float(np.mean((ranked == y_hold[:, None]).any(1))), 6),
        "holdout_log_loss": round(float(log_loss(y_hold, sk_proba)), 6),
        "published_rate": round(float(published.mean()), 6),
        "top1_accuracy_when_published": round(
            float(np.mean(ranked[published, 0] == y_hold[published])), 6
        ),
        "onnx_vs_sklearn_max_abs_diff": float(f"{max_diff:.3g}"),
    }
    card: dict[str, Any] = {
        "name": MODEL_NAME,
        "version": MODEL_VERSION,
        "description": (
            "Which product category a shopper buys next, from one product view: one-hot "
            "encoding and a multinomial logistic regression in one ONNX graph, trained on "
            "synthetic views. Publishes the top three categories when the top one is likely."
        ),
        "input_layout": "per_field",
        "inputs": [
            {
                "name": name,
                "field": name,
                "dtype": "string" if kind == "string" else "float32",
                "missing": "reject",
            }
            for name, kind in FEATURES
        ],
        "output": {"name": "probabilities", "type": "multiclass", "labels": list(LABELS)},
        "decision": {
            "top_k": TOP_K,
            "bands": [
                {"name": "LOW", "publish": False},
                {"name": "RECOMMEND", "from": edge, "publish": True},
            ],
        },
        "event": {"id_field": "event_id", "time_field": "event_time", "key_field": "user_id"},
        "training": {
            "script": "models/train_recommender.py",
            "generator": "models/example_events.py:product_views",
            "train_seed": TRAIN_SEED,
            "holdout_seed": HOLDOUT_SEED,
            "n_train": N_TRAIN,
            "n_holdout": N_HOLDOUT,
            "estimator": "sklearn.linear_model.LogisticRegression (multinomial)",
            "edge_rule": (
                f"RECOMMEND from the holdout's {PUBLISH_QUANTILE} quantile of the top class's "
                f"probability, rounded down to {EDGE_DECIMALS} decimals"
            ),
        },
        "metrics": metrics,
        "versions": {
            "scikit-learn": sklearn.__version__,
            "skl2onnx": skl2onnx.__version__,
            "onnx": onnx.__version__,
            "opset": TARGET_OPSET,
        },
        "sha256": sha256_of(onnx_path),
    }
    write_card_json(card, OUT_DIR)
    write_model_card(card, OUT_DIR / "MODEL_CARD.md")
    print(json.dumps({"recommend_from": edge, **metrics}, indent=2))


def write_model_card(card: dict[str, Any], path: Path) -> None:
    """The human-readable card, from the machine-readable one."""
    m, t = card["metrics"], card["training"]
    edge = card["decision"]["bands"][1]["from"]
    rows = "\n".join(f"| {k} | {v} |" for k, v in m.items())
    path.write_text(
        f"""# Model card: {card["name"]} v{card["version"]}

{card["description"]}

## Intended use

Scores product views (`schemas/product_view.avsc`) in stream-scorer and, when the most likely
next category has a probability of at least {edge}, publishes a recommendation alert with the
top {TOP_K} categories and their probabilities (`examples/recommender.toml`). Synthetic data
only: a demonstration of the multiclass output type, not a production recommender.

## Output and decision

- `probabilities`: float32 `[N, 6]`, columns {", ".join(card["output"]["labels"])}.
- `output.type` multiclass; `decision.top_k` {TOP_K}; bands over the top probability:
  `LOW` (not published) < {edge} <= `RECOMMEND` (published). Rule: {t["edge_rule"]}.

## Training data

Generator `{t["generator"]}`: train {t["n_train"]:,} views (seed {t["train_seed"]}), holdout
{t["n_holdout"]:,} (seed {t["holdout_seed"]}). Estimator: {t["estimator"]}.

## Holdout metrics

| metric | value |
|---|---|
{rows}

## Rebuild

`make model` (runs `.venv/bin/python models/train_recommender.py`); seeded end to end.

`model.onnx` SHA-256: `{card["sha256"]}`.
""",
        encoding="utf-8",
    )


if __name__ == "__main__":
    main()
