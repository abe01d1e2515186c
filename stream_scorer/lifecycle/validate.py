"""``models validate``: gates a version must pass before it may serve.

Each gate is PASS, FAIL or SKIP (nothing to check, e.g. no golden set in the card), with the
value measured and the bound it was held to. Every card gets ``card``, ``hashes`` (every file
the card hashes), ``binds`` (to the reader schema), ``loads`` (onnxruntime session checked
against the card, warm-up batch), ``golden set`` (the card's inputs reproduce its expected
scores within its tolerance), ``scores in range``, ``batch p99`` (time of one batch of
``batch.max_size`` rows) and ``alert rate`` (the published share within
``alert_rate_ratio`` of the champion's, or of the card's holdout share). The quality gates
follow the card's output type (:mod:`stream_scorer.decision`), since an AUC means nothing for
a ranking of six classes or a predicted amount:

* binary: ``auc``, ``precision`` and ``recall`` at the threshold (the lowest published band);
* multiclass: ``top-1 accuracy``, ``top-K hit rate`` (K the card's ``decision.top_k``) and
  ``top-1 class share`` (each class's share of top-1 predictions within ``band_rate_ratio`` of
  the champion's: a model that stops recommending one category fails it);
* regression: ``mae`` (at most, not at least) and ``r2``.

A metric must reach the card's ``floors`` (``ceilings`` for ``mae``), less two standard errors;
else its holdout value in ``metrics``, and the champion's, each less an allowance. A card with
a ``decision`` section also gets one ``band NAME`` gate per band: the share of events in that
band within ``band_rate_ratio`` (either way) of the champion's (e.g. the review rate), or of
the card's ``metrics.band_rates`` when there is no champion.

The allowance below a floor or the champion is the largest of ``metric_margin_abs``,
``metric_margin_rel`` times the reference and two standard errors of the measured metric: on
20,000 events with 1 % fraud a recall is measured on ~200 positives, and a gate that fails on
sampling noise alone teaches people to force.

Without ``--data`` the events come from the generator the card's ``training.generator`` names,
seeded with ``validation_seed`` (apart from the training and holdout seeds): a class
(``package.module.Class``, built with ``seed=`` and asked to ``generate(n)``) or a function in a
file of the source checkout (``models/example_events.py:claims``, called as ``f(n, seed)``).
Either returns the events and their labels.
"""

from __future__ import annotations

import importlib
import importlib.util
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

from stream_scorer.decision import DecisionPolicy
from stream_scorer.errors import ConfigurationError, ModelError
from stream_scorer.flag import flag_scores
from stream_scorer.integrity import card_file_hashes
from stream_scorer.lifecycle.repository import ModelRepository
from stream_scorer.model_card import ModelCard, bind_to_schema, file_sha256
from stream_scorer.model_set import LoadedModel, load_model
from stream_scorer.records import Event, SourceRecord
from stream_scorer.settings import LifecycleSettings, resource_root

__all__ = [
    "Gate",
    "LabelledData",
    "ValidationReport",
    "load_data",
    "quality_gates",
    "report_json",
    "roc_auc",
    "validate",
]

Status = Literal["PASS", "FAIL", "SKIP"]
#: Timed runs of one batch for the p99 gate.
TIMING_RUNS = 100
#: How far a multiclass row's probabilities may sum from 1 (float32 rounding, not a bug).
PROBABILITY_SUM_TOLERANCE = 1e-3


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
    """Events to score, their labels (None when the data has none) and where they came from.

    Labels follow the card's output type: booleans (binary), class indices into the card's
    ``output.labels`` (multiclass) or values (regression).
    """

    events: list[Event]
    labels: NDArray[Any] | None
    source: str


