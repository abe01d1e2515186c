"""Train the fraud model on synthetic transactions and export it to ONNX with its model card.

Run from the repository root (``make model`` does)::

    .venv/bin/python models/train_fraud.py

What it does:

1. Draws ``N_TRAIN`` events with ``TransactionGenerator(seed=TRAIN_SEED)`` and ``N_HOLDOUT``
   with ``TransactionGenerator(seed=HOLDOUT_SEED)``.
2. Fits a scikit-learn ``Pipeline``: a ``ColumnTransformer`` (one-hot for string and enum fields,
   a constant ``SimpleImputer`` for nullable numbers, passthrough for the other numbers and the
   booleans as 0/1) followed by a ``GradientBoostingClassifier``.
3. Exports the whole pipeline with skl2onnx, one ONNX input per event field named as the Avro
   field, shape ``[None, 1]``, ZipMap disabled: outputs ``label`` [N] int64 and
   ``probabilities`` [N, 2] float32.
4. Checks onnxruntime against ``predict_proba`` on the holdout, picks the threshold, computes
   the holdout metrics, and writes ``models/fraud/1/{model.onnx,model.json,MODEL_CARD.md}``.
5. Freezes the reference statistics the stream watches drift against (histogram bins per input
   from the training events and for the score from the holdout, categories with an ``other``
   bucket, null rates, the spread of PSI over reference chunks) into ``model.json`` under
   ``reference`` (:mod:`stream_scorer.monitoring.reference`).

``--reference-only`` does step 5 alone for the model already on disk: it regenerates the same
seeded events, scores the holdout with the existing ``model.onnx`` (left byte-identical) and
rewrites only the ``reference`` key of ``model.json``.

Everything is seeded: two runs print the same metrics.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Final

import numpy as np
import onnx
import onnxruntime as ort
import skl2onnx
import sklearn
from numpy.typing import NDArray
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType, StringTensorType
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.metrics import precision_recall_curve, roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from stream_scorer.devtools.generate import TransactionGenerator  # noqa: E402
from stream_scorer.integrity import external_data_locations  # noqa: E402
from stream_scorer.monitoring.perf import expected_performance  # noqa: E402
from stream_scorer.monitoring.reference import build_reference  # noqa: E402

# Where the model version lives: models/<name>/<version>/ (``--version`` picks another).
MODEL_NAME: Final = "fraud"
MODEL_VERSION: Final = "1"
OUT_DIR: Final = REPO_ROOT / "models" / MODEL_NAME / MODEL_VERSION

# Rows of the golden set every card carries (``models validate`` reproduces them).
GOLDEN_ROWS: Final = 64
# Seed of the golden set's generator (``--golden N``): apart from train and holdout draws.
GOLDEN_SEED: Final = 20260303
# Tolerance on a golden score when ``models validate`` reproduces it (float32 graph).
GOLDEN_TOLERANCE: Final = 1e-5

# Seeds of the two independent generators; different so the holdout shares no draws.
TRAIN_SEED: Final = 20260101
HOLDOUT_SEED: Final = 20260202

# Events drawn for training and for the holdout (threshold choice and metrics).
N_TRAIN: Final = 200_000
N_HOLDOUT: Final = 50_000

# Expected share of fraud in both sets: the generator's default, the production base rate.
FRAUD_RATE: Final = 0.01

# Seed of the estimator (GradientBoostingClassifier with subsample < 1 draws rows).
MODEL_SEED: Final = 0

# Gradient boosting: enough trees for the signal, shallow enough for a few µs per row.
HYPERPARAMETERS: Final[dict[str, Any]] = {
    "n_estimators": 120,
    "max_depth": 4,
    "learning_rate": 0.1,
    "subsample": 0.5,
    "min_samples_leaf": 20,
    "random_state": MODEL_SEED,
}

# Threshold rule: the lowest holdout score whose precision is at least this (most recall).
TARGET_PRECISION: Final = 0.80

# Decimals the threshold is rounded down to, so the card shows a readable number.
THRESHOLD_DECIMALS: Final = 4

# ONNX opset for the default domain; the ai.onnx.ml domain follows skl2onnx's choice.
TARGET_OPSET: Final = 17

# Tolerance for onnxruntime vs scikit-learn probabilities on the holdout.
MAX_ABS_DIFF: Final = 1e-5

# Value that stands for null in nullable numeric fields; real values are never negative.
MISSING_FILL: Final = -1.0

# Model inputs in graph order: (Avro field, kind). Kinds: "string" one-hot encoded, "number"
# passed through, "nullable" imputed in the graph, "boolean" fed as float 0/1. Ids, names, IP,
# device id, MCC (one-to-one with the category), currency (follows country) and event time
# are left out on purpose.
FEATURES: Final = (
    ("amount", "number"),
    ("merchant_category", "string"),
    ("channel", "string"),
    ("card_present", "boolean"),
    ("country", "string"),
    ("home_country", "string"),
    ("distance_from_home_km", "nullable"),
    ("txn_count_1h", "number"),
    ("seconds_since_last_txn", "nullable"),
    ("is_new_device", "boolean"),
)


# The card's event identity: the alert's event id and event time come from these fields.
EVENT: Final = {"id_field": "transaction_id", "time_field": "event_time"}


def to_columns(events: list[dict[str, Any]]) -> dict[str, NDArray[Any]]:
    """Gather the model's fields from events into one ``(n, 1)`` array per ONNX input.

    Strings stay ``object`` (ONNX string tensors); numbers and booleans become float32 with
    NaN for null. This is what the service's featurize stage must do too.

    Args:
        events: Decoded transaction events.

    Returns:
        Input name to ``(n, 1)`` array.
    """
    cols: dict[str, NDArray[Any]] = {}
    for name, kind in FEATURES:
        values = [e[name] for e in events]
        if kind == "string":
            cols[name] = np.array(values, dtype=object).reshape(-1, 1)
        else:
            arr = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float32)
            cols[name] = arr.reshape(-1, 1)
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
    return np.hstack([cols[name].astype(object) for name, _ in FEATURES])


def build_pipeline(hyperparameters: dict[str, Any] = HYPERPARAMETERS) -> Pipeline:
    """Build the unfitted preprocessing + gradient boosting pipeline.

    Args:
        hyperparameters: Of the ``GradientBoostingClassifier``.

    Returns:
        The pipeline; column indices follow :data:`FEATURES`.
    """
    idx = {kind: [i for i, (_, k) in enumerate(FEATURES) if k == kind] for _, kind in FEATURES}
    pre = ColumnTransformer(
        [
            ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False), idx["string"]),
            (
                "impute",
                SimpleImputer(strategy="constant", fill_value=MISSING_FILL),
                idx["nullable"],
            ),
            ("numbers", "passthrough", idx["number"] + idx["boolean"]),
        ],
        sparse_threshold=0.0,
    )
    return Pipeline([("pre", pre), ("gbdt", GradientBoostingClassifier(**hyperparameters))])


def export_onnx(pipe: Pipeline, version: str = MODEL_VERSION) -> onnx.ModelProto:
    """Convert the fitted pipeline: one ``[None, 1]`` input per field, ZipMap off.

    Args:
        pipe: The fitted pipeline.
        version: The model version, in the graph's name.

    Returns:
        The ONNX model.
    """
    initial_types: list[tuple[str, Any]] = [
        (name, StringTensorType([None, 1]) if kind == "string" else FloatTensorType([None, 1]))
        for name, kind in FEATURES
    ]
    model = convert_sklearn(
        pipe,
        name=f"{MODEL_NAME}-{version}",
        initial_types=initial_types,
        options={id(pipe.named_steps["gbdt"]): {"zipmap": False}},
        target_opset={"": TARGET_OPSET, "ai.onnx.ml": 3},
    )
    model.doc_string = "Card fraud score; see model.json and MODEL_CARD.md next to this file."
    sort_opsets(model)
    return model


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


def choose_threshold(y: NDArray[np.bool_], score: NDArray[np.float64]) -> float:
    """Pick the lowest score whose holdout precision is at least :data:`TARGET_PRECISION`.

    Flagging is ``score >= threshold``. The value is rounded down to
    :data:`THRESHOLD_DECIMALS`, which can only add flags.

    Args:
        y: Ground truth.
        score: Fraud probabilities.

    Returns:
        The threshold.
    """
    precision, _, thresholds = precision_recall_curve(y, score)
    ok = np.flatnonzero(precision[:-1] >= TARGET_PRECISION)
    if ok.size == 0:
        msg = f"no threshold reaches precision {TARGET_PRECISION}"
        raise RuntimeError(msg)
    scale = 10**THRESHOLD_DECIMALS
    return float(np.floor(thresholds[ok[0]] * scale) / scale)


def file_hashes(onnx_path: Path) -> dict[str, str]:
    """The card's ``files``: sha256 of model.onnx and of every external-data file it loads.

    Args:
        onnx_path: The written model; external locations resolve against its folder.

    Returns:
        File name (as the graph names it) to hex digest, model.onnx first.
    """
    # The scorer's own reader of the graph, so training and serving agree on the file list.
    locations = external_data_locations(onnx_path.read_bytes())
    names = ["model.onnx", *locations]
    return {name: sha256_of(onnx_path.parent / name) for name in names}


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file.

    Args:
        path: The file.

    Returns:
        The digest.
    """
    return hashlib.sha256(path.read_bytes()).hexdigest()


