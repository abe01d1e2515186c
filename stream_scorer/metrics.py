"""Prometheus metrics and the HTTP endpoint serving ``/metrics``, ``/healthz`` and ``/readyz``.

:class:`ScorerMetrics` binds every metric to an injected ``CollectorRegistry`` (production
passes the default one; each test a fresh one). Names carry the ``stream_scorer_`` prefix and
unit suffixes; labels take bounded values only (topics, partitions, stages, model name and
version, error classes: never event ids). End-to-end latency is observed for every event, so
it is a numpy-backed histogram fed one array per batch rather than one Python call per event.
"""

from __future__ import annotations

import base64
import hmac
import socket
import ssl
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from typing import IO, Any, cast
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, WSGIServer

import numpy as np
from numpy.typing import NDArray
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    make_wsgi_app,
)
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

__all__ = [
    "LATENCY_BUCKETS_S",
    "STAGES",
    "ArrayHistogram",
    "EndpointSecurity",
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
    """Liveness and readiness, as the HTTP probes report them.

    Reasons are generic words (``consuming``, ``kafka unreachable``, ``batch stalled``), never
    client error text: ``/readyz`` is reachable by anyone who can reach the port.
    """

    live: bool = True
    ready: bool = False
    reason: str = "starting"
    live_reason: str = "ok"
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def set_ready(self, ready: bool, reason: str) -> None:
        """Change readiness, with the reason shown by ``/readyz``."""
        with self.lock:
            self.ready, self.reason = ready, reason

    def set_live(self, live: bool, reason: str) -> None:
        """Change liveness, with the reason shown by ``/healthz`` (503 when not live)."""
        with self.lock:
            self.live, self.live_reason = live, reason


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
        self.decisions = Counter(
            "stream_scorer_decisions_total", "Scored events per decision band of the model card.",
            ["model_name", "model_version", "band"], registry=registry,
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
        self.commits = Counter(
            "stream_scorer_commits_total",
            "Offset commits by result: ok, retried (sent again with the next), refused (by a "
            "rebalance), failed (stops the loop).", ["result"], registry=registry,
        )  # fmt: skip
        self.commit_duration = Histogram(
            "stream_scorer_commit_duration_seconds",
            "Time of synchronous offset commits (revocation, shutdown) and of exactly-once "
            "transaction commits.", buckets=STAGE_BUCKETS_S, registry=registry,
        )  # fmt: skip
        for result in ("ok", "retried", "refused", "failed"):
            self.commits.labels(result=result)
        self.registry_requests = Counter(
            "stream_scorer_registry_requests_total",
            "Schema Registry API calls by operation (schema_by_id, subjects) and outcome (ok, "
            "refused, unavailable, unusable).", ["operation", "outcome"], registry=registry,
        )  # fmt: skip
        self.registry_duration = Histogram(
            "stream_scorer_registry_request_duration_seconds",
            "Time of one Schema Registry API call, retries included.", ["operation"],
            buckets=STAGE_BUCKETS_S, registry=registry,
        )  # fmt: skip
        for operation in ("schema_by_id", "subjects"):
            self.registry_duration.labels(operation=operation)
            for outcome in ("ok", "refused", "unavailable", "unusable"):
                self.registry_requests.labels(operation=operation, outcome=outcome)
        self.producer_queue = Gauge(
            "stream_scorer_producer_queue_messages",
            "Messages in the producer's local queue, not yet acknowledged (after each batch).",
            registry=registry,
        )  # fmt: skip
        self.model_swaps = Counter(
            "stream_scorer_model_swaps_total",
            "Times the live model set was replaced while running.", registry=registry,
        )  # fmt: skip
        for kind in ("assigned", "revoked", "lost"):
            self.rebalances.labels(kind=kind)
        for stage in STAGES:
            self.stage_duration.labels(stage=stage)

    def init_labels(
        self, topic: str, model_name: str, model_version: str, bands: Sequence[str] = ()
    ) -> None:
        """Create every known label set at 0 so dashboards see series before the first event."""
        self.records_consumed.labels(topic=topic)
        self.records_scored.labels(model_name=model_name, model_version=model_version)
        self.records_flagged.labels(model_name=model_name, model_version=model_version)
        for band in bands:
            self.decisions.labels(model_name=model_name, model_version=model_version, band=band)
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

    def observe_registry(self, operation: str, outcome: str, seconds: float) -> None:
        """One Schema Registry call's outcome and duration."""
        self.registry_requests.labels(operation=operation, outcome=outcome).inc()
        self.registry_duration.labels(operation=operation).observe(seconds)

    def observe_commit(self, result: str, seconds: float | None) -> None:
        """One commit's result and, when it was waited for, its duration."""
        self.commits.labels(result=result).inc()
        if seconds is not None:
            self.commit_duration.observe(seconds)

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


#: Longest a connection may stay idle or dribble its request before it is dropped: a scrape
#: is one short request, so a half-open or slow-loris connection must not hold a thread.
CONNECTION_TIMEOUT_S = 5.0
#: Most connections served at once; more are refused at once (Prometheus retries next scrape).
MAX_CONNECTIONS = 16
#: What the HTTP ``Server`` header says: no Python or library version for a scanner to match.
SERVER_HEADER = "stream-scorer"


class _BannerlessHandler(ServerHandler):
    """wsgiref's response handler with our Server header instead of Python's version."""

    server_software = SERVER_HEADER


class _QuietHandler(WSGIRequestHandler):
    """Per-connection timeout, no version banner, no access log lines."""

    timeout = CONNECTION_TIMEOUT_S
    server_version = SERVER_HEADER
    sys_version = ""

    def handle(self) -> None:
        """One request, as wsgiref's handler does it, answered by :class:`_BannerlessHandler`."""
        self.raw_requestline = self.rfile.readline(65537)
        if len(self.raw_requestline) > 65536:  # wsgiref's own request-line cap
            self.requestline, self.request_version, self.command = "", "", ""
            self.send_error(414)
            return
        if not self.parse_request():  # an error response has been sent
            return
        handler = _BannerlessHandler(
            self.rfile,
            cast(IO[bytes], self.wfile),  # a socket file, as wsgiref passes it
            self.get_stderr(),
            self.get_environ(),
            multithread=False,
        )
        handler.request_handler = self  # type: ignore[attr-defined]  # wsgiref's back-pointer
        handler.run(self.server.get_app())  # type: ignore[attr-defined]  # a WSGIServer

    def log_message(self, format: str, *args: object) -> None:
        """Silence per-request access logs: scrapes every few seconds are noise."""


class _BoundedServer(ThreadingMixIn, WSGIServer):
    """A thread per connection, but at most :data:`MAX_CONNECTIONS` at once."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], ssl_context: ssl.SSLContext | None, limit: int
    ) -> None:
        self._slots = threading.BoundedSemaphore(limit)
        self._ssl_context = ssl_context
        super().__init__(address, _QuietHandler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        if self._ssl_context is not None:
            sock.settimeout(CONNECTION_TIMEOUT_S)  # the handshake is bounded like a request
            sock = self._ssl_context.wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False
            )
        return sock, address

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # full: refuse at once rather than queue
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            if isinstance(request, ssl.SSLSocket):
                try:
                    request.do_handshake()
                except (OSError, ssl.SSLError):
                    self.shutdown_request(request)
                    return
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up or times out is not an error worth a traceback."""


@dataclass(frozen=True, slots=True)
class EndpointSecurity:
    """Optional TLS and basic auth of the HTTP endpoint (``/metrics`` only: probes stay open)."""

    cert_file: str | None = None
    key_file: str | None = None
    username: str | None = None
    password: str | None = None

    def ssl_context(self) -> ssl.SSLContext | None:
        """A server-side TLS context, or None for plain HTTP."""
        if self.cert_file is None:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


def _endpoint_app(
    registry: CollectorRegistry, health: Health, security: EndpointSecurity
) -> Callable[..., Iterable[bytes]]:
    """The WSGI app: prometheus-client's own exposition (content negotiation, gzip) on
    ``/metrics``, behind basic auth when configured; ``/healthz`` and ``/readyz`` as probes."""
    metrics_app = make_wsgi_app(registry)
    expected = None
    if security.username is not None:
        token = f"{security.username}:{security.password or ''}".encode()
        expected = b"Basic " + base64.b64encode(token)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            given = environ.get("HTTP_AUTHORIZATION", "").encode()
            if expected is not None and not hmac.compare_digest(given, expected):
                start_response(
                    "401 Unauthorized",
                    [("Content-Type", "text/plain"), ("WWW-Authenticate", 'Basic realm="metrics"')],
                )
                return [b"unauthorized\n"]
            return metrics_app(environ, start_response)  # type: ignore[no-any-return]
        if path == "/healthz":
            with health.lock:
                live, reason = health.live, health.live_reason
            body = b"ok\n" if live else f"not live: {reason}\n".encode()
            start_response("200 OK" if live else "503 Service Unavailable", _plain(body))
            return [body]
        if path == "/readyz":
            with health.lock:
                ready, reason = health.ready, health.reason
            body = f"{'ready' if ready else 'not ready'}: {reason}\n".encode()
            start_response("200 OK" if ready else "503 Service Unavailable", _plain(body))
            return [body]
        start_response("404 Not Found", _plain(b"not found\n"))
        return [b"not found\n"]

    return app


def _plain(body: bytes) -> list[tuple[str, str]]:
    return [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]


class MetricsServer:
    """Serves ``/metrics``, ``/healthz`` and ``/readyz`` from a daemon thread."""

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        health: Health,
        security: EndpointSecurity | None = None,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        """Bind the socket (port 0 picks a free one) and start serving."""
        security = security or EndpointSecurity()
        self._server = _BoundedServer((host, port), security.ssl_context(), max_connections)
        self._server.set_app(_endpoint_app(registry, health, security))
        self.port: int = self._server.server_address[1]
        self.host = host
        self.scheme = "https" if security.cert_file else "http"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-http", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        """Base URL of the endpoint."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host  # noqa: S104
        return f"{self.scheme}://{host}:{self.port}"

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
