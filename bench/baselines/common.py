"""What every baseline shares: arguments, client tuning, schema lookup, model inputs, alerts.

The baselines do the same job as stream-scorer on the same data: decode Confluent-framed Avro
transactions (the writer schema fetched from the Schema Registry once per schema id), build the
shipped model's inputs from the model card's bindings, score with onnxruntime, and publish the
events whose score reaches the card's threshold. Their alert is a small JSON object carrying
the source ``event_time``, which is all the latency measurement needs.

Only the standard library, numpy, fastavro, onnxruntime and confluent-kafka are imported here,
so the Quix Streams job (own virtual environment) can use this module too.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import signal
import threading
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

__all__ = [
    "CONSUMER_TUNING",
    "PRODUCER_TUNING",
    "ConfluentAvroDecoder",
    "InputBinding",
    "ModelSpec",
    "add_common_arguments",
    "alert_value",
    "event_time_ms",
    "stop_on_signal",
]

#: Consumer settings every contender gets, the same as stream-scorer's defaults, so the
#: comparison is about the processing design and not about ``fetch.wait.max.ms`` (whose
#: librdkafka default of 500 ms alone sets p50 latency near 300 ms, FIELD-NOTES.md).
CONSUMER_TUNING: dict[str, Any] = {
    "auto.offset.reset": "earliest",
    "fetch.wait.max.ms": 10,
    "queued.max.messages.kbytes": 16384,
}
#: Producer settings every contender gets, the same as stream-scorer's (idempotent, acks=all).
PRODUCER_TUNING: dict[str, Any] = {
    "linger.ms": 5,
    "compression.type": "lz4",
    "enable.idempotence": True,
    "acks": "all",
}
#: Confluent wire format: magic byte 0, then a 4-byte big-endian schema id.
CONFLUENT_HEADER_LEN = 5
#: The Unix epoch, to turn decoded timestamp-millis datetimes back into milliseconds.
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
#: Registry request timeout; the registry is local, so anything slower is a failure.
REGISTRY_TIMEOUT_S = 10.0


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the arguments every baseline takes."""
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--input-topic", required=True)
    parser.add_argument("--output-topic", required=True)
    parser.add_argument("--group", required=True, help="consumer group id")
    parser.add_argument("--registry-url", required=True, help="Schema Registry base URL")
    parser.add_argument("--model", type=Path, default=Path("models/fraud/1"))
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")


def stop_on_signal() -> threading.Event:
    """An event set by SIGTERM or SIGINT, so a loop finishes cleanly."""
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        del signum, frame
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def event_time_ms(value: Any) -> int:
    """A decoded ``timestamp-millis`` (a datetime, or already an int) as epoch milliseconds."""
    if isinstance(value, dt.datetime):
        return (value - EPOCH) // dt.timedelta(milliseconds=1)
    return int(value)


def alert_value(
    event: Mapping[str, Any], score: float, partition: int | None, offset: int | None
) -> bytes:
    """The baselines' alert: a small JSON object with the id, score and source event time."""
    return json.dumps(
        {
            "event_id": event["transaction_id"],
            "score": round(score, 6),
            "event_time": event_time_ms(event["event_time"]),
            "source_partition": partition,
            "source_offset": offset,
        },
        separators=(",", ":"),
    ).encode()