def _call_generator(spec: str, card: ModelCard, n: int, seed: int) -> tuple[Any, Any]:
    """Run the generator ``spec`` names (see the module docstring) for ``n`` events."""
    if ":" in spec:
        file_name, function = spec.rsplit(":", 1)
        relative = Path(file_name)
        if relative.is_absolute() or ".." in relative.parts:
            msg = f"a file inside the checkout, got {file_name!r}"
            raise ValueError(msg)
        # The checkout the model folder sits in (models/<name>/<version>), then the shipped one.
        roots = [card.path.resolve().parents[2], resource_root()]
        found = next((r / relative for r in roots if (r / relative).is_file()), None)
        if found is None:
            msg = f"{file_name} is not in {' or '.join(str(r) for r in roots)}"
            raise FileNotFoundError(msg)
        module_spec = importlib.util.spec_from_file_location(f"_generator_{found.stem}", found)
        if module_spec is None or module_spec.loader is None:
            msg = f"cannot import {found}"
            raise ImportError(msg)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        made: tuple[Any, Any] = getattr(module, function)(n, seed)
        return made
    module_name, _, class_name = spec.rpartition(".")
    generator = getattr(importlib.import_module(module_name), class_name)(seed=seed)
    made = generator.generate(n)
    return made


def _label_array(values: Sequence[Any], policy: DecisionPolicy) -> NDArray[Any]:
    """Labels as the gates of ``policy``'s output type read them.

    Raises:
        ValueError: A multiclass label names no class of the card.
    """
    if policy.output == "binary":
        return np.array([bool(v) for v in values], dtype=bool)
    if policy.output == "regression":
        return np.array([float(v) for v in values], dtype=np.float64)
    by_name = {label.lower(): i for i, label in enumerate(policy.labels)}
    out = np.empty(len(values), dtype=np.intp)
    for i, value in enumerate(values):
        if isinstance(value, str):
            if value.lower() not in by_name:
                msg = f"label {value!r} is none of the card's classes {list(policy.labels)}"
                raise ValueError(msg)
            out[i] = by_name[value.lower()]
        elif not 0 <= int(value) < len(policy.labels):
            msg = f"class index {value!r} is outside the card's {len(policy.labels)} classes"
            raise ValueError(msg)
        else:
            out[i] = int(value)
    return out


def load_data(
    path: Path | None, settings: LifecycleSettings, card: ModelCard | None = None
) -> LabelledData:
    """Events from an Avro container file, or labelled synthetic ones when ``path`` is None.

    Args:
        path: Avro container file; its ``lifecycle.label_field`` is the label when every
            record has one.
        settings: Event count, seed and label field.
        card: The card validated: its generator makes the synthetic events and its output type
            says what a label is. Without it: transactions and fraud labels.

    Raises:
        ConfigurationError: The file cannot be read, a label is wrong, or the card names no
            generator that runs here (then ``--data`` is the way).
    """
    source = SourceRecord("validate", 0, 0, None, None)
    policy = None if card is None else card.policy
    if path is None:
        spec = "stream_scorer.devtools.generate.TransactionGenerator"
        if card is not None:
            training = card.raw.get("training")
            spec = training.get("generator", "") if isinstance(training, Mapping) else ""
            if not isinstance(spec, str) or not spec:
                msg = (
                    f"{card.name}/{card.version}: the card names no training.generator; pass --data"
                )
                raise ConfigurationError(msg)
        seed, n = settings.validation_seed, settings.validation_events
        try:
            raw, labels = (
                _call_generator(spec, card, n, seed) if card is not None else _transactions(n, seed)
            )
        except (ImportError, AttributeError, OSError, TypeError, ValueError) as exc:
            msg = f"training.generator {spec!r} does not run here ({exc}); pass --data"
            raise ConfigurationError(msg) from exc
        events = [Event(source, dict(r)) for r in raw]
        made = np.asarray(labels, dtype=bool) if policy is None else _label_array(labels, policy)
        return LabelledData(events, made, f"{len(events)} synthetic events (seed {seed})")
    try:
        with path.open("rb") as fh:
            records = [dict(r) for r in fastavro.reader(fh) if isinstance(r, Mapping)]
    except (OSError, ValueError, EOFError) as exc:
        msg = f"--data: cannot read Avro file {path}: {exc}"
        raise ConfigurationError(msg) from exc
    label = settings.label_field
    has_labels = bool(records) and all(r.get(label) is not None for r in records)
    values = [r[label] for r in records] if has_labels else None
    found: NDArray[Any] | None = None
    try:
        if values is not None:
            found = (
                np.array([bool(v) for v in values], dtype=bool)
                if policy is None
                else _label_array(values, policy)
            )
    except (TypeError, ValueError) as exc:
        msg = f"--data: lifecycle.label_field {label!r} in {path}: {exc}"
        raise ConfigurationError(msg) from exc
    return LabelledData([Event(source, r) for r in records], found, f"{path} ({len(records)})")


