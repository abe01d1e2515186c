"""Baseline 2: a batched scorer that decodes every record into a dict with fastavro.

The straightforward good design before a columnar decoder: ``consume(batch_size)``, decode each
record with ``fastavro.schemaless_reader``, build the model inputs from the dicts, one
``session.run`` per batch, produce the flagged events, ``flush()``, then commit the batch's
offsets synchronously (the same at-least-once barrier stream-scorer uses). Undecodable records
are counted and skipped (the benchmark's data set has none).

Run: ``python -m bench.baselines.fastavro_batch --bootstrap-servers ... --batch-size 1000``.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from confluent_kafka import Consumer, KafkaException, Producer

from bench.baselines.common import (
    CONSUMER_TUNING,
    PRODUCER_TUNING,
    ConfluentAvroDecoder,
    ModelSpec,
    add_common_arguments,
    alert_value,
    stop_on_signal,
)

__all__ = ["main"]

#: Longest wait to fill a batch, the same as stream-scorer's default ``batch.max_wait_ms``.
MAX_WAIT_S = 0.02


def main(argv: list[str] | None = None) -> int:
    """Score until SIGTERM; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=1000)
    args = parser.parse_args(argv)

    stop = stop_on_signal()
    model = ModelSpec(args.model, args.threads)
    decoder = ConfluentAvroDecoder(args.registry_url)
    consumer = Consumer(
        {
            **CONSUMER_TUNING,
            "bootstrap.servers": args.bootstrap_servers,
            "group.id": args.group,
            "enable.auto.commit": False,
        }
    )
    producer = Producer({**PRODUCER_TUNING, "bootstrap.servers": args.bootstrap_servers})
    consumer.subscribe([args.input_topic])
    failed: list[str] = []

    def on_delivery(error: object, message: object) -> None:
        if error is not None:
            failed.append(str(error))

    try:
        while not stop.is_set():
            messages = consumer.consume(args.batch_size, timeout=MAX_WAIT_S)
            if not messages:
                continue
            good = [m for m in messages if m.error() is None]
            events = []
            sources = []
            for message in good:
                try:
                    events.append(decoder.decode(message.value()))
                except (ValueError, EOFError, IndexError):
                    continue
                sources.append(message)
            if events:
                inputs, rows = model.build_inputs(events)
                scores = model.score(inputs)
                for i in np.flatnonzero(scores >= model.threshold).tolist():
                    row = int(rows[i])
                    source = sources[row]
                    producer.produce(
                        args.output_topic,
                        key=source.key(),
                        value=alert_value(
                            events[row], float(scores[i]), source.partition(), source.offset()
                        ),
                        on_delivery=on_delivery,
                    )
            producer.flush()
            if failed:
                msg = f"{len(failed)} alerts not delivered: {failed[0]}"
                raise KafkaException(msg)
            consumer.commit(asynchronous=False)
    finally:
        producer.flush(10)
        consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
