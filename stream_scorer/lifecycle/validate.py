"""``models validate``: gates a version must pass before it may serve.

Each gate is PASS, FAIL or SKIP (nothing to check, e.g. no golden set in the card), with the
value measured and the bound it was held to:

``card``, ``hashes`` (every file the card hashes), ``binds`` (to the reader schema), ``loads``
(onnxruntime session checked against the card, warm-up batch), ``golden set`` (the card's
inputs reproduce its expected scores within its tolerance), ``scores in range`` (every score a
probability), ``auc`` / ``precision`` / ``recall`` (on labelled data: at least the card's
``floors``, less two standard errors; else at least its holdout metrics, and no worse than the
champion's, each less an allowance), ``batch p99`` (time of one batch of
``batch.max_size`` rows) and ``alert rate`` (within a factor of the champion's).

The allowance below a floor or the champion is the largest of ``metric_margin_abs``,
``metric_margin_rel`` times the reference and two standard errors of the measured metric: on
20,000 events with 1 % fraud a recall is measured on ~200 positives, and a gate that fails on
sampling noise alone teaches people to force.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import fastavro
import numpy as np
from numpy.typing import NDArray

from stream_scorer.errors import ConfigurationError, ModelError
from stream_scorer.lifecycle.repository import ModelRepository
from stream_scorer.model_card import ModelCard, bind_to_schema, file_sha256
from stream_scorer.model_set import LoadedModel, load_model
from stream_scorer.records import Event, SourceRecord
from stream_scorer.settings import LifecycleSettings

__all__ = [
    "Gate",
    "LabelledData",
    "ValidationReport",
    "load_data",
    "report_json",
    "roc_auc",
    "validate",
]

Status = Literal["PASS", "FAIL", "SKIP"]
#: Timed runs of one batch for the p99 gate.
TIMING_RUNS = 100


@dataclass(frozen=True, slots=True)
class Gate:
    """One check: its status, what was measured and what it was held to."""

    name: str
    status: Status
    measured: str
    bound: str
    detail: str = ""


@dataclass(slots=True)
class ValidationReport:
    """Every gate of one validation run."""

    model: str
    version: str
    against: str | None
    data: str
    gates: list[Gate] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when no gate failed."""
        return all(g.status != "FAIL" for g in self.gates)

    def to_dict(self) -> dict[str, Any]:
        """For ``--json`` and the recorded result."""
        return {
            "model": self.model,
            "version": self.version,
            "against": self.against,
            "data": self.data,
            "passed": self.passed,
            "gates": [asdict(g) for g in self.gates],
        }

    def table(self) -> str:
        """A table for people."""
        rows = [("gate", "status", "measured", "bound", "detail")]
        rows += [(g.name, g.status, g.measured, g.bound, g.detail) for g in self.gates]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = [
            "  ".join(cell.ljust(w) for cell, w in zip(r[:4], widths, strict=True)) + "  " + r[4]
            for r in rows
        ]
        verdict = "PASSED" if self.passed else "FAILED"
        against = f" against {self.against}" if self.against else ""
        head = f"{self.model}/{self.version}{against} on {self.data}: {verdict}"
        return "\n".join([head, *(line.rstrip() for line in lines)]) + "\n"


@dataclass(frozen=True, slots=True)
class LabelledData:
    """Events to score, their labels (None when the data has none) and where they came from."""

    events: list[Event]
    labels: NDArray[np.bool_] | None
    source: str


def load_data(path: Path | None, settings: LifecycleSettings) -> LabelledData:
    """Events from an Avro container file, or labelled synthetic ones when ``path`` is None.

    Raises:
        ConfigurationError: The file cannot be read.
    """
    source = SourceRecord("validate", 0, 0, None, None)
    if path is None:
        from stream_scorer.devtools.generate import TransactionGenerator  # noqa: PLC0415

        raw, labels = TransactionGenerator(seed=settings.validation_seed).generate(
            settings.validation_events
        )
        events = [Event(source, dict(r)) for r in raw]
        name = f"{len(events)} synthetic events (seed {settings.validation_seed})"
        return LabelledData(events, np.asarray(labels, dtype=bool), name)
    try:
        with path.open("rb") as fh:
            records = [dict(r) for r in fastavro.reader(fh) if isinstance(r, Mapping)]
    except (OSError, ValueError, EOFError) as exc:
        msg = f"--data: cannot read Avro file {path}: {exc}"
        raise ConfigurationError(msg) from exc
    label = settings.label_field
    has_labels = bool(records) and all(r.get(label) is not None for r in records)
    found = np.array([bool(r[label]) for r in records]) if has_labels else None
    return LabelledData([Event(source, r) for r in records], found, f"{path} ({len(records)})")