def calibration_check(
    y: NDArray[np.bool_], score: NDArray[np.float64], threshold: float
) -> dict[str, Any]:
    """How far the label-free estimates (expected precision and recall at the threshold, from
    the scores alone) are from the realized ones on the holdout: the check the stream's
    CBPE-style estimate rests on (:mod:`stream_scorer.monitoring.perf`)."""
    flagged = score >= threshold
    precision, recall = expected_performance(
        int(flagged.sum()), float(score[flagged].sum()), float(score.sum())
    )
    tp = int(np.sum(flagged & y))
    return {
        "threshold": threshold,
        "n": len(score),
        "expected_precision": None if precision is None else round(precision, 6),
        "realized_precision": round(tp / max(1, int(flagged.sum())), 6),
        "expected_recall": None if recall is None else round(recall, 6),
        "realized_recall": round(tp / max(1, int(y.sum())), 6),
        "mean_score": round(float(score.mean()), 6),
        "positive_rate": round(float(y.mean()), 6),
    }


def reference_section(
    train_cols: dict[str, NDArray[Any]],
    hold_score: NDArray[np.float64],
    y_hold: NDArray[np.bool_],
    threshold: float,
) -> dict[str, Any]:
    """The card's ``reference``: frozen bins per input (training events) and for the score
    (holdout scores, which are what a live window of scores is compared with), and the
    calibration check on the holdout.

    Args:
        train_cols: Output of :func:`to_columns` on the training events.
        hold_score: The ONNX model's scores on the holdout events.
        y_hold: The holdout labels.
        threshold: The card's threshold.
    """
    section = build_reference(
        {name: train_cols[name].reshape(-1) for name, _ in FEATURES},
        {name: "categorical" if kind == "string" else "numeric" for name, kind in FEATURES},
        hold_score,
        source=(
            f"inputs: {N_TRAIN} training events (seed {TRAIN_SEED}); score: {N_HOLDOUT} "
            f"holdout events (seed {HOLDOUT_SEED})"
        ),
    )
    section["calibration"] = calibration_check(y_hold, hold_score, threshold)
    return section


