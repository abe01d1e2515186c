"""The people's view of a model card, rendered from ``model.json`` alone.

``stream-scorer models card NAME/VERSION`` prints it; since the Markdown is derived from the
machine-readable card every time, the two cannot disagree. Sections follow Google's Model Card
Toolkit and the Hugging Face card template; a section whose fields the card lacks says so
rather than disappearing, so a reviewer sees what is missing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from stream_scorer.model_card import ModelCard

__all__ = ["render_card", "summary"]

#: Free-text sections: (heading, card key).
TEXT_SECTIONS = (
    ("Intended use", "intended_use"),
    ("Out-of-scope use", "out_of_scope"),
    ("Owners", "owners"),
    ("Assumptions", "assumptions"),
    ("Limitations", "limitations"),
    ("Ethical considerations", "ethical_considerations"),
)


def _text(value: Any) -> str:
    if value is None:
        return "_Not stated in the card._"
    if isinstance(value, list | tuple):
        return "\n".join(f"- {item}" for item in value)
    return str(value)


def _table(rows: list[tuple[str, ...]]) -> str:
    head, *body = rows
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


def summary(card: ModelCard) -> str:
    """One line: description, threshold, headline metric."""
    metrics = card.raw.get("metrics") or {}
    auc = metrics.get("holdout_auc")
    text = str(card.raw.get("description", "")).split(". ")[0]
    return f"{text}; threshold {card.threshold}" + (f"; holdout AUC {auc}" if auc else "")


def render_card(card: ModelCard) -> str:
    """The whole card as Markdown."""
    raw = card.raw
    out = [f"# Model card: {card.name} v{card.version}", "", _text(raw.get("description")), ""]
    for heading, key in TEXT_SECTIONS:
        out += [f"## {heading}", "", _text(raw.get(key)), ""]
    rows: list[tuple[str, ...]] = [("input", "field", "dtype", "missing")]
    rows += [(f"`{b.input}`", f"`{b.field}`", b.dtype, b.policy) for b in card.bindings]
    out += ["## Inputs", "", f"Layout `{card.input_layout}`.", "", _table(rows), ""]
    out += [
        "## Output and threshold",
        "",
        f"Output `{card.output_name}`, positive class {card.positive_class_index}; flag when "
        f"score >= **{card.threshold}**.",
    ]
    training = raw.get("training") or {}
    if "threshold_rule" in training:
        out.append(f"Chosen by: {training['threshold_rule']}.")
    out += ["", "## Training data", ""]
    if training:
        out += [f"- {k}: `{json.dumps(v)}`" for k, v in training.items() if k != "threshold_rule"]
    else:
        out.append(_text(None))
    metrics = raw.get("metrics") or {}
    out += ["", "## Metrics", ""]
    out.append(
        _table([("metric", "value"), *((k, str(v)) for k, v in metrics.items())])
        if metrics
        else _text(None)
    )
    for slice_name, values in (raw.get("slices") or {}).items():
        if isinstance(values, Mapping):
            rows = [(slice_name, *map(str, next(iter(values.values())).keys()))]
            rows += [(k, *map(str, v.values())) for k, v in values.items()]
            out += ["", f"### By {slice_name}", "", _table(rows)]
    golden = raw.get("golden_set")
    out += ["", "## Golden set", ""]
    out.append(
        f"{len(golden['inputs'])} inputs with expected scores (tolerance "
        f"{golden.get('tolerance', 1e-5)}, seed {golden.get('seed')})."
        if golden
        else _text(None)
    )
    files = {"model.onnx": card.sha256, **dict(raw.get("files") or {})}
    out += [
        "",
        "## Files",
        "",
        _table([("file", "sha256"), *((f"`{k}`", f"`{v}`") for k, v in files.items())]),
    ]
    return "\n".join(out) + "\n"