def roc_auc(labels: NDArray[np.bool_], scores: NDArray[np.float64]) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula, ties counted half."""
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    # Average rank of each distinct score (1-based), then per row.
    ends = np.cumsum(counts)
    average = ends - (counts - 1) / 2.0
    ranks = average[inverse]
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _auc_se(auc: float, n_pos: int, n_neg: int) -> float:
    """Hanley & McNeil (1982) standard error of an AUC."""
    if n_pos == 0 or n_neg == 0 or math.isnan(auc):
        return 0.0
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)) / (
        n_pos * n_neg
    )
    return math.sqrt(max(var, 0.0))


@dataclass(frozen=True, slots=True)
class _Scored:
    scores: NDArray[np.float64]
    labels: NDArray[np.bool_] | None
    flagged_rate: float
    metrics: dict[str, tuple[float, float]]  # name -> (value, standard error)


def _score_all(model: LoadedModel, data: LabelledData, batch_size: int) -> _Scored:
    """Score every event (rows the model rejects are left out, with their labels)."""
    index = {id(e): i for i, e in enumerate(data.events)}
    parts: list[NDArray[np.float64]] = []
    kept: list[int] = []
    for start in range(0, len(data.events), batch_size):
        chunk = data.events[start : start + batch_size]
        inputs, events, _ = model.features.build_inputs(chunk)
        if events:
            parts.append(model.scorer.score(inputs))
            kept.extend(index[id(e)] for e in events)
    scores = np.concatenate(parts) if parts else np.empty(0)
    labels = None if data.labels is None else data.labels[np.array(kept, dtype=np.intp)]
    flagged = scores >= model.threshold
    metrics: dict[str, tuple[float, float]] = {}
    if labels is not None and len(scores):
        n_pos = int(labels.sum())
        auc = roc_auc(labels, scores)
        metrics["auc"] = (auc, _auc_se(auc, n_pos, len(labels) - n_pos))
        n_flag = int(flagged.sum())
        tp = int((flagged & labels).sum())
        precision = tp / n_flag if n_flag else 0.0
        recall = tp / n_pos if n_pos else 0.0
        metrics["precision"] = (precision, math.sqrt(precision * (1 - precision) / max(1, n_flag)))
        metrics["recall"] = (recall, math.sqrt(recall * (1 - recall) / max(1, n_pos)))
    rate = float(flagged.mean()) if len(scores) else 0.0
    return _Scored(scores, labels, rate, metrics)


#: Card keys holding each metric's floor: an explicit ``floors`` object wins over the
#: holdout metrics the training script measured.
FLOOR_KEYS = {
    "auc": "holdout_auc",
    "precision": "precision_at_threshold",
    "recall": "recall_at_threshold",
}


def _allowance(reference: float, se: float, settings: LifecycleSettings) -> float:
    return max(settings.metric_margin_abs, settings.metric_margin_rel * reference, 2 * se)


def _not_run(names: Sequence[str], why: str) -> list[Gate]:
    return [Gate(n, "FAIL", "-", "-", f"not run: {why}") for n in names]


LATER_GATES = ("golden set", "scores in range", "auc", "precision", "recall", "batch p99",
               "alert rate")  # fmt: skip


def validate(
    repo: ModelRepository,
    name: str,
    version: str,
    reader: Mapping[str, Any],
    settings: LifecycleSettings,
    batch_size: int,
    against: tuple[str, str] | None = None,
    data: LabelledData | None = None,
    intra_op_threads: int = 0,
) -> ValidationReport:
    """Run every gate on ``name/version``; a gate that cannot run fails.

    Args:
        repo: The repository.
        name: Model name.
        version: Version to validate.
        reader: The reader schema events are decoded with.
        settings: Margins and bounds.
        batch_size: Rows of the timed batch (``batch.max_size``).
        against: ``(name, version)`` of the champion to compare with, if any.
        data: Events to score; default: labelled synthetic events.
        intra_op_threads: onnxruntime threads, as the service runs.
    """
    folder = repo.folder(name, version)
    data = data if data is not None else load_data(None, settings)
    report = ValidationReport(
        name, version, None if against is None else f"{against[0]}/{against[1]}", data.source
    )
    gates = report.gates
    try:
        card = ModelCard.load(folder)
    except ConfigurationError as exc:
        gates.append(Gate("card", "FAIL", "unreadable", "valid model.json", str(exc)))
        gates.extend(_not_run(("hashes", "binds", "loads", *LATER_GATES), "no card"))
        return report
    gates.append(Gate("card", "PASS", "valid", "valid model.json"))
    gates.append(_hashes(card))
    try:
        bind_to_schema(card, reader)
        gates.append(Gate("binds", "PASS", f"{len(card.bindings)} inputs", str(reader["name"])))
    except ConfigurationError as exc:
        gates.append(Gate("binds", "FAIL", "unbound", str(reader.get("name")), str(exc)))
        gates.extend(_not_run(("loads", *LATER_GATES), "does not bind"))
        return report
    try:
        model = load_model(folder, reader, intra_op_threads, verify_sha256=False)
    except ConfigurationError as exc:
        gates.append(Gate("loads", "FAIL", "error", "loads, warms up", str(exc)))
        gates.extend(_not_run(LATER_GATES, "does not load"))
        return report
    gates.append(Gate("loads", "PASS", "loaded, warmed up", "loads, warms up"))
    gates.append(_golden(model))
    try:
        scored = _score_all(model, data, batch_size)
    except ModelError as exc:
        gates.extend(_not_run(LATER_GATES[1:], f"scoring failed: {exc}"))
        return report
    champion: _Scored | None = None
    if against is not None:
        champ_model = load_model(repo.folder(*against), reader, intra_op_threads)
        champion = _score_all(champ_model, data, batch_size)
    valid = np.isfinite(scored.scores) & (scored.scores >= 0) & (scored.scores <= 1)
    bad = int((~valid).sum())
    gates.append(
        Gate(
            "scores in range",
            "PASS" if bad == 0 and len(valid) else "FAIL",
            f"{bad} of {len(valid)} outside",
            "all in [0, 1]",
        )
    )
    gates.extend(_metric_gates(card, scored, champion, settings))
    gates.append(_timing(model, data, batch_size, settings.batch_p99_budget_ms))
    gates.append(_alert_rate(card, scored, champion, settings.alert_rate_ratio))
    return report


def _hashes(card: ModelCard) -> Gate:
    """The ONNX file and any other file the card lists (``files``: {name: sha256})."""
    expected: dict[str, str] = {}
    if card.sha256 is not None:
        expected["model.onnx"] = card.sha256
    files = card.raw.get("files", {})
    if isinstance(files, Mapping):
        expected.update({str(k): str(v) for k, v in files.items()})
    if not expected:
        return Gate("hashes", "FAIL", "none in card", "sha256 of every file")
    wrong = []
    for file_name, digest in expected.items():
        path = card.path / file_name
        actual = file_sha256(path) if path.is_file() else "missing"
        if actual != digest:
            wrong.append(f"{file_name}: {actual[:12]} != {digest[:12]}")
    return Gate(
        "hashes",
        "FAIL" if wrong else "PASS",
        f"{len(expected) - len(wrong)} of {len(expected)} match",
        "all match the card",
        "; ".join(wrong),
    )


def _golden(model: LoadedModel) -> Gate:
    golden = model.card.raw.get("golden_set")
    if not golden:
        return Gate("golden set", "SKIP", "-", "none in card")
    tolerance = float(golden.get("tolerance", 1e-5))
    source = SourceRecord("golden", 0, 0, None, None)
    events = [Event(source, dict(row)) for row in golden["inputs"]]
    expected = np.asarray(golden["expected_scores"], dtype=np.float64)
    inputs, kept, _ = model.features.build_inputs(events)
    if len(kept) != len(events):
        return Gate("golden set", "FAIL", f"{len(events) - len(kept)} rejected", f"±{tolerance:g}")
    try:
        diff = float(np.max(np.abs(model.scorer.score(inputs) - expected)))
    except (ModelError, ValueError) as exc:
        return Gate("golden set", "FAIL", "error", f"±{tolerance:g}", str(exc))
    return Gate(
        "golden set",
        "PASS" if diff <= tolerance else "FAIL",
        f"max |diff| {diff:.2g} on {len(events)}",
        f"±{tolerance:g}",
    )


def _metric_gates(
    card: ModelCard, scored: _Scored, champion: _Scored | None, settings: LifecycleSettings
) -> list[Gate]:
    if not scored.metrics:
        return [Gate(m, "FAIL", "-", "-", "the data has no labels") for m in FLOOR_KEYS]
    floors_raw = card.raw.get("floors") or {}
    holdout = card.raw.get("metrics") or {}
    gates = []
    for metric, key in FLOOR_KEYS.items():
        value, se = scored.metrics[metric]
        bounds: list[tuple[str, float]] = []
        if metric in floors_raw:  # a stated floor: only sampling error may excuse a miss
            bounds.append(("card floor", float(floors_raw[metric]) - 2 * se))
        elif holdout.get(key) is not None:  # the holdout value: the configured margins apply
            ref = float(holdout[key])
            bounds.append(("card holdout", ref - _allowance(ref, se, settings)))
        if champion is not None:
            ref, ref_se = champion.metrics[metric]
            bounds.append(("champion", ref - _allowance(ref, math.hypot(se, ref_se), settings)))
        if not bounds:
            gates.append(Gate(metric, "SKIP", f"{value:.4f}", "no floor, no champion"))
            continue
        worst = max(bounds, key=lambda b: b[1])
        gates.append(
            Gate(
                metric,
                "PASS" if value >= worst[1] else "FAIL",
                f"{value:.4f}",
                " and ".join(f">= {b:.4f} ({who})" for who, b in bounds),
            )
        )
    return gates


def _timing(model: LoadedModel, data: LabelledData, batch_size: int, budget_ms: float) -> Gate:
    events = data.events[:batch_size]
    while len(events) < batch_size and data.events:
        events = events + data.events[: batch_size - len(events)]
    inputs, kept, _ = model.features.build_inputs(events)
    model.scorer.score(inputs)  # the first run allocates; it is not what serving sees
    times = []
    for _ in range(TIMING_RUNS):
        tick = time.perf_counter()
        model.scorer.score(inputs)
        times.append(time.perf_counter() - tick)
    p99 = float(np.percentile(times, 99)) * 1000.0
    return Gate(
        "batch p99",
        "PASS" if p99 <= budget_ms else "FAIL",
        f"{p99:.2f} ms ({len(kept)} rows)",
        f"<= {budget_ms:g} ms",
    )


def _alert_rate(card: ModelCard, scored: _Scored, champion: _Scored | None, ratio: float) -> Gate:
    if champion is not None:
        reference, who = champion.flagged_rate, "champion"
    elif (card.raw.get("metrics") or {}).get("flagged_rate") is not None:
        reference, who = float(card.raw["metrics"]["flagged_rate"]), "card"
    else:
        return Gate("alert rate", "SKIP", f"{scored.flagged_rate:.5f}", "no reference")
    low, high = reference / ratio, reference * ratio
    ok = low <= scored.flagged_rate <= high
    return Gate(
        "alert rate",
        "PASS" if ok else "FAIL",
        f"{scored.flagged_rate:.5f}",
        f"[{low:.5f}, {high:.5f}] ({who} {reference:.5f} x/÷ {ratio:g})",
    )


def report_json(report: ValidationReport) -> str:
    """The report as indented JSON."""
    return json.dumps(report.to_dict(), indent=2)
