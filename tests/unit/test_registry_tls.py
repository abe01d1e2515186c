"""The registry client over TLS on 127.0.0.1: CA bundle, mutual TLS, redirects and downgrades.

Certificates are made for the test by the ``openssl`` command line: a CA, a server
certificate for IP 127.0.0.1 and a client certificate whose key is encrypted.
"""

from __future__ import annotations

import http.server
import json
import shutil
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from stream_scorer.registry import RegistryUnavailableError, SchemaRegistryClient

PROBE = {"type": "record", "name": "Probe", "fields": [{"name": "a", "type": "int"}]}
PROBE_ANSWER = json.dumps({"schema": json.dumps(PROBE)}).encode()
#: Password of the client key, as schema.registry_key_password would give it.
KEY_PASSWORD = "kp-test"  # noqa: S105 - a test key made for this module
CLIENT_CN = "stream-scorer-client"

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


@dataclass(frozen=True)
class Pki:
    """Paths of the test CA, server and client certificates."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, a server certificate for 127.0.0.1 and an encrypted client key, made now."""
    d = tmp_path_factory.mktemp("pki")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1")
    _openssl("req", "-x509", *ec, "-nodes", "-keyout", d / "ca.key", "-out", d / "ca.pem",
             "-days", "2", "-subj", "/CN=test-ca")  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n", encoding="utf-8")
    _openssl("req", *ec, "-nodes", "-keyout", d / "server.key", "-out", d / "server.csr",
             "-subj", "/CN=127.0.0.1")  # fmt: skip
    _openssl("x509", "-req", "-in", d / "server.csr", "-CA", d / "ca.pem", "-CAkey", d / "ca.key",
             "-CAcreateserial", "-out", d / "server.pem", "-days", "2",
             "-extfile", d / "san.ext")  # fmt: skip
    _openssl("req", *ec, "-keyout", d / "client.key", "-passout", f"pass:{KEY_PASSWORD}",
             "-out", d / "client.csr", "-subj", f"/CN={CLIENT_CN}")  # fmt: skip
    _openssl("x509", "-req", "-in", d / "client.csr", "-CA", d / "ca.pem", "-CAkey", d / "ca.key",
             "-CAcreateserial", "-out", d / "client.pem", "-days", "2")  # fmt: skip
    return Pki(d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem", d / "client.key")


@dataclass
class Seen:
    """What a TLS server saw: request paths and the client certificate's CN (or None)."""

    url: str = ""
    requests: list[tuple[str, str | None]] = field(default_factory=list)


Respond = Callable[[http.server.BaseHTTPRequestHandler], None]


def answer(status: int, body: bytes, headers: dict[str, str] | None = None) -> Respond:
    """A handler answering ``status``/``body`` to every request."""

    def respond(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return respond


@contextmanager
def serve(
    respond: Respond, pki: Pki | None, verify: ssl.VerifyMode = ssl.CERT_OPTIONAL
) -> Iterator[Seen]:
    """Serve ``respond`` on a free loopback port: over TLS when ``pki`` is given."""
    seen = Seen()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            peer: Any = getattr(self.connection, "getpeercert", lambda: None)()
            cn = None
            if peer:
                cn = next(v for rdn in peer["subject"] for k, v in rdn if k == "commonName")
            seen.requests.append((self.path, cn))
            respond(self)

        def log_message(self, format: str, *args: object) -> None:
            """Quiet."""

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    scheme = "http"
    if pki is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pki.server_cert, pki.server_key)
        context.load_verify_locations(pki.ca)
        context.verify_mode = verify
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01})
    thread.start()
    seen.url = f"{scheme}://127.0.0.1:{server.server_address[1]}"
    try:
        yield seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def mtls_client(url: str, pki: Pki, **kwargs: Any) -> SchemaRegistryClient:
    """A client trusting the test CA and presenting the client certificate."""
    return SchemaRegistryClient(
        url,
        ca_file=pki.ca,
        cert_file=pki.client_cert,
        key_file=pki.client_key,
        key_password=KEY_PASSWORD,
        retry_backoff_s=0,
        **kwargs,
    )


def test_mutual_tls_presents_the_client_certificate(pki: Pki) -> None:
    """With a CA bundle and an encrypted client key, a registry requiring mTLS answers."""
    with serve(answer(200, PROBE_ANSWER), pki, ssl.CERT_REQUIRED) as registry:
        assert mtls_client(registry.url, pki).schema_by_id(1) == PROBE

        assert registry.requests == [("/schemas/ids/1", CLIENT_CN)]


def test_without_a_client_certificate_mtls_fails_as_unavailable(pki: Pki) -> None:
    """A registry requiring mTLS and no client certificate configured: unavailable, no answer."""
    with serve(answer(200, PROBE_ANSWER), pki, ssl.CERT_REQUIRED) as registry:
        client = SchemaRegistryClient(registry.url, ca_file=pki.ca, retries=0)

        with pytest.raises(RegistryUnavailableError, match="registry unavailable"):
            client.schema_by_id(1)
        assert registry.requests == []


def test_an_untrusted_server_certificate_is_refused(pki: Pki) -> None:
    """Without the test CA the server's certificate does not verify: unavailable."""
    with serve(answer(200, PROBE_ANSWER), pki) as registry:
        with pytest.raises(RegistryUnavailableError, match="CERTIFICATE_VERIFY_FAILED"):
            SchemaRegistryClient(registry.url, retries=0).schema_by_id(1)

        assert registry.requests == []


def test_a_cross_origin_redirect_gets_no_client_certificate(pki: Pki) -> None:
    """Redirected to another https origin, the client presents no certificate there."""
    with serve(answer(200, PROBE_ANSWER), pki) as other:
        location = {"Location": f"{other.url}/schemas/ids/1"}
        with serve(answer(302, b"", location), pki) as registry:
            assert mtls_client(registry.url, pki).schema_by_id(1) == PROBE

            assert registry.requests == [("/schemas/ids/1", CLIENT_CN)]
            assert other.requests == [("/schemas/ids/1", None)]


def test_a_redirect_from_https_to_http_is_not_followed(pki: Pki) -> None:
    """A downgrade to plain http is refused; the plain server never sees a request."""
    with serve(answer(200, PROBE_ANSWER), None) as plain:
        location = {"Location": f"{plain.url}/schemas/ids/1"}
        with (
            serve(answer(302, b"", location), pki) as registry,
            pytest.raises(RegistryUnavailableError, match="plain http"),
        ):
            mtls_client(registry.url, pki, retries=0).schema_by_id(1)

        assert plain.requests == []
