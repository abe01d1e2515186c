"""Prometheus metrics and the HTTP endpoint serving ``/metrics``, ``/healthz`` and ``/readyz``.

:class:`ScorerMetrics` binds every metric to an injected ``CollectorRegistry`` (production
passes the default one; each test a fresh one). Names carry the ``stream_scorer_`` prefix and
unit suffixes; labels take bounded values only (topics, partitions, stages, model name and
version, error classes: never event ids). End-to-end latency is observed for every event, so
it is a numpy-backed histogram fed one array per batch rather than one Python call per event.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

__all__ = [
    "LATENCY_BUCKETS_S",
    "STAGES",
    "ArrayHistogram",
    "Health",
    "MetricsServer",
    "ScorerMetrics",
]

#: Pipeline stages timed per batch (labels of stage_duration_seconds).
#: ``backpressure`` is the at-least-once wait for room among the batches in flight;
#: ``commit`` the exactly-once transaction commit.
STAGES = (
    "consume", "decode", "featurize", "score", "flag", "materialise", "encode", "publish",
    "backpressure", "commit",
)  # fmt: skip
#: Stages that can reject a record (labels of records_dead_lettered_total).
REJECT_STAGES = ("decode", "featurize", "score")
#: End-to-end latency buckets: the product promises milliseconds, so resolve 1 ms to 10 s.
LATENCY_BUCKETS_S = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
#: Per-stage time buckets: from tens of microseconds (flag) to a slow flush.
STAGE_BUCKETS_S = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
)  # fmt: skip
#: Batch size buckets up to the largest allowed batch.
BATCH_SIZE_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10_000, 100_000)


class ArrayHistogram(Collector):
    """A Prometheus histogram fed whole numpy arrays: one ``searchsorted`` per batch."""

    def __init__(
        self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry
    ) -> None:
        """Register the histogram with ``registry``."""
        self._name = name
        self._doc = documentation
        self._bounds = np.asarray(buckets, dtype=np.float64)
        self._counts = np.zeros(len(buckets) + 1, dtype=np.int64)
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, values: NDArray[np.float64]) -> None:
        """Add every value of ``values``."""
        if values.size == 0:
            return
        slots = np.searchsorted(self._bounds, values, side="left")
        counts = np.bincount(slots, minlength=len(self._counts))
        with self._lock:
            self._counts += counts
            self._sum += float(values.sum())

    def collect(self) -> Iterable[HistogramMetricFamily]:
        """Yield the cumulative buckets, as Prometheus expects."""
        with self._lock:
            cumulative = np.cumsum(self._counts)
            total = self._sum
        buckets = [
            (repr(float(b)), float(c)) for b, c in zip(self._bounds, cumulative, strict=False)
        ]
        buckets.append(("+Inf", float(cumulative[-1])))
        yield HistogramMetricFamily(self._name, self._doc, buckets=buckets, sum_value=total)


@dataclass
class Health:
    """Liveness and readiness, as the HTTP probes report them."""

    live: bool = True
    ready: bool = False
    reason: str = "starting"
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def set_ready(self, ready: bool, reason: str) -> None:
        """Change readiness, with the reason shown by ``/readyz``."""
        with self.lock:
            self.ready, self.reason = ready, reason


class ScorerMetrics:
    """Every metric the service exports, bound to one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        """Create the metrics in ``registry``."""
        self.registry = registry
        self.records_consumed = Counter(
            "stream_scorer_records_consumed_total", "Records consumed.", ["topic"],
            registry=registry,
        )  # fmt: skip
        self.records_scored = Counter(
            "stream_scorer_records_scored_total", "Events the model scored.",
            ["model_name", "model_version"], registry=registry,
        )  # fmt: skip
        self.records_flagged = Counter(
            "stream_scorer_records_flagged_total", "Events at or above the threshold (alerts).",
            ["model_name", "model_version"], registry=registry,
        )  # fmt: skip
        self.records_dead_lettered = Counter(
            "stream_scorer_records_dead_lettered_total", "Records sent to the dead-letter topic.",
            ["stage", "error_type"], registry=registry,
        )  # fmt: skip
        self.batches = Counter(
            "stream_scorer_batches_total", "Micro-batches processed and committed.",
            registry=registry,
        )  # fmt: skip
        self.model_bisections = Counter(
            "stream_scorer_model_bisections_total",
            "Batches whose model run failed and were split to isolate the bad events.",
            registry=registry,
        )  # fmt: skip
        self.transactions_aborted = Counter(
            "stream_scorer_transactions_aborted_total",
            "Exactly-once transactions aborted and replayed.", registry=registry,
        )  # fmt: skip
        self.batch_size = Histogram(
            "stream_scorer_batch_size", "Records per micro-batch.",
            buckets=BATCH_SIZE_BUCKETS, registry=registry,
        )  # fmt: skip
        self.stage_duration = Histogram(
            "stream_scorer_stage_duration_seconds", "Time per batch spent in each stage.",
            ["stage"], buckets=STAGE_BUCKETS_S, registry=registry,
        )  # fmt: skip
        self.end_to_end_latency = ArrayHistogram(
            "stream_scorer_end_to_end_latency_seconds",
            "Event timestamp to the batch's results acknowledged by the broker.",
            LATENCY_BUCKETS_S, registry,
        )  # fmt: skip
        self.consumer_lag = Gauge(
            "stream_scorer_consumer_lag", "Messages behind the partition's end (librdkafka stats).",
            ["topic", "partition"], registry=registry,
        )  # fmt: skip
        self.model_info = Gauge(
            "stream_scorer_model_info", "The model serving now (value 1).",
            ["model_name", "model_version", "sha256", "input_layout"], registry=registry,
        )  # fmt: skip
        self.ready = Gauge(
            "stream_scorer_ready", "1 while the service is ready to score.", registry=registry
        )
        self.rebalances = Counter(
            "stream_scorer_rebalances_total",
            "Partition assignment changes seen by this member, by kind.",
            ["kind"], registry=registry,
        )  # fmt: skip
        self.batches_in_flight = Gauge(
            "stream_scorer_batches_in_flight",
            "Batches published but not yet acknowledged (at-least-once).", registry=registry,
        )  # fmt: skip
        self.model_swaps = Counter(
            "stream_scorer_model_swaps_total",
            "Times the live model set was replaced while running.", registry=registry,
        )  # fmt: skip
        for kind in ("assigned", "revoked", "lost"):
            self.rebalances.labels(kind=kind)
        for stage in STAGES:
            self.stage_duration.labels(stage=stage)

    def init_labels(self, topic: str, model_name: str, model_version: str) -> None:
        """Create every known label set at 0 so dashboards see series before the first event."""
        self.records_consumed.labels(topic=topic)
        self.records_scored.labels(model_name=model_name, model_version=model_version)
        self.records_flagged.labels(model_name=model_name, model_version=model_version)
        for stage, error_type in (
            ("decode", "DecodeError"),
            ("featurize", "FeatureError"),
            ("score", "ModelError"),
        ):
            self.records_dead_lettered.labels(stage=stage, error_type=error_type)

    def set_model(self, name: str, version: str, sha256: str, input_layout: str) -> None:
        """Show ``name``/``version`` as the live model (and only it)."""
        self.model_info.clear()
        self.model_info.labels(
            model_name=name, model_version=version, sha256=sha256, input_layout=input_layout
        ).set(1)

    def forget_lag(self, topic: str, partition: int) -> None:
        """Stop exporting the lag of a partition this member no longer holds: its new owner
        reports it, and a stale series would be counted twice across the group."""
        try:
            self.consumer_lag.remove(topic, str(partition))
        except KeyError:
            return  # never reported

    def set_lag(self, topic: str, partition: int, lag: int) -> None:
        """Record consumer lag of one partition."""
        self.consumer_lag.labels(topic=topic, partition=str(partition)).set(lag)


class _Handler(http.server.BaseHTTPRequestHandler):
    registry: CollectorRegistry
    health: Health

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            live = self.health.live
            self._send(200 if live else 503, b"ok\n" if live else b"dead\n", "text/plain")
        elif path == "/readyz":
            with self.health.lock:
                ready, reason = self.health.ready, self.health.reason
            body = f"{'ready' if ready else 'not ready'}: {reason}\n".encode()
            self._send(200 if ready else 503, body, "text/plain")
        else:
            self._send(404, b"not found\n", "text/plain")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Silence per-request access logs: scrapes every few seconds are noise."""


class MetricsServer:
    """Serves ``/metrics``, ``/healthz`` and ``/readyz`` from a daemon thread."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry, health: Health) -> None:
        """Bind the socket (port 0 picks a free one) and start serving."""
        handler = type("Handler", (_Handler,), {"registry": registry, "health": health})
        self._server = http.server.ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self.host = host
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-http", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        """Base URL of the endpoint."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host  # noqa: S104
        return f"http://{host}:{self.port}"

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
