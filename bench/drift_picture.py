"""Draw drift over time for docs/model-monitoring.md: a stream whose ``amount`` triples midway.

Scores 40 windows of 2,000 synthetic transactions with the shipped fraud model through
:class:`~stream_scorer.monitoring.drift.DriftMonitor` (the service's code, not a re-implementation);
from window 20 on every amount is multiplied by 3. Writes a PNG with the PSI of every input
and of the score per window against the alarm threshold, and the score's distribution over the
card's frozen bins (reference vs the last window), and prints the last window's report.

    .venv/bin/python -m bench.drift_picture --out docs/monitoring/drift_over_time.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib as mpl

mpl.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from numpy.typing import NDArray

from stream_scorer.devtools.generate import TransactionGenerator
from stream_scorer.logging import configure_logging
from stream_scorer.model_set import LoadedModel, load_model
from stream_scorer.monitoring.drift import DriftConfig, DriftMonitor, WindowReport
from stream_scorer.monitoring.reference import SCORE, Reference
from stream_scorer.pipeline import score_and_flag
from stream_scorer.records import DecodedBatch, Event, SourceRecord

__all__ = ["main"]

REPO = Path(__file__).resolve().parent.parent
WINDOW = 2000
WINDOWS = 40
SHIFT_AT = 20


def _run(
    model: LoadedModel, reference: Reference
) -> tuple[list[WindowReport], NDArray[np.float64]]:
    """The windows' reports, and the last window's score counts over the card's bins."""
    assert reference.score is not None  # noqa: S101 - the shipped card has one
    events, _ = TransactionGenerator(seed=2027, fraud_rate=0.01).generate(WINDOW * WINDOWS)
    monitor = DriftMonitor(DriftConfig(window_events=WINDOW, window_seconds=0))
    reports: list[WindowReport] = []
    last_scores = np.zeros(reference.score.n_bins + 1)
    for start in range(0, len(events), 500):
        chunk = events[start : start + 500]
        if start >= SHIFT_AT * WINDOW:
            chunk = [{**e, "amount": e["amount"] * 3} for e in chunk]
        batch = DecodedBatch.from_events(
            [Event(SourceRecord("t", 0, start + i, None, None), e) for i, e in enumerate(chunk)],
            model.features.fields,
        )
        decision = score_and_flag(model, batch)
        if start >= (WINDOWS - 1) * WINDOW:
            last_scores += reference.score.counts(decision.scores, None)
        report = monitor.observe(model, batch, decision)
        if report is not None:
            reports.append(report)
    return reports, last_scores


def _draw(
    reports: list[WindowReport], reference: Reference, last_scores: NDArray[np.float64], out: Path
) -> None:
    assert reference.score is not None  # noqa: S101 - the shipped card has one
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 8.5), height_ratios=(3, 2))
    for name in [*reference.inputs, SCORE]:
        values = [r.psi.get(name, np.nan) for r in reports]
        if name == SCORE:  # the colour cycle has ten colours: the eleventh line is the score
            top.plot(range(len(reports)), values, label="score", linewidth=2.5, color="black")
        else:
            width = 2.5 if name == "amount" else 1.0
            top.plot(range(len(reports)), values, label=name, linewidth=width)
    top.axhline(0.25, color="red", linestyle="--", linewidth=1, label="alarm (PSI 0.25)")
    top.axhline(0.1, color="orange", linestyle=":", linewidth=1, label="watch (PSI 0.1)")
    top.axvline(SHIFT_AT - 0.5, color="grey", linewidth=1)
    top.text(SHIFT_AT, 1.5, " amount x3 from here", fontsize=9, va="center")
    top.set_yscale("symlog", linthresh=0.01)
    top.set_ylim(0, 3)
    top.set_xlabel(f"window ({WINDOW} events each)")
    top.set_ylabel("PSI against the card's reference")
    top.set_title("Drift per input and of the score, fraud/1")
    top.legend(fontsize=7, ncol=1, loc="center left", bbox_to_anchor=(1.01, 0.5))
    expected = reference.score.expected()[:-1]
    actual = last_scores[:-1] / max(1.0, last_scores.sum())
    x = np.arange(len(expected))
    bottom.bar(x - 0.2, expected, width=0.4, label="reference (holdout)")
    bottom.bar(x + 0.2, actual, width=0.4, label=f"window {WINDOWS - 1} (amount x3)")
    edges = reference.score.edges.tolist()
    labels = [f"< {edges[0]:.5f}"] + [f">= {e:.5f}" for e in edges]
    bottom.set_xticks(x, labels, rotation=30, fontsize=7)
    bottom.set_ylabel("share of scores")
    bottom.set_title(
        "Score distribution over the card's frozen score bins (deciles of the holdout)"
    )
    bottom.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main(argv: list[str] | None = None) -> int:
    """Run the stream, draw it, print the last window."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("drift_over_time.png"))
    args = parser.parse_args(argv)
    configure_logging("error", "console")
    reader = json.loads((REPO / "schemas/transaction.avsc").read_text(encoding="utf-8"))
    model = load_model(REPO / "models/fraud/1", reader)
    reference = Reference.from_card(model.card.raw)
    if reference is None:
        print("models/fraud/1 has no reference: run models/train_fraud.py --reference-only")
        return 1
    reports, last_scores = _run(model, reference)
    _draw(reports, reference, last_scores, args.out)
    last = reports[-1]
    first = next(i for i, r in enumerate(reports) if "amount" in r.crossed)
    print(f"windows: {len(reports)}; shift from window {SHIFT_AT}; first alarm on amount: {first}")
    print(f"{'input':<24}{'PSI':>8}{'JS':>8}{'null':>8}{'unseen':>8}{'alarm at':>10}")
    for name in [*reference.inputs, SCORE]:
        if name not in last.psi:
            continue
        unseen = last.unseen_rate.get(name)
        print(
            f"{name:<24}{last.psi[name]:>8.4f}{last.js[name]:>8.4f}"
            f"{last.null_rate.get(name, 0.0):>8.3f}"
            f"{'' if unseen is None else f'{unseen:.3f}':>8}{last.thresholds[name]:>10.3f}"
        )
    print(f"alert rate {last.alert_rate:.4f}; crossed: {last.crossed}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