def reference_only() -> None:
    """Add (or refresh) the ``reference`` key of the existing model's card; nothing else
    changes, ``model.onnx`` is only read."""
    train_events, _ = TransactionGenerator(seed=TRAIN_SEED, fraud_rate=FRAUD_RATE).generate(N_TRAIN)
    hold_events, y_hold = TransactionGenerator(seed=HOLDOUT_SEED, fraud_rate=FRAUD_RATE).generate(
        N_HOLDOUT
    )
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    onnx_path = OUT_DIR / "model.onnx"
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    (proba,) = sess.run(["probabilities"], to_columns(hold_events))
    card_path = OUT_DIR / "model.json"
    card = json.loads(card_path.read_text(encoding="utf-8"))
    if card.get("sha256") != sha256_of(onnx_path):
        msg = f"{onnx_path} does not match its card's sha256: retrain instead"
        raise RuntimeError(msg)
    card["reference"] = reference_section(
        to_columns(train_events), proba[:, 1].astype(np.float64), y_hold, card["threshold"]
    )
    card_path.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    print(f"reference written to {card_path}")


# The card's people-facing fields (Model Card Toolkit / Hugging Face template), written into
# every version's model.json.
CARD_TEXT: Final[dict[str, Any]] = {
    "intended_use": (
        "Demonstrate and test the stream-scorer service: score synthetic card authorisations "
        "(schemas/transaction.avsc) and flag those at or above the threshold for review."
    ),
    "out_of_scope": [
        "Any decision on real payments or real people: the model has never seen real data.",
        "Declining transactions automatically: a flag is a request for review, not a verdict.",
    ],
    "owners": ["stream-scorer maintainers"],
    "assumptions": [
        "Events follow the generator's distribution (fraud rate about 1 %).",
        "Amounts are in the transaction currency; the model sees currency only via country.",
    ],
    "limitations": [
        "Synthetic data only: the fraud patterns are the generator's, learnable but noisy.",
        "The threshold is chosen on the holdout the metrics are reported on (slightly "
        "optimistic precision and recall; AUC unaffected).",
        "No calibration beyond what gradient boosting gives: scores are not rates.",
    ],
    "ethical_considerations": [
        "Country and home country are inputs: on real data they could stand in for nationality; "
        "check flag rates by country (the slices below) before any such use.",
    ],
}


