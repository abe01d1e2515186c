"""Train the churn model on synthetic usage snapshots; export it to ONNX with its model card.

The second shipped example: a telecom team's model over its own schema
(``schemas/churn_event.avsc``), served by stream-scorer through configuration alone
(``examples/churn.toml``). Run from the repository root (``make model`` does)::

    .venv/bin/python models/train_churn.py

What it does:

1. Draws ``N_TRAIN`` snapshots with ``ChurnGenerator(seed=TRAIN_SEED)`` and ``N_HOLDOUT``
   with ``ChurnGenerator(seed=HOLDOUT_SEED)`` (a separate customer population).
2. Applies each input's null policy (:data:`FEATURES`), exactly as the card tells the service
   to: ``{"fill": VALUE}`` inputs get VALUE for null before the graph, ``nan`` inputs get NaN.
3. Fits a scikit-learn ``Pipeline``: a ``ColumnTransformer`` (one-hot with
   ``handle_unknown="ignore"`` for the enums, a constant ``SimpleImputer`` for the ``nan``
   input, passthrough for the other numbers and the boolean as 0/1) followed by a
   ``GradientBoostingClassifier`` (HistGradientBoosting does not export with this skl2onnx).
4. Exports the pipeline with skl2onnx, one ``[None, 1]`` input per field named as the Avro
   field, ZipMap disabled: outputs ``label`` [N] int64 and ``probabilities`` [N, 2] float32.
5. Checks onnxruntime against ``predict_proba`` on the holdout, picks the threshold, computes
   the holdout metrics, and writes ``models/churn/1/{model.onnx,model.json,MODEL_CARD.md}``.

Everything is seeded: two runs print the same metrics and write the same bytes.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Final

import numpy as np
import onnx
import skl2onnx
import sklearn
from numpy.typing import NDArray
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "models"))

from training import (  # noqa: E402
    binary_metrics,
    check_agreement,
    choose_threshold,
    export_pipeline,
    onnx_session,
    sha256_of,
    write_card_json,
)

from stream_scorer.devtools.churn import ChurnGenerator  # noqa: E402

# Where the model version lives: models/<name>/<version>/.
MODEL_NAME: Final = "churn"
MODEL_VERSION: Final = "1"
OUT_DIR: Final = REPO_ROOT / "models" / MODEL_NAME / MODEL_VERSION

# Seeds of the two generators; different so the holdout is another customer population.
TRAIN_SEED: Final = 20260301
HOLDOUT_SEED: Final = 20260402

# Snapshots drawn for training and for the holdout (threshold choice and metrics).
N_TRAIN: Final = 100_000
N_HOLDOUT: Final = 30_000

# Seed of the estimator (GradientBoostingClassifier with subsample < 1 draws rows).
MODEL_SEED: Final = 0

# Gradient boosting: shallow trees, enough of them for the logistic signal.
HYPERPARAMETERS: Final[dict[str, Any]] = {
    "n_estimators": 150,
    "max_depth": 3,
    "learning_rate": 0.1,
    "subsample": 0.8,
    "min_samples_leaf": 50,
    "random_state": MODEL_SEED,
}

# Threshold rule: the lowest holdout score whose precision is at least this. A retention
# offer is cheap next to a lost customer, so three in five flagged customers may be false
# alarms; at 0.5 the model would flag about 0.6 % of snapshots and catch 4 % of churners.
TARGET_PRECISION: Final = 0.4

# Decimals the threshold is rounded down to, so the card shows a readable number.
THRESHOLD_DECIMALS: Final = 4

# ONNX opset for the default domain; the ai.onnx.ml domain follows skl2onnx's choice.
TARGET_OPSET: Final = 17

# Tolerance for onnxruntime vs scikit-learn probabilities on the holdout.
MAX_ABS_DIFF: Final = 1e-5

# What the graph's own imputer puts in place of NaN for the "nan" input: never a real value.
GRAPH_IMPUTE: Final = -1.0

# Model inputs in graph order: (Avro field, kind, the card's null policy). Kinds: "string"
# one-hot encoded in the graph, "number" passed through (after the service's fill, if any),
# "boolean" fed as float 0/1. The policy is written to the card as is and applied here to the
# training data the same way, so the service feeds the model what it was trained on:
# - contract: null means the billing system does not know the term; "none" is its own
#   category for the one-hot encoder.
# - data_usage_gb: a late usage feed; real usage is never exactly 0, so trees tell a filled
#   0 from any measured value.
# - last_plan_change_days: never changed plan; NaN for the graph's imputer (constant -1).
# Ids, the array and map fields and the event time are left out on purpose.
FEATURES: Final[tuple[tuple[str, str, Any], ...]] = (
    ("plan", "string", "reject"),
    ("contract", "string", {"fill": "none"}),
    ("tenure_months", "number", "reject"),
    ("monthly_charges", "number", "reject"),
    ("data_usage_gb", "number", {"fill": 0}),
    ("support_calls_30d", "number", "reject"),
    ("has_autopay", "boolean", "reject"),
    ("last_plan_change_days", "number", "nan"),
)

# The card's event identity: the alert's event id and event time come from these fields.
EVENT: Final = {"id_field": "event_id", "time_field": "event_time", "key_field": "customer_id"}


def null_value(name: str, policy: Any) -> Any:
    """What a null in ``name`` becomes under the card's ``policy`` (as the service does it).

    Args:
        name: The field.
        policy: ``"reject"``, ``"nan"`` or ``{"fill": VALUE}``.

    Returns:
        The fill value, or NaN for ``"nan"``.

    Raises:
        ValueError: The policy is ``reject``: the generator must not produce that null.
    """
    if isinstance(policy, dict):
        return policy["fill"]
    if policy == "nan":
        return np.nan
    msg = f"null in {name!r}, whose policy is {policy!r}"
    raise ValueError(msg)


def to_columns(events: list[dict[str, Any]]) -> dict[str, NDArray[Any]]:
    """Gather the model's fields into one ``(n, 1)`` array per ONNX input, nulls per policy.

    Strings stay ``object`` (ONNX string tensors); numbers and booleans become float32. This
    is what the service's featurize stage does with the card written below.

    Args:
        events: Usage snapshots.

    Returns:
        Input name to ``(n, 1)`` array.
    """
    cols: dict[str, NDArray[Any]] = {}
    for name, kind, policy in FEATURES:
        values = [e[name] for e in events]
        if any(v is None for v in values):
            fill = null_value(name, policy)
            values = [fill if v is None else v for v in values]
        if kind == "string":
            cols[name] = np.array(values, dtype=object).reshape(-1, 1)
        else:
            cols[name] = np.array([float(v) for v in values], dtype=np.float32).reshape(-1, 1)
    return cols


def to_matrix(cols: dict[str, NDArray[Any]]) -> NDArray[np.object_]:
    """Stack the per-input arrays into the object matrix scikit-learn trains on.

    Column ``i`` is ONNX input ``i``: skl2onnx maps integer column indices onto the inputs in
    order, which is how the graph gets one input per field without pandas.

    Args:
        cols: Output of :func:`to_columns`.

    Returns:
        ``(n, len(FEATURES))`` object array; numbers are float32 values.
    """
    return np.hstack([cols[name].astype(object) for name, _, _ in FEATURES])


def build_pipeline() -> Pipeline:
    """Build the unfitted preprocessing + gradient boosting pipeline.

    Returns:
        The pipeline; column indices follow :data:`FEATURES`.
    """
    strings = [i for i, (_, kind, _) in enumerate(FEATURES) if kind == "string"]
    imputed = [i for i, (_, _, policy) in enumerate(FEATURES) if policy == "nan"]
    numbers = [
        i for i, (_, kind, policy) in enumerate(FEATURES) if kind != "string" and policy != "nan"
    ]
    pre = ColumnTransformer(
        [
            ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False), strings),
            ("impute", SimpleImputer(strategy="constant", fill_value=GRAPH_IMPUTE), imputed),
            ("numbers", "passthrough", numbers),
        ],
        sparse_threshold=0.0,
    )
    return Pipeline([("pre", pre), ("gbdt", GradientBoostingClassifier(**HYPERPARAMETERS))])


def export_onnx(pipe: Pipeline) -> onnx.ModelProto:
    """Convert the fitted pipeline: one ``[None, 1]`` input per field, ZipMap off."""
    return export_pipeline(
        pipe, f"{MODEL_NAME}-{MODEL_VERSION}", FEATURES, TARGET_OPSET,
        "Telecom churn score; see model.json and MODEL_CARD.md next to this file.",
        classifier_step="gbdt",
    )  # fmt: skip


# One line per input for the human-readable card.
_INPUT_NOTES: Final = {
    "plan": "enum symbol, one-hot",
    "contract": "enum symbol, one-hot; null (unknown term) → `none`, its own category",
    "tenure_months": "int as float",
    "monthly_charges": "EUR",
    "data_usage_gb": "null (late usage feed) → 0, a value real usage never takes",
    "support_calls_30d": "int as float",
    "has_autopay": "boolean as 0/1",
    "last_plan_change_days": "null (never changed) → NaN → imputed in the graph (-1)",
}


def write_model_card(card: dict[str, Any], ml_opset: int, path: Path) -> None:
    """Write the human-readable model card from the machine-readable one.

    Args:
        card: The content of model.json.
        ml_opset: Version of the ``ai.onnx.ml`` opset the graph imports.
        path: Where MODEL_CARD.md goes.
    """
    m = card["metrics"]
    t = card["training"]
    v = card["versions"]
    e = card["event"]
    rows = "\n".join(
        f"| `{i['name']}` | {i['dtype']} | `{json.dumps(i['missing'])}` | "
        f"{_INPUT_NOTES[i['name']]} |"
        for i in card["inputs"]
    )
    hyper = ", ".join(f"{k}={v!r}" for k, v in t["hyperparameters"].items())
    text = f"""# Model card: {card["name"]} v{card["version"]}

