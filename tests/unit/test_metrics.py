"""Metrics: the numpy-fed histogram equals Prometheus's own; the HTTP probes and /metrics."""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import http.client
import ipaddress
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram

from stream_scorer.metrics import (
    CONNECTION_TIMEOUT_S,
    LATENCY_BUCKETS_S,
    STAGES,
    ArrayHistogram,
    EndpointSecurity,
    Health,
    MetricsServer,
    ScorerMetrics,
)

BUCKETS = (0.001, 0.01, 0.1, 1.0, 10.0)


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample but *_created, keyed by name and sorted labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


@pytest.mark.parametrize(
    "batches",
    [
        [[0.0005, 0.001, 0.0010001, 0.05, 0.1, 5.0, 10.0, 11.0, 1e9]],
        [[0.2, 0.3], [], [0.001, 0.01, 0.1, 1.0, 10.0], [-1.0]],
        [list(np.random.default_rng(3).exponential(0.05, size=1000))],
    ],
    ids=["bounds-and-overflow", "several-batches", "random"],
)
def test_array_histogram_equals_prometheus_histogram(batches: list[list[float]]) -> None:
    """Buckets (le inclusive), sum and count equal a prometheus Histogram fed the same values."""
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    array_histogram = ArrayHistogram("probe_seconds", "Probe.", BUCKETS, ours)
    reference = Histogram("probe_seconds", "Probe.", buckets=BUCKETS, registry=theirs)

    for batch in batches:
        array_histogram.observe_many(np.asarray(batch, dtype=np.float64))
        for value in batch:
            reference.observe(value)

    got, want = _samples(ours), _samples(theirs)
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value), key
    total = sum(len(b) for b in batches)
    assert ours.get_sample_value("probe_seconds_count") == total
    assert ours.get_sample_value("probe_seconds_bucket", {"le": "+Inf"}) == total


def test_array_histogram_bound_value_counts_in_its_bucket(registry: CollectorRegistry) -> None:
    """A value equal to a bound is counted in that bound's bucket (le means <=)."""
    histogram = ArrayHistogram("edge_seconds", "Edge.", BUCKETS, registry)

    histogram.observe_many(np.array([0.01]))

    assert registry.get_sample_value("edge_seconds_bucket", {"le": "0.001"}) == 0
    assert registry.get_sample_value("edge_seconds_bucket", {"le": "0.01"}) == 1
    assert registry.get_sample_value("edge_seconds_sum") == 0.01


def test_scorer_metrics_init_labels_creates_zero_series(registry: CollectorRegistry) -> None:
    """init_labels exposes every known series at 0 before the first event."""
    metrics = ScorerMetrics(registry)

    metrics.init_labels("transactions", "fraud", "1")

    labels = {"model_name": "fraud", "model_version": "1"}
    assert (
        registry.get_sample_value("stream_scorer_records_consumed_total", {"topic": "transactions"})
        == 0
    )
    assert registry.get_sample_value("stream_scorer_records_scored_total", labels) == 0
    assert registry.get_sample_value("stream_scorer_records_flagged_total", labels) == 0
    for stage, error_type in (
        ("decode", "DecodeError"),
        ("featurize", "FeatureError"),
        ("score", "ModelError"),
    ):
        assert (
            registry.get_sample_value(
                "stream_scorer_records_dead_lettered_total",
                {"stage": stage, "error_type": error_type},
            )
            == 0
        )
    for stage in STAGES:
        assert (
            registry.get_sample_value(
                "stream_scorer_stage_duration_seconds_count", {"stage": stage}
            )
            == 0
        )
    assert (
        registry.get_sample_value(
            "stream_scorer_end_to_end_latency_seconds_bucket", {"le": repr(LATENCY_BUCKETS_S[0])}
        )
        == 0
    )


def test_set_model_shows_only_the_live_model(registry: CollectorRegistry) -> None:
    """set_model replaces the previous model's info series."""
    metrics = ScorerMetrics(registry)
    old = {"model_name": "fraud", "model_version": "1", "sha256": "aa", "input_layout": "tensor"}
    new = {**old, "model_version": "2", "sha256": "bb"}

    metrics.set_model("fraud", "1", "aa", "tensor")
    metrics.set_model("fraud", "2", "bb", "tensor")

    assert registry.get_sample_value("stream_scorer_model_info", new) == 1
    assert registry.get_sample_value("stream_scorer_model_info", old) is None


def test_set_lag(registry: CollectorRegistry) -> None:
    """set_lag records the lag of one partition under string labels."""
    ScorerMetrics(registry).set_lag("transactions", 3, 42)

    assert (
        registry.get_sample_value(
            "stream_scorer_consumer_lag", {"topic": "transactions", "partition": "3"}
        )
        == 42
    )


@pytest.fixture
def served(registry: CollectorRegistry) -> Iterator[tuple[MetricsServer, Health, ScorerMetrics]]:
    """A MetricsServer on a free loopback port with fresh metrics and health."""
    health = Health()
    metrics = ScorerMetrics(registry)
    server = MetricsServer("127.0.0.1", 0, registry, health)
    try:
        yield server, health, metrics
    finally:
        server.close()


def _get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def test_metrics_endpoint_serves_the_registry(
    served: tuple[MetricsServer, Health, ScorerMetrics],
) -> None:
    """GET /metrics returns the registry in the Prometheus text format."""
    server, _, metrics = served
    metrics.batches.inc(3)

    status, content_type, body = _get(f"{server.url}/metrics")

    assert server.port != 0
    assert status == 200
    assert content_type.startswith("text/plain")
    assert "stream_scorer_batches_total 3.0" in body