def _transactions(n: int, seed: int) -> tuple[Any, Any]:
    from stream_scorer.devtools.generate import TransactionGenerator  # noqa: PLC0415

    return TransactionGenerator(seed=seed).generate(n)


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


def _proportion(hits: int, n: int) -> tuple[float, float]:
    """A share and its binomial standard error."""
    p = hits / n if n else 0.0
    return p, math.sqrt(p * (1 - p) / max(1, n))


@dataclass(frozen=True, slots=True)
class _Metric:
    """How one quality metric is read: its card key and which way is better."""

    #: Key of the holdout value in the card's ``metrics`` (a prefix: ``holdout_mae`` matches
    #: ``holdout_mae_eur``).
    holdout_key: str
    higher_is_better: bool = True


@dataclass(frozen=True, slots=True)
class _Scored:
    outputs: NDArray[np.float64]
    labels: NDArray[Any] | None
    #: Rows whose output is invalid (NaN, a probability outside [0, 1]).
    invalid: int
    published_rate: float
    #: Share of the scored rows in each band, by band name.
    band_rates: dict[str, float]
    #: Share of top-1 predictions per class label (multiclass only).
    class_shares: dict[str, float]
    metrics: dict[str, tuple[float, float]]  # name -> (value, standard error)


def quality_gates(card: ModelCard) -> dict[str, _Metric]:
    """The quality metrics gated for ``card``'s output type, by gate name."""
    policy = card.policy
    if policy.output == "multiclass":
        k = policy.top_k
        return {
            "top-1 accuracy": _Metric("holdout_top1_accuracy"),
            f"top-{k} hit rate": _Metric(f"holdout_top{k}_hit_rate"),
        }
    if policy.output == "regression":
        return {"mae": _Metric("holdout_mae", higher_is_better=False), "r2": _Metric("holdout_r2")}
    return {
        "auc": _Metric("holdout_auc"),
        "precision": _Metric("precision_at_threshold"),
        "recall": _Metric("recall_at_threshold"),
    }


