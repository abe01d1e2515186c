"""Baseline 4: the same job written idiomatically with Quix Streams, one message per apply.

An ``Application`` with the same client tuning as the other contenders, an input topic whose
value deserializer decodes Confluent-framed Avro (writer schema fetched from the Schema Registry
by id, decoded with fastavro), a ``StreamingDataFrame`` that scores each message with
onnxruntime (one row per ``session.run``), keeps the flagged ones and sends a JSON alert to the
output topic. Checkpoints (flush, then commit) every second instead of Quix's default 5 s, so
the harness, which follows committed offsets, sees progress at the same resolution as for the
naive loop.

Runs in its own virtual environment (quixstreams 3.28.1 requires confluent-kafka < 2.13):
``.cache/bench-quix-venv/bin/python -m bench.baselines.quix_app --bootstrap-servers ...``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from quixstreams import Application, message_context
from quixstreams.models.serializers import Deserializer

from bench.baselines.common import (
    CONSUMER_TUNING,
    PRODUCER_TUNING,
    ConfluentAvroDecoder,
    ModelSpec,
    add_common_arguments,
    event_time_ms,
)

__all__ = ["ConfluentAvroValueDeserializer", "main"]

#: Seconds between Quix checkpoints (producer flush + offset commit); Quix's default is 5.
COMMIT_INTERVAL_S = 1.0


# quixstreams is not installed where mypy runs, so Deserializer is Any there.
class ConfluentAvroValueDeserializer(Deserializer):  # type: ignore[misc]
    """Quix value deserializer: Confluent-framed Avro bytes → dict."""

    def __init__(self, registry_url: str) -> None:
        """Resolve schemas through ``registry_url``."""
        super().__init__()
        self._decoder = ConfluentAvroDecoder(registry_url)

    def __call__(self, value: bytes, ctx: Any) -> dict[str, Any]:
        """Decode one message value."""
        del ctx
        return self._decoder.decode(value)


def main(argv: list[str] | None = None) -> int:
    """Run the application until SIGTERM; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    args = parser.parse_args(argv)

    model = ModelSpec(args.model, args.threads)
    consumer_extra = {k: v for k, v in CONSUMER_TUNING.items() if k != "auto.offset.reset"}
    producer_extra = {k: v for k, v in PRODUCER_TUNING.items() if k != "enable.idempotence"}
    app = Application(
        broker_address=args.bootstrap_servers,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        commit_interval=COMMIT_INTERVAL_S,
        consumer_extra_config=consumer_extra,
        producer_extra_config=producer_extra,
        loglevel=logging.WARNING,
    )
    source = app.topic(
        args.input_topic,
        key_deserializer="bytes",
        value_deserializer=ConfluentAvroValueDeserializer(args.registry_url),
    )
    alerts = app.topic(args.output_topic, key_serializer="bytes", value_serializer="json")

    def score(event: dict[str, Any]) -> dict[str, Any]:
        inputs, rows = model.build_inputs([event])
        value = float(model.score(inputs)[0]) if len(rows) else -1.0
        return {"event": event, "score": value}

    def to_alert(row: dict[str, Any]) -> dict[str, Any]:
        context = message_context()
        return {
            "event_id": row["event"]["transaction_id"],
            "score": round(row["score"], 6),
            "event_time": event_time_ms(row["event"]["event_time"]),
            "source_partition": context.partition,
            "source_offset": context.offset,
        }

    sdf = app.dataframe(source)
    sdf = sdf.apply(score)
    sdf = sdf.filter(lambda row: row["score"] >= model.threshold)
    sdf = sdf.apply(to_alert)
    sdf.to_topic(alerts)
    app.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