def test_readyz_is_503_until_ready(served: tuple[MetricsServer, Health, ScorerMetrics]) -> None:
    """/readyz answers 503 with the reason until set_ready(True), then 200."""
    server, health, _ = served

    before = _get(f"{server.url}/readyz")
    health.set_ready(True, "scoring")
    after = _get(f"{server.url}/readyz")
    health.set_ready(False, "rebalancing")
    again = _get(f"{server.url}/readyz")

    assert (before[0], before[2]) == (503, "not ready: starting\n")
    assert (after[0], after[2]) == (200, "ready: scoring\n")
    assert (again[0], again[2]) == (503, "not ready: rebalancing\n")


def test_healthz_follows_liveness(served: tuple[MetricsServer, Health, ScorerMetrics]) -> None:
    """/healthz is 200 while live and 503, with the reason, once the process is not live."""
    server, health, _ = served

    live = _get(f"{server.url}/healthz")
    health.set_live(False, "loop stalled")
    dead = _get(f"{server.url}/healthz")

    assert (live[0], live[2]) == (200, "ok\n")
    assert (dead[0], dead[2]) == (503, "not live: loop stalled\n")


def test_unknown_path_is_404(served: tuple[MetricsServer, Health, ScorerMetrics]) -> None:
    """Paths other than the three endpoints are 404."""
    server, _, _ = served

    assert _get(f"{server.url}/nothing")[0] == 404


def test_url_of_wildcard_host_points_at_loopback(registry: CollectorRegistry) -> None:
    """A server bound to 0.0.0.0 advertises a loopback URL that works."""
    server = MetricsServer("0.0.0.0", 0, registry, Health())  # noqa: S104 - test of that case
    try:
        assert server.url == f"http://127.0.0.1:{server.port}"
        assert _get(f"{server.url}/healthz")[0] == 200
    finally:
        server.close()


def test_metrics_negotiates_openmetrics_and_gzip(
    served: tuple[MetricsServer, Health, ScorerMetrics],
) -> None:
    """/metrics is prometheus-client's own exposition: OpenMetrics when asked for, gzip when
    accepted, and no Python version in the Server header."""
    server, _, metrics = served
    metrics.batches.inc(2)
    request = urllib.request.Request(  # noqa: S310 - loopback
        f"{server.url}/metrics",
        headers={
            "Accept": "application/openmetrics-text; version=1.0.0",
            "Accept-Encoding": "gzip",
        },
    )

    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - loopback
        body = gzip.decompress(response.read()).decode()
        headers = response.headers

    assert headers["Content-Encoding"] == "gzip"
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert "stream_scorer_batches_total 2.0" in body
    assert body.rstrip().endswith("# EOF")
    assert headers["Server"].strip() == "stream-scorer"
    assert "Python" not in headers["Server"]


def test_idle_connections_are_dropped_and_bounded(registry: CollectorRegistry) -> None:
    """A connection that sends nothing is closed after the connection timeout, and no more
    than the connection limit are served at once: the rest are refused, not queued."""
    server = MetricsServer("127.0.0.1", 0, registry, Health(), max_connections=2)
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(2)]
    try:
        # Both slots are held by idle connections: the next one is refused (closed at once).
        extra = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        extra.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        assert extra.recv(1024) == b""
        extra.close()
        # The idle ones are dropped after CONNECTION_TIMEOUT_S (recv returns b"" on close).
        started = time.monotonic()
        for sock in idle:
            assert sock.recv(1024) == b""
        assert time.monotonic() - started <= CONNECTION_TIMEOUT_S + 5
        # Slots are free again.
        status = _get(f"{server.url}/healthz")[0]
        assert status == 200
    finally:
        for sock in idle:
            sock.close()
        server.close()


def test_basic_auth_guards_metrics_but_not_probes(registry: CollectorRegistry) -> None:
    """With basic auth on, /metrics needs the credentials; /healthz and /readyz stay open."""
    security = EndpointSecurity(username="prom", password="s3cret-metrics")  # noqa: S106
    server = MetricsServer("127.0.0.1", 0, registry, Health(), security)
    try:
        assert _get(f"{server.url}/metrics")[0] == 401
        token = base64.b64encode(b"prom:s3cret-metrics").decode()
        request = urllib.request.Request(  # noqa: S310 - loopback
            f"{server.url}/metrics", headers={"Authorization": f"Basic {token}"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - loopback
            assert response.status == 200
        wrong = base64.b64encode(b"prom:nope").decode()
        request = urllib.request.Request(  # noqa: S310 - loopback
            f"{server.url}/metrics", headers={"Authorization": f"Basic {wrong}"}
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)  # noqa: S310 - loopback
        assert refused.value.code == 401
        assert _get(f"{server.url}/healthz")[0] == 200
    finally:
        server.close()


def test_tls_endpoint(registry: CollectorRegistry, tmp_path: Path) -> None:
    """With a certificate and key, the endpoint serves HTTPS (and only HTTPS)."""
    cert, key = _self_signed(tmp_path)
    security = EndpointSecurity(cert_file=str(cert), key_file=str(key))
    server = MetricsServer("127.0.0.1", 0, registry, Health(), security)
    try:
        assert server.url.startswith("https://")
        context = ssl.create_default_context(cafile=str(cert))
        with urllib.request.urlopen(f"{server.url}/healthz", timeout=5, context=context) as r:  # noqa: S310
            assert r.status == 200
        plain = server.url.replace("https://", "http://")
        with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
            urllib.request.urlopen(f"{plain}/healthz", timeout=5)  # noqa: S310 - loopback
    finally:
        server.close()


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, as PEM files."""
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file
