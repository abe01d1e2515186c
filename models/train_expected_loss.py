"""Train the expected-loss regressor on synthetic insurance claims; export it with its card.

The regression example: the eventual cost of a claim in EUR, from its first notice of loss
(``schemas/claim_event.avsc``). Its card declares ``output.type = "regression"`` and bands over
the predicted value: ``LOW`` (not published) < ``MEDIUM`` < ``HIGH`` (both published, so the
claims team sees the expensive ones at once). Run from the repository root (``make model``)::

    .venv/bin/python models/train_expected_loss.py

What it does:

1. Draws ``N_TRAIN`` claims with ``models/example_events.py``'s ``claims`` (seed ``TRAIN_SEED``)
   and ``N_HOLDOUT`` with seed ``HOLDOUT_SEED``: the cost follows a seeded log-linear model of
   the claim type, the declared amount, the policy's age, prior claims, a police report and the
   region (null for an unknown region, filled with ``"unknown"`` exactly as the card tells the
   service to).
2. Fits a scikit-learn ``Pipeline``: one-hot for the two strings, the numbers passed through,
   and a ``GradientBoostingRegressor``.
3. Exports it with skl2onnx, one ``[None, 1]`` input per field: ``variable`` ``[N, 1]`` float.
4. Checks onnxruntime against ``predict``, sets the band edges at the holdout's
   :data:`MEDIUM_QUANTILE` and :data:`HIGH_QUANTILE` quantiles of the prediction, rounded to
   whole euros, and writes ``models/expected_loss/1/{model.onnx,model.json,MODEL_CARD.md}``.

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
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.metrics import mean_absolute_error, r2_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "models"))

from example_events import CLAIM_TYPES, REGIONS, claims  # noqa: E402
from training import (  # noqa: E402
    check_agreement,
    export_pipeline,
    onnx_session,
    sha256_of,
    write_card_json,
)

MODEL_NAME: Final = "expected_loss"
MODEL_VERSION: Final = "1"
OUT_DIR: Final = REPO_ROOT / "models" / MODEL_NAME / MODEL_VERSION

TRAIN_SEED: Final = 20260601
HOLDOUT_SEED: Final = 20260602
N_TRAIN: Final = 30_000
N_HOLDOUT: Final = 10_000

#: What a null region becomes, before the graph, as the card's fill says.
REGION_FILL: Final = "unknown"
#: Share of claims below MEDIUM and below HIGH on the holdout.
MEDIUM_QUANTILE: Final = 0.8
HIGH_QUANTILE: Final = 0.95
HYPERPARAMETERS: Final[dict[str, Any]] = {
    "n_estimators": 120,
    "max_depth": 3,
    "learning_rate": 0.1,
    "subsample": 0.8,
    "random_state": 0,
}
TARGET_OPSET: Final = 17
#: float32 trees against float64 scikit-learn, on values of thousands of euros.
MAX_ABS_DIFF: Final = 0.05

# Model inputs in graph order: (Avro field, kind, the card's null policy).
FEATURES: Final[tuple[tuple[str, str, Any], ...]] = (
    ("claim_type", "string", "reject"),
    ("region", "string", {"fill": REGION_FILL}),
    ("claimed_amount", "number", "reject"),
    ("policy_age_months", "number", "reject"),
    ("prior_claims", "number", "reject"),
    ("has_police_report", "boolean", "reject"),
)


def to_columns(events: list[dict[str, Any]]) -> dict[str, NDArray[Any]]:
    """One ``(n, 1)`` array per ONNX input, nulls filled per the card, as the service does."""
    cols: dict[str, NDArray[Any]] = {}
    for name, kind, policy in FEATURES:
        values = [e[name] for e in events]
        if isinstance(policy, dict):
            values = [policy["fill"] if v is None else v for v in values]
        if kind == "string":
            cols[name] = np.array(values, dtype=object).reshape(-1, 1)
        else:
            cols[name] = np.array([float(v) for v in values], dtype=np.float32).reshape(-1, 1)
    return cols


def to_matrix(cols: dict[str, NDArray[Any]]) -> NDArray[np.object_]:
    """The object matrix scikit-learn trains on; column ``i`` is ONNX input ``i``."""
    return np.hstack([cols[name].astype(object) for name, _, _ in FEATURES])


def build_pipeline() -> Pipeline:
    """One-hot for the strings (every known value listed), numbers through, boosted trees."""
    pre = ColumnTransformer(
        [
            (
                "onehot",
                OneHotEncoder(
                    categories=[list(CLAIM_TYPES), [*REGIONS, REGION_FILL]],
                    handle_unknown="ignore",
                    sparse_output=False,
                ),
                [0, 1],
            ),
            ("numbers", "passthrough", [2, 3, 4, 5]),
        ],
        sparse_threshold=0.0,
    )
    return Pipeline([("pre", pre), ("gbr", GradientBoostingRegressor(**HYPERPARAMETERS))])


def export_onnx(pipe: Pipeline) -> onnx.ModelProto:
    """Convert the fitted pipeline: one ``[None, 1]`` input per field; output ``variable``."""
    return export_pipeline(
        pipe, f"{MODEL_NAME}-{MODEL_VERSION}", FEATURES, TARGET_OPSET,
        "Expected claim cost in EUR; see model.json and MODEL_CARD.md.",
    )  # fmt: skip


def main() -> None:
    """Train, export, verify and write the model version directory."""
    train, y_train = claims(N_TRAIN, TRAIN_SEED)
    hold, y_hold = claims(N_HOLDOUT, HOLDOUT_SEED)
    pipe = build_pipeline()
    pipe.fit(to_matrix(to_columns(train)), y_train)
    hold_cols = to_columns(hold)
    sk_pred = pipe.predict(to_matrix(hold_cols))

    model = export_onnx(pipe)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    onnx_path = OUT_DIR / "model.onnx"
    onnx_path.write_bytes(model.SerializeToString())
    session = onnx_session(onnx_path)
    outputs = [o.name for o in session.get_outputs()]
    (pred,) = session.run(["variable"], hold_cols)
    pred = pred[:, 0].astype(np.float64)
    max_diff = check_agreement(pred, sk_pred, MAX_ABS_DIFF)

    medium = float(np.round(np.quantile(pred, MEDIUM_QUANTILE)))
    high = float(np.round(np.quantile(pred, HIGH_QUANTILE)))
    metrics = {
        "holdout_mae_eur": round(float(mean_absolute_error(y_hold, pred)), 2),
        "holdout_r2": round(float(r2_score(y_hold, pred)), 6),
        "published_rate": round(float(np.mean(pred >= medium)), 6),
        "high_rate": round(float(np.mean(pred >= high)), 6),
        "onnx_vs_sklearn_max_abs_diff": float(f"{max_diff:.3g}"),
    }
    card: dict[str, Any] = {
        "name": MODEL_NAME,
        "version": MODEL_VERSION,
        "description": (
            "Expected eventual cost of an insurance claim in EUR, from its first notice of "
            "loss: one-hot encoding and gradient-boosted regression trees in one ONNX graph, "
            "trained on synthetic claims. Publishes the MEDIUM and HIGH bands."
        ),
        "input_layout": "per_field",
        "inputs": [
            {
                "name": name,
                "field": name,
                "dtype": "string" if kind == "string" else "float32",
                "missing": policy,
            }
            for name, kind, policy in FEATURES
        ],
        "output": {"name": "variable", "type": "regression"},
        "decision": {
            "bands": [
                {"name": "LOW", "publish": False},
                {"name": "MEDIUM", "from": medium, "publish": True},
                {"name": "HIGH", "from": high, "publish": True},
            ]
        },
        "event": {"id_field": "claim_id", "time_field": "event_time", "key_field": "policy_id"},
        "training": {
            "script": "models/train_expected_loss.py",
            "generator": "models/example_events.py:claims",
            "train_seed": TRAIN_SEED,
            "holdout_seed": HOLDOUT_SEED,
            "n_train": N_TRAIN,
            "n_holdout": N_HOLDOUT,
            "estimator": "sklearn.ensemble.GradientBoostingRegressor",
            "hyperparameters": HYPERPARAMETERS,
            "band_rule": (
                f"MEDIUM from the holdout's {MEDIUM_QUANTILE} quantile of the prediction, HIGH "
                f"from its {HIGH_QUANTILE} quantile, rounded to whole euros"
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
    print(json.dumps({"outputs": outputs, "medium": medium, "high": high, **metrics}, indent=2))


def write_model_card(card: dict[str, Any], path: Path) -> None:
    """The human-readable card, from the machine-readable one."""
    m, t = card["metrics"], card["training"]
    bands = card["decision"]["bands"]
    rows = "\n".join(f"| {k} | {v} |" for k, v in m.items())
    path.write_text(
        f"""# Model card: {card["name"]} v{card["version"]}