{card["description"]}

## Intended use

Scores monthly usage snapshots of telecom customers (`schemas/churn_event.avsc`) in the
stream-scorer service and flags those whose probability of churning within 30 days is at or
above the threshold, for a retention offer. It is the project's second example, run by
configuration alone (`examples/churn.toml`). It is trained only on synthetic data from
`stream_scorer.devtools.churn.ChurnGenerator`: use it to demonstrate and test the service,
never to decide about real customers.

## Inputs

`input_layout: per_field`: one ONNX input per event field, each named exactly as the Avro
field, shape `[N, 1]`. The encoders and the imputer live in the graph; the service gathers
columns and applies each input's null policy.

| input | dtype | missing | notes |
|---|---|---|---|
{rows}

- `"reject"`: a null is a per-event error (dead letter). `{{"fill": VALUE}}`: the service
  puts VALUE in place of a null, exactly as the training script did. `"nan"`: the service
  passes NaN and the graph's imputer replaces it ({GRAPH_IMPUTE}).
- Booleans are fed as float32 0.0/1.0. Unknown enum symbols are ignored by the one-hot
  encoders (`handle_unknown="ignore"`), not rejected.
- Not used: `event_id`, `customer_id`, `dropped_call_minutes` (array), `device_attrs` (map) and
  `event_time`; the decoder skips the array and the map without materialising them.

