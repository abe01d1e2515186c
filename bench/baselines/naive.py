"""Baseline 3: the naive loop, one message at a time.

``poll()`` one message, decode it with fastavro, build one-row model inputs, one
``session.run`` per message, produce the alert when flagged. Offsets are auto-committed every
second (librdkafka's ``enable.auto.commit``), the usual way such a loop is written; note that
this commits messages whose alerts may not yet be acknowledged, a weaker guarantee than the
barrier stream-scorer and the batched baseline keep.

Run: ``python -m bench.baselines.naive --bootstrap-servers ...``.
"""

from __future__ import annotations

import argparse
import sys

from confluent_kafka import Consumer, Producer

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

#: Poll timeout: short, so a stop signal is noticed promptly.
POLL_TIMEOUT_S = 0.1
#: Auto-commit interval; 1 s (librdkafka's default is 5 s) keeps the harness's view of
#: progress, which reads committed offsets, within a second of the truth.
AUTO_COMMIT_INTERVAL_MS = 1000


def main(argv: list[str] | None = None) -> int:
    """Score until SIGTERM; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    args = parser.parse_args(argv)

    stop = stop_on_signal()
    model = ModelSpec(args.model, args.threads)
    decoder = ConfluentAvroDecoder(args.registry_url)
    consumer = Consumer(
        {
            **CONSUMER_TUNING,
            "bootstrap.servers": args.bootstrap_servers,
            "group.id": args.group,
            "enable.auto.commit": True,
            "auto.commit.interval.ms": AUTO_COMMIT_INTERVAL_MS,
        }
    )
    producer = Producer({**PRODUCER_TUNING, "bootstrap.servers": args.bootstrap_servers})
    consumer.subscribe([args.input_topic])
    try:
        while not stop.is_set():
            message = consumer.poll(POLL_TIMEOUT_S)
            producer.poll(0)
            if message is None or message.error() is not None:
                continue
            try:
                event = decoder.decode(message.value())
            except (ValueError, EOFError, IndexError):
                continue
            inputs, rows = model.build_inputs([event])
            if len(rows) == 0:
                continue
            score = float(model.score(inputs)[0])
            if score >= model.threshold:
                producer.produce(
                    args.output_topic,
                    key=message.key(),
                    value=alert_value(event, score, message.partition(), message.offset()),
                )
    finally:
        producer.flush(10)
        consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