def slice_metrics(
    values: NDArray[Any],
    y: NDArray[np.bool_],
    score: NDArray[np.float64],
    threshold: float,
    top: int,
) -> dict[str, dict[str, float | None]]:
    """Holdout metrics per value of one field (the ``top`` most frequent values).

    Args:
        values: The field's value per holdout event.
        y: Labels.
        score: Scores.
        threshold: The chosen threshold.
        top: How many values (by frequency) to report.

    Returns:
        ``{value: {n, fraud_rate, auc, recall_at_threshold, flagged_rate}}``.
    """
    names, counts = np.unique(values.astype(str), return_counts=True)
    out: dict[str, dict[str, float | None]] = {}
    for name in names[np.argsort(-counts, kind="stable")][:top]:
        rows = values.astype(str) == name
        ys, ss = y[rows], score[rows]
        flagged = ss >= threshold
        both = 0 < int(ys.sum()) < len(ys)
        out[str(name)] = {
            "n": int(rows.sum()),
            "fraud_rate": round(float(ys.mean()), 5),
            "auc": round(float(roc_auc_score(ys, ss)), 4) if both else None,
            "recall_at_threshold": round(float((flagged & ys).sum() / max(1, int(ys.sum()))), 4),
            "flagged_rate": round(float(flagged.mean()), 5),
        }
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line: which version to write, with how many trees, with a golden set.

    The defaults rebuild ``models/fraud/1`` exactly as shipped.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--version", default=MODEL_VERSION, help="model version folder")
    parser.add_argument(
        "--trees", type=int, default=HYPERPARAMETERS["n_estimators"], help="boosting rounds"
    )
    parser.add_argument(
        "--golden", type=int, default=GOLDEN_ROWS, help="rows of golden set written into the card"
    )
    return parser.parse_args(argv)


def golden_set(pipe_session: ort.InferenceSession, n: int) -> dict[str, Any]:
    """Inputs and their expected scores, for ``models validate`` to reproduce.

    Args:
        pipe_session: The exported model's session.
        n: Rows to draw (from their own generator seed).

    Returns:
        The card's ``golden_set`` object: inputs by field, expected scores, tolerance.
    """
    events, _ = TransactionGenerator(seed=GOLDEN_SEED, fraud_rate=0.2).generate(n)
    cols = to_columns(events)
    _, proba = pipe_session.run(["label", "probabilities"], cols)
    rows = [{name: events[i][name] for name, _ in FEATURES} for i in range(n)]
    return {
        "seed": GOLDEN_SEED,
        "tolerance": GOLDEN_TOLERANCE,
        "inputs": rows,
        "expected_scores": [float(f"{p:.9g}") for p in proba[:, 1]],
    }