## Event identity

`event`: id `{e["id_field"]}`, time `{e["time_field"]}`, key `{e["key_field"]}` (also the Kafka
key the producer uses).

## Output

- `probabilities`: float32 `[N, 2]`; column {card["output"]["positive_class_index"]} is the
  churn probability (the score).
- `label`: int64 `[N]`, the argmax (a 0.5 cut); not the decision: apply the threshold below to
  the score instead.
- ZipMap is disabled (a plain tensor, no sequence of maps).

## Threshold

`{card["threshold"]}`, flag when `score >= threshold`. Rule: {t["threshold_rule"]}.

## Training data

- Generator `{t["generator"]}`.
- Train: {t["n_train"]:,} snapshots, seed {t["train_seed"]}, churn rate {t["churn_rate_train"]}.
- Holdout: {t["n_holdout"]:,} snapshots, seed {t["holdout_seed"]} (another customer
  population), churn rate {t["churn_rate_holdout"]}.
- Estimator: `{t["estimator"]}` ({hyper}).

## Holdout metrics

| metric | value |
|---|---|
| ROC AUC | {m["holdout_auc"]:.4f} |
| precision at threshold | {m["precision_at_threshold"]:.4f} |
| recall at threshold | {m["recall_at_threshold"]:.4f} |
| flagged rate | {m["flagged_rate"]:.5f} |
| max abs diff onnxruntime vs scikit-learn | {m["onnx_vs_sklearn_max_abs_diff"]:.2e} |

## Limitations

- Synthetic data only: the churn drivers are the generator's logistic model, learnable but
  noisy. Real churn depends on competitors' offers and on what the customer never tells you.
- The threshold is chosen on the same holdout the metrics are reported on, so precision and
  recall at the threshold are slightly optimistic; the AUC is not affected.