def _metrics(
    card: ModelCard,
    outputs: NDArray[np.float64],
    labels: NDArray[Any],
    published: NDArray[np.bool_],
) -> dict[str, tuple[float, float]]:
    """Each quality metric of the card's output type, with its standard error."""
    policy = card.policy
    n = len(labels)
    if policy.output == "multiclass":
        k = policy.top_k
        order = np.argsort(-outputs, axis=1, kind="stable")
        top1 = int((order[:, 0] == labels).sum())
        topk = int((order[:, :k] == labels[:, None]).any(axis=1).sum())
        return {"top-1 accuracy": _proportion(top1, n), f"top-{k} hit rate": _proportion(topk, n)}
    if policy.output == "regression":
        errors = np.abs(outputs - labels)
        mae = float(errors.mean())
        mae_se = float(errors.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
        total = float(((labels - labels.mean()) ** 2).sum())
        r2 = 1.0 - float(((outputs - labels) ** 2).sum()) / total if total else float("nan")
        # No closed form for R²'s error; the configured margins carry it.
        return {"mae": (mae, mae_se), "r2": (r2, 0.0)}
    n_pos = int(labels.sum())
    auc = roc_auc(labels, outputs)
    n_flag = int(published.sum())
    return {
        "auc": (auc, _auc_se(auc, n_pos, n - n_pos)),
        "precision": _proportion(int((published & labels).sum()), n_flag),
        "recall": _proportion(int((published & labels).sum()), n_pos),
    }


def _score_all(model: LoadedModel, data: LabelledData, batch_size: int) -> _Scored:
    """Score every event (rows the model rejects are left out, with their labels).

    Bands, the published share and the metrics follow the card's decision policy, through
    the flag stage the service runs (:func:`stream_scorer.flag.flag_scores`).
    """
    index = {id(e): i for i, e in enumerate(data.events)}
    parts: list[NDArray[np.float64]] = []
    kept: list[int] = []
    for start in range(0, len(data.events), batch_size):
        chunk = data.events[start : start + batch_size]
        inputs, events, _ = model.features.build_inputs(chunk)
        if events:
            parts.append(model.scorer.score(inputs))
            kept.extend(index[id(e)] for e in events)
    card = model.card
    policy = card.policy
    outputs = np.concatenate(parts) if parts else np.empty(0)
    labels = None if data.labels is None else data.labels[np.array(kept, dtype=np.intp)]
    decisions = flag_scores(outputs, policy)
    n = len(outputs)
    published = np.zeros(n, dtype=bool)
    published[decisions.flagged] = True
    band_rates = {
        b.name: int(c) / n if n else 0.0
        for b, c in zip(policy.bands, decisions.band_counts, strict=True)
    }
    class_shares: dict[str, float] = {}
    if policy.output == "multiclass" and n:
        top1 = np.bincount(outputs.argmax(axis=1), minlength=len(policy.labels))
        class_shares = {lab: int(c) / n for lab, c in zip(policy.labels, top1, strict=False)}
    metrics = _metrics(card, outputs, labels, published) if labels is not None and n else {}
    rate = float(published.mean()) if n else 0.0
    return _Scored(outputs, labels, len(decisions.invalid), rate, band_rates, class_shares, metrics)


def _allowance(reference: float, se: float, settings: LifecycleSettings) -> float:
    return max(settings.metric_margin_abs, settings.metric_margin_rel * abs(reference), 2 * se)


def _not_run(names: Sequence[str], why: str) -> list[Gate]:
    return [Gate(n, "FAIL", "-", "-", f"not run: {why}") for n in names]


def _has_bands(card: ModelCard) -> bool:
    """True when the card declares bands; a plain threshold's two are the alert-rate gate."""
    return not card.policy.from_threshold


def _later_gates(card: ModelCard) -> tuple[str, ...]:
    """Names of the gates after ``loads``, in report order, for ``card``."""
    bands = tuple(f"band {b.name}" for b in card.policy.bands) if _has_bands(card) else ()
    shares = ("top-1 class share",) if card.policy.output == "multiclass" else ()
    return ("golden set", "scores in range", *quality_gates(card), *shares, "batch p99",
            "alert rate", *bands)  # fmt: skip


#: Gates that cannot run without a card: the binary ones, as before output types.
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
    data: LabelledData | Path | None = None,
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
        data: Events to score, or an Avro file of them (:func:`load_data`, labels read as
            the card's output type); default: labelled synthetic events from the card's
            generator.

    Raises:
        ConfigurationError: The data cannot be read or made (see :func:`load_data`).
        intra_op_threads: onnxruntime threads, as the service runs.
    """
    folder = repo.folder(name, version)
    champion_label = None if against is None else f"{against[0]}/{against[1]}"
    try:
        card = ModelCard.load(folder)
    except ConfigurationError as exc:
        source = data.source if isinstance(data, LabelledData) else str(data or "-")
        report = ValidationReport(name, version, champion_label, source)
        report.gates.append(Gate("card", "FAIL", "unreadable", "valid model.json", str(exc)))
        report.gates.extend(_not_run(("hashes", "binds", "loads", *LATER_GATES), "no card"))
        return report
    if not isinstance(data, LabelledData):
        data = load_data(data, settings, card)
    report = ValidationReport(name, version, champion_label, data.source)
    gates = report.gates
    gates.append(Gate("card", "PASS", f"valid, {card.policy.output}", "valid model.json"))
    gates.append(_hashes(card))
    later = _later_gates(card)
    try:
        bind_to_schema(card, reader)
        gates.append(Gate("binds", "PASS", f"{len(card.bindings)} inputs", str(reader["name"])))
    except ConfigurationError as exc:
        gates.append(Gate("binds", "FAIL", "unbound", str(reader.get("name")), str(exc)))
        gates.extend(_not_run(("loads", *later), "does not bind"))
        return report
    try:
        model = load_model(folder, reader, intra_op_threads, verify_sha256=False)
    except ConfigurationError as exc:
        gates.append(Gate("loads", "FAIL", "error", "loads, warms up", str(exc)))
        gates.extend(_not_run(later, "does not load"))
        return report
    gates.append(Gate("loads", "PASS", "loaded, warmed up", "loads, warms up"))
    gates.append(_golden(model))
    try:
        scored = _score_all(model, data, batch_size)
    except ModelError as exc:
        gates.extend(_not_run(later[1:], f"scoring failed: {exc}"))
        return report
    champion: _Scored | None = None
    if against is not None:
        champ_model = load_model(repo.folder(*against), reader, intra_op_threads)
        champion = _score_all(champ_model, data, batch_size)
    gates.append(_in_range(card.policy, scored))
    gates.extend(_metric_gates(card, scored, champion, settings))
    if card.policy.output == "multiclass":
        gates.append(_class_shares(scored, champion, settings.band_rate_ratio))
    gates.append(_timing(model, data, batch_size, settings.batch_p99_budget_ms))
    gates.append(_alert_rate(card, scored, champion, settings.alert_rate_ratio))
    if _has_bands(card):
        gates.extend(_band_gates(card, scored, champion, settings.band_rate_ratio))
    return report


def _in_range(policy: DecisionPolicy, scored: _Scored) -> Gate:
    """Probabilities in [0, 1] (and, per multiclass row, summing to 1); values finite."""
    bad = scored.invalid
    bound = "all in [0, 1]" if policy.is_probability else "all finite"
    if policy.output == "multiclass" and len(scored.outputs):
        sums = scored.outputs.sum(axis=1)
        bad += int((np.abs(sums - 1.0) > PROBABILITY_SUM_TOLERANCE).sum())
        bound = f"all in [0, 1], rows sum to 1 ±{PROBABILITY_SUM_TOLERANCE:g}"
    n = len(scored.outputs)
    return Gate(
        "scores in range", "PASS" if bad == 0 and n else "FAIL", f"{bad} of {n} outside", bound
    )


def _holdout_value(card: ModelCard, key: str) -> float | None:
    """The card's holdout metric ``key`` (or the first one whose name starts with it)."""
    holdout = card.raw.get("metrics") or {}
    if holdout.get(key) is not None:
        return float(holdout[key])
    return next((float(v) for k, v in holdout.items() if k.startswith(key) and v is not None),
                None)  # fmt: skip


def _metric_gates(
    card: ModelCard, scored: _Scored, champion: _Scored | None, settings: LifecycleSettings
) -> list[Gate]:
    specs = quality_gates(card)
    if not scored.metrics:
        return [Gate(m, "FAIL", "-", "-", "the data has no labels") for m in specs]
    floors_raw = card.raw.get("floors") or {}
    ceilings_raw = card.raw.get("ceilings") or {}
    gates = []
    for metric, spec in specs.items():
        value, se = scored.metrics[metric]
        # Signed so that one comparison serves both directions: higher is better after it.
        sign = 1.0 if spec.higher_is_better else -1.0
        stated = floors_raw if spec.higher_is_better else ceilings_raw
        bounds: list[tuple[str, float]] = []
        if metric in stated:  # a stated floor: only sampling error may excuse a miss
            bounds.append(("card " + ("floor" if sign > 0 else "ceiling"),
                           float(stated[metric]) - sign * 2 * se))  # fmt: skip
        elif (ref := _holdout_value(card, spec.holdout_key)) is not None:
            bounds.append(("card holdout", ref - sign * _allowance(ref, se, settings)))
        if champion is not None and metric in champion.metrics:
            ref, ref_se = champion.metrics[metric]
            allowance = _allowance(ref, math.hypot(se, ref_se), settings)
            bounds.append(("champion", ref - sign * allowance))
        if not bounds:
            gates.append(Gate(metric, "SKIP", f"{value:.4f}", "no floor, no champion"))
            continue
        op = ">=" if sign > 0 else "<="
        ok = all(sign * value >= sign * b for _, b in bounds)
        gates.append(
            Gate(
                metric,
                "PASS" if ok else "FAIL",
                f"{value:.4f}",
                " and ".join(f"{op} {b:.4f} ({who})" for who, b in bounds),
            )
        )
    return gates


def _within(value: float, reference: float, ratio: float) -> tuple[bool, float, float]:
    """Whether ``value`` is within ``ratio`` of ``reference`` either way, and the bounds."""
    low, high = reference / ratio, reference * ratio
    return low <= value <= high, low, high


def _class_shares(scored: _Scored, champion: _Scored | None, ratio: float) -> Gate:
    """Every class's share of top-1 predictions within ``ratio`` of the champion's."""
    if champion is None or not champion.class_shares:
        worst = max(scored.class_shares.items(), key=lambda kv: kv[1], default=("-", 0.0))
        return Gate("top-1 class share", "SKIP", f"largest {worst[0]} {worst[1]:.4f}",
                    "no champion")  # fmt: skip
    off = []
    for label, share in scored.class_shares.items():
        reference = champion.class_shares.get(label, 0.0)
        ok, low, high = _within(share, reference, ratio)
        if not ok:
            off.append(f"{label} {share:.4f} not in [{low:.4f}, {high:.4f}]")
    return Gate(
        "top-1 class share",
        "FAIL" if off else "PASS",
        f"{len(scored.class_shares) - len(off)} of {len(scored.class_shares)} classes within",
        f"champion's share x/÷ {ratio:g}",
        "; ".join(off),
    )


def _alert_rate(card: ModelCard, scored: _Scored, champion: _Scored | None, ratio: float) -> Gate:
    holdout = card.raw.get("metrics") or {}
    card_rate = holdout.get("flagged_rate", holdout.get("published_rate"))
    if champion is not None:
        reference, who = champion.published_rate, "champion"
    elif card_rate is not None:
        reference, who = float(card_rate), "card"
    else:
        return Gate("alert rate", "SKIP", f"{scored.published_rate:.5f}", "no reference")
    ok, low, high = _within(scored.published_rate, reference, ratio)
    return Gate(
        "alert rate",
        "PASS" if ok else "FAIL",
        f"{scored.published_rate:.5f}",
        f"[{low:.5f}, {high:.5f}] ({who} {reference:.5f} x/÷ {ratio:g})",
    )


def _band_gates(
    card: ModelCard, scored: _Scored, champion: _Scored | None, ratio: float
) -> list[Gate]:
    """One gate per band: its share of the events within ``ratio`` of the champion's."""
    stated = (card.raw.get("metrics") or {}).get("band_rates") or {}
    gates = []
    for band, rate in scored.band_rates.items():
        name = f"band {band}"
        if champion is not None and band in champion.band_rates:
            reference, who = champion.band_rates[band], "champion"
        elif champion is None and band in stated:
            reference, who = float(stated[band]), "card"
        else:
            why = "no champion, no metrics.band_rates" if champion is None else "champion has none"
            gates.append(Gate(name, "SKIP", f"{rate:.5f}", why))
            continue
        ok, low, high = _within(rate, reference, ratio)
        gates.append(
            Gate(
                name,
                "PASS" if ok else "FAIL",
                f"{rate:.5f}",
                f"[{low:.5f}, {high:.5f}] ({who} {reference:.5f} x/÷ {ratio:g})",
            )
        )
    return gates


def _hashes(card: ModelCard) -> Gate:
    """Every file the card vouches for, read by the service's own rule
    (:func:`~stream_scorer.integrity.card_file_hashes`: ``files``, or the older ``sha256``;
    the two disagreeing is a failure, as it is for the service)."""
    try:
        expected = card_file_hashes(card)
    except ConfigurationError as exc:
        return Gate("hashes", "FAIL", "inconsistent card", "sha256 of every file", str(exc))
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


def report_json(report: ValidationReport) -> str:
    """The report as indented JSON."""
    return json.dumps(report.to_dict(), indent=2)
