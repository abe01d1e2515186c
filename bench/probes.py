"""The physical limits, measured on the same topic and model as the contenders.

``bare-consume``: how fast confluent-kafka hands out the whole topic with ``consume(batch)`` and
no work at all (the same consumer settings every contender gets). ``model-rate``: how fast
onnxruntime scores the same events at the same batch size and thread count, with the inputs
built beforehand, so only ``session.run`` is timed. Each prints one JSON object on stdout.

Run: ``python -m bench.probes bare-consume|model-rate --bootstrap-servers ... --topic ...``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from bench.baselines.common import CONSUMER_TUNING, ConfluentAvroDecoder, ModelSpec

__all__ = ["bare_consume", "main", "model_rate"]

#: consume() timeout; the loop ends on the message count, not on an empty poll.
CONSUME_TIMEOUT_S = 1.0
#: Give up when no message came for this long (a short topic or a broken broker).
IDLE_LIMIT_S = 30.0


def _assigned_consumer(bootstrap: str, topic: str) -> Consumer:
    """A consumer assigned every partition of ``topic`` from the beginning (no group join)."""
    consumer = Consumer(
        {
            **CONSUMER_TUNING,
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-probe-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    return consumer


def bare_consume(bootstrap: str, topic: str, count: int, batch_size: int) -> dict[str, Any]:
    """Consume ``count`` messages doing nothing with them; the rate from the first message."""
    consumer = _assigned_consumer(bootstrap, topic)
    seen = 0
    start = last_message = 0.0
    try:
        while seen < count:
            messages = consumer.consume(batch_size, timeout=CONSUME_TIMEOUT_S)
            now = time.perf_counter()
            if not messages:
                if start and now - last_message > IDLE_LIMIT_S:
                    break
                continue
            if not start:
                start = now
            last_message = now
            seen += sum(1 for m in messages if m.error() is None)
    finally:
        consumer.close()
    seconds = max(last_message - start, 1e-9)
    return {"events": seen, "seconds": seconds, "events_per_s": seen / seconds}


def model_rate(
    bootstrap: str,
    topic: str,
    registry_url: str,
    model_dir: Path,
    threads: int,
    batch_size: int,
    sample: int,
    min_seconds: float,
) -> dict[str, Any]:
    """Rows/s of ``session.run`` alone on ``sample`` events of the topic, in batches."""
    consumer = _assigned_consumer(bootstrap, topic)
    decoder = ConfluentAvroDecoder(registry_url)
    events: list[dict[str, Any]] = []
    try:
        while len(events) < sample:
            messages = consumer.consume(1000, timeout=CONSUME_TIMEOUT_S)
            if not messages:
                break
            events.extend(decoder.decode(m.value()) for m in messages if m.error() is None)
    finally:
        consumer.close()
    model = ModelSpec(model_dir, threads)
    batches = [
        model.build_inputs(events[i : i + batch_size])[0] for i in range(0, len(events), batch_size)
    ]
    model.score(batches[0])  # warm-up: first-run allocations are not the steady state
    rows = 0
    start = time.perf_counter()
    while True:
        for inputs in batches:
            model.score(inputs)
        rows += len(events)
        seconds = time.perf_counter() - start
        if seconds >= min_seconds:
            break
    return {
        "events": rows,
        "seconds": seconds,
        "events_per_s": rows / seconds,
        "batch_size": batch_size,
        "threads": threads,
        "distinct_events": len(events),
    }


def main(argv: list[str] | None = None) -> int:
    """Run one probe and print its result as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("probe", choices=["bare-consume", "model-rate"])
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--count", type=int, required=True, help="messages in the topic")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--registry-url", default="")
    parser.add_argument("--model", type=Path, default=Path("models/fraud/1"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sample", type=int, default=100_000, help="events scored (model-rate)")
    parser.add_argument("--min-seconds", type=float, default=3.0, help="model-rate duration")
    args = parser.parse_args(argv)
    if args.probe == "bare-consume":
        result = bare_consume(args.bootstrap_servers, args.topic, args.count, args.batch_size)
    else:
        result = model_rate(
            args.bootstrap_servers,
            args.topic,
            args.registry_url,
            args.model,
            args.threads,
            args.batch_size,
            min(args.sample, args.count),
            args.min_seconds,
        )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