class ConfluentAvroDecoder:
    """Decodes Confluent-framed Avro with the writer schema fetched from the registry by id.

    The writer schema is used as the reader schema (the benchmark's producer writes with the
    service's reader schema), which is what confluent-kafka's ``AvroDeserializer`` does when it
    is given no reader schema, and the fastest way to use fastavro.
    """

    def __init__(self, registry_url: str) -> None:
        """Remember the registry; schemas are fetched on first sight of their id."""
        self._registry_url = registry_url.rstrip("/")
        self._schemas: dict[int, Any] = {}

    def _schema(self, schema_id: int) -> Any:
        schema = self._schemas.get(schema_id)
        if schema is None:
            url = f"{self._registry_url}/schemas/ids/{schema_id}"
            if not url.startswith(("http://", "https://")):
                msg = f"registry URL must be http(s): {url}"
                raise ValueError(msg)
            with urllib.request.urlopen(url, timeout=REGISTRY_TIMEOUT_S) as response:  # noqa: S310 - scheme checked above
                text = json.loads(response.read())["schema"]
            schema = fastavro.parse_schema(json.loads(text))
            self._schemas[schema_id] = schema
        return schema

    def decode(self, value: bytes | None) -> dict[str, Any]:
        """One message value as a dict.

        Raises:
            ValueError: No value, or not Confluent-framed.
        """
        if value is None or len(value) < CONFLUENT_HEADER_LEN or value[0] != 0:
            msg = "not a Confluent-framed Avro message"
            raise ValueError(msg)
        schema = self._schema(int.from_bytes(value[1:CONFLUENT_HEADER_LEN], "big"))
        buffer = io.BytesIO(value)
        buffer.seek(CONFLUENT_HEADER_LEN)
        record: Any = fastavro.schemaless_reader(buffer, schema, None)
        if not isinstance(record, dict):
            msg = "the writer schema is not a record"
            raise ValueError(msg)
        return record


@dataclass(frozen=True, slots=True)
class InputBinding:
    """One ONNX input fed from one event field (the shipped model's ``per_field`` layout)."""

    name: str
    field: str
    dtype: str
    missing: str


class ModelSpec:
    """The model card's bindings, threshold and output, plus one onnxruntime session."""

    def __init__(self, model_dir: Path, threads: int) -> None:
        """Read ``model.json`` and load ``model.onnx`` with ``threads`` intra-op threads.

        Raises:
            ValueError: The card's layout is not ``per_field`` (the baselines support only it).
        """
        card = json.loads((model_dir / "model.json").read_text(encoding="utf-8"))
        if card.get("input_layout", "per_field") != "per_field":
            msg = "the baselines bind per_field models only"
            raise ValueError(msg)
        self.bindings = [
            InputBinding(i["name"], i["field"], i["dtype"], i.get("missing", "reject"))
            for i in card["inputs"]
        ]
        self.threshold = float(card["threshold"])
        self.output = card["output"]["name"]
        self.positive = int(card["output"].get("positive_class_index", 1))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(model_dir / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )

    def build_inputs(
        self, events: Sequence[Mapping[str, Any]]
    ) -> tuple[dict[str, NDArray[Any]], NDArray[np.intp]]:
        """Model inputs ``[N, 1]`` per binding, and the row indices they hold.

        A null in a field the card marks ``missing: reject`` drops that row; a null in a
        ``missing: nan`` field becomes NaN.
        """
        n = len(events)
        keep = np.ones(n, dtype=bool)
        inputs: dict[str, NDArray[Any]] = {}
        for binding in self.bindings:
            values = [event[binding.field] for event in events]
            if binding.dtype == "string":
                for i, value in enumerate(values):
                    if value is None:
                        keep[i] = False
                column: NDArray[Any] = np.array(
                    ["" if v is None else v for v in values], dtype=object
                )
            else:
                column = np.fromiter(
                    (np.nan if v is None else v for v in values), dtype=np.float32, count=n
                )
                if binding.missing == "reject":
                    keep &= ~np.isnan(column)
            inputs[binding.name] = column.reshape(-1, 1)
        rows = np.flatnonzero(keep)
        if len(rows) < n:
            inputs = {name: array[rows] for name, array in inputs.items()}
        return inputs, rows

    def score(self, inputs: Mapping[str, NDArray[Any]]) -> NDArray[np.float32]:
        """Positive-class probabilities of one batch (one ``session.run``)."""
        probabilities = self.session.run([self.output], dict(inputs))[0]
        return np.asarray(probabilities[:, self.positive], dtype=np.float32)
