"""What monitoring costs the pipeline: throughput plain, with drift, and with one shadow.

No broker: the pipeline (columnar decode, featurize, score, flag, materialise, encode) is run
in this process on batches consumed once from pre-encoded Confluent-free (plain) Avro values,
so the number is the pipeline's own cost, which is what drift and shadows add to. Variants
run in alternating rounds (ABCABC...) in one process, and each variant's median round is
compared with the plain run's: the ratio, not the absolute rate, is the result.

    .venv/bin/python -m bench.drift_cost                      # 20,000 events x 9 rounds
    .venv/bin/python -m bench.drift_cost --events 50000 --rounds 9 --json out.json

Target (issue 11): drift costs at most 5 % of throughput; one shadow of the same size costs at
most its own model time (decode is shared), i.e. its slowdown is at most the plain run's
featurize + score share.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import fastavro

from stream_scorer.consume import MessageBatch
from stream_scorer.decode import ColumnarAvroDecoder
from stream_scorer.devtools.generate import TransactionGenerator
from stream_scorer.encode import AlertEncoder, EventFields
from stream_scorer.logging import configure_logging
from stream_scorer.model_set import LiveModels, LoadedModel, ModelSet, load_model
from stream_scorer.monitoring.drift import DriftConfig
from stream_scorer.monitoring.monitor import Monitor
from stream_scorer.monitoring.shadow import ShadowBudget
from stream_scorer.pipeline import Pipeline, score_and_flag
from stream_scorer.records import SourceRecord

__all__ = ["main"]

REPO = Path(__file__).resolve().parent.parent
READER = json.loads((REPO / "schemas/transaction.avsc").read_text(encoding="utf-8"))
ALERT = json.loads((REPO / "schemas/alert.avsc").read_text(encoding="utf-8"))
MODEL = REPO / "models/fraud/1"


def _batches(n: int, size: int) -> list[MessageBatch]:
    events, _ = TransactionGenerator(seed=20260404, fraud_rate=0.01).generate(n)
    parsed = fastavro.parse_schema(READER)
    records = []
    for i, event in enumerate(events):
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed, event)
        records.append(SourceRecord("in", i % 4, i, event["card_id"].encode(), buf.getvalue()))
    return [MessageBatch.from_records(records[i : i + size]) for i in range(0, n, size)]


def _pipeline(models: ModelSet, monitor: Monitor | None) -> Pipeline:
    return Pipeline(
        ColumnarAvroDecoder(READER, "plain"),
        LiveModels(models),
        AlertEncoder(ALERT, b"", "bench", EventFields("transaction_id", "event_time")),
        "alerts",
        "dlq",
        "bench",
        monitor=monitor,
    )


def _round(pipeline: Pipeline, batches: list[MessageBatch]) -> tuple[float, float]:
    """Events per second over the batches, and the featurize + score share of the time."""
    model_s = 0.0
    tick = time.perf_counter()
    for batch in batches:
        stage_s = pipeline.process(batch).result.stage_s
        model_s += stage_s.get("featurize", 0.0) + stage_s.get("score", 0.0)
    elapsed = time.perf_counter() - tick
    return sum(len(b) for b in batches) / elapsed, model_s / elapsed


def _shadow_model(champion_dir: Path) -> LoadedModel:
    """fraud/1's graph under version 2 with another threshold: a shadow of the same size."""
    tmp = Path(tempfile.mkdtemp(prefix="drift-cost-"))
    try:
        folder = tmp / "fraud" / "2"
        folder.mkdir(parents=True)
        shutil.copy(champion_dir / "model.onnx", folder / "model.onnx")
        card = json.loads((champion_dir / "model.json").read_text(encoding="utf-8"))
        card.update(version="2", threshold=0.3)
        (folder / "model.json").write_text(json.dumps(card), encoding="utf-8")
        return load_model(folder, READER, intra_op_threads=1)
    finally:
        shutil.rmtree(tmp)


class _TimedMonitor(Monitor):
    """The drift variant's monitor, timing its own calls: a share measured inside the run is
    steadier than the difference of two noisy throughputs on a shared machine."""

    spent_s = 0.0

    def observe(self, *args: Any) -> None:
        """Monitor, and add the time taken to :attr:`spent_s`."""
        tick = time.perf_counter()
        super().observe(*args)
        self.spent_s += time.perf_counter() - tick


def main(argv: list[str] | None = None) -> int:
    """Run the rounds and print (and optionally write) the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--window-events", type=int, default=5000, help="drift window size")
    parser.add_argument(
        "--drift-max-share", type=float, default=0.05, help="1 counts every batch (no cap)"
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    configure_logging("warning", "console")  # per-window and disagreement lines off the clock

    batches = _batches(args.events, args.batch)
    champion = load_model(MODEL, READER, intra_op_threads=1)
    window = DriftConfig(window_events=args.window_events, window_seconds=0)
    drift = _TimedMonitor(score_and_flag, None, window, drift_max_share=args.drift_max_share)
    # A budget no round can exhaust: a shadow dropped mid-run would be measured as free.
    shadow = Monitor(score_and_flag, None, window, ShadowBudget(max_ratio=1e6), False)
    variants = {
        "plain": _pipeline(ModelSet(champion), None),
        "drift": _pipeline(ModelSet(champion), drift),
        "shadow": _pipeline(ModelSet(champion, shadows=(_shadow_model(MODEL),)), shadow),
    }
    for pipeline in variants.values():  # warm-up: first-call costs out of the rounds
        _round(pipeline, batches[:2])
    rates: dict[str, list[float]] = {name: [] for name in variants}
    model_share: list[float] = []
    drift_share: list[float] = []
    for _ in range(args.rounds):
        for name, pipeline in variants.items():
            drift.spent_s = 0.0
            tick = time.perf_counter()
            rate, share = _round(pipeline, batches)
            rates[name].append(rate)
            if name == "plain":
                model_share.append(share)
            if name == "drift":
                drift_share.append(drift.spent_s / (time.perf_counter() - tick))
    median = {name: statistics.median(r) for name, r in rates.items()}
    counted = drift.drift_counted / max(1, drift.drift_counted + drift.drift_skipped)
    result: dict[str, Any] = {
        "events": args.events,
        "batch": args.batch,
        "rounds": args.rounds,
        "drift_window_events": args.window_events,
        "drift_max_share": args.drift_max_share,
        "events_per_s": {k: round(v) for k, v in median.items()},
        "cost": {k: round(1 - median[k] / median["plain"], 4) for k in ("drift", "shadow")},
        "plain_model_share": round(statistics.median(model_share), 4),
        "drift_own_share": round(statistics.median(drift_share), 4),
        "drift_events_counted_share": round(counted, 4),
        "spread": {k: round((max(r) - min(r)) / statistics.median(r), 4) for k, r in rates.items()},
    }
    print(json.dumps(result, indent=2))
    print(
        f"drift costs {result['cost']['drift']:.1%} of throughput (its own time: "
        f"{result['drift_own_share']:.1%} of the run, counting {counted:.0%} of events; "
        f"target <= 5%); one shadow {result['cost']['shadow']:.1%} (its model time alone is "
        f"{result['plain_model_share']:.1%} of the plain run)"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