def write_cards(card: dict[str, Any], out_dir: Path) -> None:
    """Write model.json and the MODEL_CARD.md view of it.

    Args:
        card: The content of model.json.
        out_dir: The version folder.
    """
    (out_dir / "model.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    # The view `stream-scorer models card` renders, so the two never disagree.
    from stream_scorer.lifecycle.card import render_card  # noqa: PLC0415
    from stream_scorer.model_card import ModelCard  # noqa: PLC0415

    text = render_card(ModelCard.load(out_dir))
    (out_dir / "MODEL_CARD.md").write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    """Train, export, verify and write the model version directory (``--reference-only``:
    only recompute the card's reference statistics)."""
    if "--reference-only" in (sys.argv[1:] if argv is None else argv):
        reference_only()
        return
    args = parse_args(argv)
    version = str(args.version)
    out_dir = REPO_ROOT / "models" / MODEL_NAME / version
    hyperparameters = {**HYPERPARAMETERS, "n_estimators": args.trees}
    t0 = time.perf_counter()
    train_events, y_train = TransactionGenerator(seed=TRAIN_SEED, fraud_rate=FRAUD_RATE).generate(
        N_TRAIN
    )
    hold_events, y_hold = TransactionGenerator(seed=HOLDOUT_SEED, fraud_rate=FRAUD_RATE).generate(
        N_HOLDOUT
    )
    train_cols = to_columns(train_events)
    hold_cols = to_columns(hold_events)
    print(
        f"data: {N_TRAIN} train ({y_train.mean():.4f} fraud), {N_HOLDOUT} holdout "
        f"({y_hold.mean():.4f} fraud) in {time.perf_counter() - t0:.1f}s"
    )

    t1 = time.perf_counter()
    pipe = build_pipeline(hyperparameters)
    pipe.fit(to_matrix(train_cols), y_train)
    print(f"fit: {time.perf_counter() - t1:.1f}s")

    sk_proba = pipe.predict_proba(to_matrix(hold_cols))[:, 1]

    model = export_onnx(pipe, version)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / "model.onnx"
    onnx_path.write_bytes(model.SerializeToString())

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    label, proba = sess.run(["label", "probabilities"], hold_cols)
    score = proba[:, 1].astype(np.float64)
    max_diff = float(np.max(np.abs(score - sk_proba)))
    if max_diff > MAX_ABS_DIFF:
        msg = f"onnxruntime differs from scikit-learn by {max_diff:.3g} > {MAX_ABS_DIFF}"
        raise RuntimeError(msg)

    threshold = choose_threshold(y_hold, score)
    flagged = score >= threshold
    tp = int(np.sum(flagged & y_hold))
    metrics = {
        "holdout_auc": round(float(roc_auc_score(y_hold, score)), 6),
        "precision_at_threshold": round(tp / max(1, int(flagged.sum())), 6),
        "recall_at_threshold": round(tp / max(1, int(y_hold.sum())), 6),
        "flagged_rate": round(float(flagged.mean()), 6),
        "onnx_vs_sklearn_max_abs_diff": float(f"{max_diff:.3g}"),
    }
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    card: dict[str, Any] = {
        "name": MODEL_NAME,
        "version": version,
        "description": (
            "Card-fraud probability for one authorisation: scikit-learn preprocessing "
            "(one-hot, imputation) and gradient-boosted trees in one ONNX graph, trained on "
            "synthetic transactions."
        ),
        "input_layout": "per_field",
        "inputs": [
            {
                "name": name,
                "field": name,
                "dtype": "string" if kind == "string" else "float32",
                "missing": "nan" if kind == "nullable" else "reject",
            }
            for name, kind in FEATURES
        ],
        "output": {"name": "probabilities", "positive_class_index": 1},
        # Which fields identify an event in alerts; the Kafka key (card id) is the key.
        "event": EVENT,
        "threshold": threshold,
        "training": {
            "script": "models/train_fraud.py",
            "generator": "stream_scorer.devtools.generate.TransactionGenerator",
            "train_seed": TRAIN_SEED,
            "holdout_seed": HOLDOUT_SEED,
            "n_train": N_TRAIN,
            "n_holdout": N_HOLDOUT,
            "fraud_rate": FRAUD_RATE,
            "estimator": "sklearn.ensemble.GradientBoostingClassifier",
            "hyperparameters": hyperparameters,
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
        # Every file the model loads; the scorer refuses any file missing here.
        "files": file_hashes(onnx_path),
        "reference": reference_section(train_cols, score, y_hold, threshold),
    }
    if args.golden:
        card["golden_set"] = golden_set(sess, args.golden)
    card.update(CARD_TEXT)
    card["slices"] = {
        "channel": slice_metrics(hold_cols["channel"].ravel(), y_hold, score, threshold, 8),
        "country": slice_metrics(hold_cols["country"].ravel(), y_hold, score, threshold, 6),
    }
    write_cards(card, out_dir)

    print(f"labels agree with sklearn: {np.array_equal(label, pipe.predict(to_matrix(hold_cols)))}")
    print(f"outputs: {[(o.name, o.shape, o.type) for o in sess.get_outputs()]}")
    print(json.dumps({"threshold": threshold, **metrics}, indent=2))
    print(f"model.onnx: {onnx_path.stat().st_size} bytes, sha256 {card['sha256']}")
    print(f"total: {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