- Snapshots of one customer are scored independently: the model has no memory of earlier
  months beyond what the snapshot carries.

## Versions

scikit-learn {v["scikit-learn"]}, skl2onnx {v["skl2onnx"]}, onnx {v["onnx"]};
ONNX opset {v["opset"]} (ai.onnx.ml {ml_opset}).

`model.onnx` SHA-256: `{card["sha256"]}`.

## Rebuild

```
make model        # runs .venv/bin/python models/train_churn.py (and the fraud model's script)
```

The script is seeded end to end: a rerun gives the same metrics, threshold and bytes.
"""
    path.write_text(text, encoding="utf-8")


def main() -> None:
    """Train, export, verify and write the model version directory."""
    t0 = time.perf_counter()
    train_events, y_train = ChurnGenerator(seed=TRAIN_SEED).generate(N_TRAIN)
    hold_events, y_hold = ChurnGenerator(seed=HOLDOUT_SEED).generate(N_HOLDOUT)
    train_cols = to_columns(train_events)
    hold_cols = to_columns(hold_events)
    print(
        f"data: {N_TRAIN} train ({y_train.mean():.4f} churn), {N_HOLDOUT} holdout "
        f"({y_hold.mean():.4f} churn) in {time.perf_counter() - t0:.1f}s"
    )

    t1 = time.perf_counter()
    pipe = build_pipeline()
    pipe.fit(to_matrix(train_cols), y_train)
    print(f"fit: {time.perf_counter() - t1:.1f}s")

    sk_proba = pipe.predict_proba(to_matrix(hold_cols))[:, 1]

    model = export_onnx(pipe)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    onnx_path = OUT_DIR / "model.onnx"
    onnx_path.write_bytes(model.SerializeToString())

    sess = onnx_session(onnx_path)
    label, proba = sess.run(["label", "probabilities"], hold_cols)
    score = proba[:, 1].astype(np.float64)
    max_diff = check_agreement(score, sk_proba, MAX_ABS_DIFF)

    threshold = choose_threshold(y_hold, score, TARGET_PRECISION, THRESHOLD_DECIMALS)
    metrics = binary_metrics(y_hold, score, threshold, max_diff)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    card: dict[str, Any] = {
        "name": MODEL_NAME,
        "version": MODEL_VERSION,
        "description": (
            "Probability that a telecom customer churns within 30 days, from one monthly "
            "usage snapshot: scikit-learn preprocessing (one-hot, imputation) and "
            "gradient-boosted trees in one ONNX graph, trained on synthetic snapshots."
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
        "output": {"name": "probabilities", "positive_class_index": 1},
        "event": EVENT,
        "threshold": threshold,
        "training": {
            "script": "models/train_churn.py",
            "generator": "stream_scorer.devtools.churn.ChurnGenerator",
            "train_seed": TRAIN_SEED,
            "holdout_seed": HOLDOUT_SEED,
            "n_train": N_TRAIN,
            "n_holdout": N_HOLDOUT,
            "churn_rate_train": round(float(y_train.mean()), 6),
            "churn_rate_holdout": round(float(y_hold.mean()), 6),
            "estimator": "sklearn.ensemble.GradientBoostingClassifier",
            "hyperparameters": HYPERPARAMETERS,
            "threshold_rule": (
                f"lowest holdout score with precision >= {TARGET_PRECISION} (maximum recall at "
                f"that precision), rounded down to {THRESHOLD_DECIMALS} decimals"
            ),
        },
        "metrics": metrics,
        "versions": {
            "scikit-learn": sklearn.__version__,
            "skl2onnx": skl2onnx.__version__,
            "onnx": onnx.__version__,
            "opset": opset,
        },
        "sha256": sha256_of(onnx_path),
    }
    write_card_json(card, OUT_DIR)
    ml_opset = next(o.version for o in model.opset_import if o.domain == "ai.onnx.ml")
    write_model_card(card, ml_opset, OUT_DIR / "MODEL_CARD.md")

    print(f"labels agree with sklearn: {np.array_equal(label, pipe.predict(to_matrix(hold_cols)))}")
    print(f"outputs: {[(o.name, o.shape, o.type) for o in sess.get_outputs()]}")
    print(json.dumps({"threshold": threshold, **metrics}, indent=2))
    print(f"model.onnx: {onnx_path.stat().st_size} bytes, sha256 {card['sha256']}")
    print(f"total: {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