{card["description"]}

## Intended use

Scores first notices of loss (`schemas/claim_event.avsc`) in stream-scorer and publishes an
alert for every claim expected to cost at least {bands[1]["from"]:.0f} EUR, banded MEDIUM or
HIGH (from {bands[2]["from"]:.0f} EUR) (`examples/expected_loss.toml`). Synthetic data only: a
demonstration of the regression output type, not a reserving model.

## Output and decision

- `variable`: float32 `[N, 1]`, the expected cost in EUR.
- `output.type` regression; bands over the value: `LOW` (not published) <
  {bands[1]["from"]:.0f} <= `MEDIUM` < {bands[2]["from"]:.0f} <= `HIGH`. Rule: {t["band_rule"]}.
- A null `region` is filled with `"{REGION_FILL}"` before the graph, as in training.

## Training data

Generator `{t["generator"]}`: train {t["n_train"]:,} claims (seed {t["train_seed"]}), holdout
{t["n_holdout"]:,} (seed {t["holdout_seed"]}). Estimator: {t["estimator"]}.

## Holdout metrics

| metric | value |
|---|---|
{rows}

## Rebuild

`make model` (runs `.venv/bin/python models/train_expected_loss.py`); seeded end to end.

`model.onnx` SHA-256: `{card["sha256"]}`.
""",
        encoding="utf-8",
    )


if __name__ == "__main__":
    main()
