"""The registry client against misbehaving HTTP servers on 127.0.0.1.

Each server is a small ``http.server`` handler doing one bad thing: redirecting elsewhere,
dripping bytes, sending a huge body, failing before it succeeds, refusing.
"""

from __future__ import annotations

import http.server
import json
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from stream_scorer.consume import MessageBatch
from stream_scorer.registry import (
    RegistryRefusedError,
    RegistryUnavailableError,
    SchemaNotFoundError,
    SchemaRegistryClient,
)

PROBE = {"type": "record", "name": "Probe", "fields": [{"name": "a", "type": "int"}]}
PROBE_ANSWER = json.dumps({"schema": json.dumps(PROBE)}).encode()
#: Longest a test waits for a server-side condition (a handler noticing a closed socket).
WAIT_S = 30.0

Handler = http.server.BaseHTTPRequestHandler
Respond = Callable[[Handler], None]


@dataclass
class Server:
    """A running scripted server: its URL and every request it saw (path, headers)."""

    url: str
    port: int
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    #: Set by handlers that finish a long answer (drip, huge body), with what they sent.
    finished: threading.Event = field(default_factory=threading.Event)
    sent: int = 0


def send(handler: Handler, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
    """Answer ``status`` with ``body`` and a Content-Length."""
    handler.send_response(status)
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


@contextmanager
def serve(respond: Callable[[Server, Handler], None]) -> Iterator[Server]:
    """Serve ``respond(server, handler)`` for every GET and POST on a free loopback port."""
    state = Server(url="", port=0)

    class _Handler(http.server.BaseHTTPRequestHandler):
        def _any(self) -> None:
            state.seen.append((self.path, dict(self.headers.items())))
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            respond(state, self)

        do_GET = do_POST = _any

        def log_message(self, format: str, *args: object) -> None:
            """Quiet."""

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01})
    thread.start()
    state.port = server.server_address[1]
    state.url = f"http://127.0.0.1:{state.port}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def client(url: str, **kwargs: Any) -> SchemaRegistryClient:
    """A client with fast retries, for tests."""
    kwargs.setdefault("retry_backoff_s", 0.0)
    return SchemaRegistryClient(url, **kwargs)


# -- redirects -----------------------------------------------------------------------------


def test_cross_origin_redirect_gets_no_credentials() -> None:
    """A redirect to another port is followed without the Authorization header."""
    with (
        serve(lambda _s, h: send(h, 200, PROBE_ANSWER)) as other,
        serve(lambda _s, h: send(h, 302, b"", {"Location": f"{other.url}{h.path}"})) as main,
    ):
        schema = client(main.url, username="svc", password="s3cret").schema_by_id(1)  # noqa: S106

        assert schema == PROBE
        assert "Authorization" in main.seen[0][1]
        assert [path for path, _ in other.seen] == ["/schemas/ids/1"]
        assert "Authorization" not in other.seen[0][1]


def test_same_origin_redirect_keeps_credentials() -> None:
    """A redirect to another path of the same origin keeps basic auth."""

    def respond(_server: Server, handler: Handler) -> None:
        if handler.path.startswith("/moved"):
            send(handler, 200, PROBE_ANSWER)
        else:
            send(handler, 307, b"", {"Location": f"/moved{handler.path}"})

    with serve(respond) as main:
        client(main.url, username="svc", password="s3cret").schema_by_id(1)  # noqa: S106

        assert [path for path, _ in main.seen] == ["/schemas/ids/1", "/moved/schemas/ids/1"]
        assert all("Authorization" in headers for _, headers in main.seen)


def test_redirect_loop_ends_as_unavailable() -> None:
    """A server redirecting to itself for ever ends in RegistryUnavailableError."""
    with serve(lambda _s, h: send(h, 302, b"", {"Location": h.path})) as main:
        with pytest.raises(RegistryUnavailableError, match="redirects"):
            client(main.url, retries=0).schema_by_id(1)

        assert len(main.seen) == 4  # the request and three redirects followed


def test_post_is_not_redirected_into_a_get() -> None:
    """A 302 answering a registration is a refusal, not a silent GET elsewhere."""
    with serve(lambda _s, h: send(h, 302, b"moved", {"Location": "/elsewhere"})) as main:
        with pytest.raises(RegistryRefusedError, match="HTTP 302"):
            client(main.url).register("probe-value", PROBE)

        assert len(main.seen) == 1


# -- deadlines -----------------------------------------------------------------------------


def drip(
    interval_s: float, total: int, headers_first: bool = True
) -> Callable[[Server, Handler], None]:
    """A handler sending its answer one byte per ``interval_s`` (body, or headers too)."""
    stop = threading.Event()

    def respond(server: Server, handler: Handler) -> None:
        body = b" " * (total - len(PROBE_ANSWER)) + PROBE_ANSWER
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        stream = body
        try:
            if headers_first:
                handler.wfile.write(head)
            else:
                stream = head + body
            for i in range(len(stream)):
                handler.wfile.write(stream[i : i + 1])
                handler.wfile.flush()
                server.sent += 1
                stop.wait(interval_s)  # pacing the attack, not synchronising the test
        except OSError:
            pass  # the client hung up: what this test wants to see
        finally:
            server.finished.set()

    return respond


@pytest.mark.parametrize("headers_first", [True, False], ids=["drip-body", "drip-headers"])
def test_a_dripping_server_is_cut_at_the_deadline(headers_first: bool) -> None:
    """A server sending one byte per 0.5 s is cut off at the 1 s deadline, not served whole."""
    total = 120  # 60 s of dripping, were the client to wait for it
    with serve(drip(0.5, total, headers_first)) as main:
        with pytest.raises(RegistryUnavailableError, match="no whole answer within 1 s"):
            client(main.url, timeout_s=1.0, retries=0).schema_by_id(1)

        assert main.finished.wait(WAIT_S), "the server never noticed the client hanging up"
        assert main.sent < total


def test_the_call_deadline_bounds_retries() -> None:
    """With a 1.5 s call deadline, a dripping server gets at most two 1 s attempts."""
    with serve(drip(0.5, 120)) as main:
        with pytest.raises(RegistryUnavailableError, match="failed 2 time"):
            client(main.url, timeout_s=1.0, deadline_s=1.5, retries=5).schema_by_id(1)

        assert len(main.seen) == 2


# -- size cap ------------------------------------------------------------------------------


def huge(total: int, declare_length: bool) -> Callable[[Server, Handler], None]:
    """A handler sending ``total`` bytes of JSON-looking padding, its length declared or not."""

    def respond(server: Server, handler: Handler) -> None:
        try:
            handler.send_response(200)
            if declare_length:
                handler.send_header("Content-Length", str(total))
            else:
                handler.send_header("Connection", "close")
                handler.close_connection = True
            handler.end_headers()
            chunk = b" " * 65536
            while server.sent < total:
                handler.wfile.write(chunk)
                server.sent += len(chunk)
        except OSError:
            pass  # the client stopped reading and hung up
        finally:
            server.finished.set()

    return respond


@pytest.mark.parametrize("declare_length", [True, False], ids=["content-length", "until-close"])
def test_an_oversized_answer_is_refused_unread(declare_length: bool) -> None:
    """A 256 MiB answer against a 64 KiB cap rejects the id; the client stops reading early."""
    total = 256 * 1024 * 1024
    with serve(huge(total, declare_length)) as main:
        with pytest.raises(SchemaNotFoundError, match="larger than 65536 bytes"):
            client(main.url, max_response_bytes=65536).schema_by_id(1)

        assert main.finished.wait(WAIT_S)
        assert main.sent < total


# -- retries and outages -------------------------------------------------------------------


def flaky(failures: int, status: int = 503) -> Callable[[Server, Handler], None]:
    """Fails ``failures`` times with ``status``, then answers the probe schema."""

    def respond(server: Server, handler: Handler) -> None:
        if len(server.seen) <= failures:
            send(handler, status, json.dumps({"error_code": 50003, "message": "busy"}).encode())
        else:
            send(handler, 200, PROBE_ANSWER)

    return respond


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_transient_failures_are_retried(status: int) -> None:
    """Two failures then a success: the call succeeds on its third attempt."""
    with serve(flaky(2, status)) as main:
        assert client(main.url, retries=3).schema_by_id(1) == PROBE
        assert len(main.seen) == 3


def test_one_failed_fetch_of_a_new_id_is_not_fatal_in_the_decoder() -> None:
    """A 503 on the first fetch of a writer id is retried: the batch decodes, nothing raised."""
    from stream_scorer.decode import AvroDecoder, Framing, frame_body  # noqa: PLC0415
    from stream_scorer.records import SourceRecord  # noqa: PLC0415

    with serve(flaky(1)) as main:
        decoder = AvroDecoder(Framing(PROBE, "confluent", registry=client(main.url)))
        value = frame_body("confluent", b"\x0a", schema_id=3)  # {"a": 5}

        batch = decoder.decode(
            MessageBatch.from_records([SourceRecord("t", 0, 0, None, value)]), ["a"]
        )

        assert batch.rejected == []
        assert len(main.seen) == 2


def test_a_persistent_outage_is_unavailable_after_every_retry() -> None:
    """HTTP 503 on every attempt: RegistryUnavailableError after 1 + retries attempts."""
    with serve(flaky(100)) as main:
        with pytest.raises(RegistryUnavailableError, match=r"registry unavailable.*HTTP 503"):
            client(main.url, retries=2).schema_by_id(1)

        assert len(main.seen) == 3


def test_a_non_json_answer_is_retried_then_unavailable() -> None:
    """A 200 that is an HTML page (a proxy) is an outage, retried, never a crash."""
    with serve(lambda _s, h: send(h, 200, b"<html>login</html>")) as main:
        with pytest.raises(RegistryUnavailableError, match="not JSON"):
            client(main.url, retries=1).schema_by_id(1)

        assert len(main.seen) == 2


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [
        (401, 40101, "Unauthorized"),
        (403, 40301, "User is denied operation Write on Subject: probe-value"),
        (409, 409, "Schema being registered is incompatible with an earlier schema"),
        (422, 42205, "Subject probe-value is in read-only mode"),
    ],
)
def test_a_refusal_is_not_retried_and_quotes_the_registry(
    status: int, code: int, message: str
) -> None:
    """401/403/409/422 raise RegistryRefusedError at once, with the registry's own message."""
    body = json.dumps({"error_code": code, "message": message}).encode()
    with serve(lambda _s, h: send(h, status, body)) as main:
        with pytest.raises(RegistryRefusedError) as caught:
            client(main.url, retries=3).register("probe-value", PROBE)

        assert len(main.seen) == 1
        assert caught.value.status == status
        assert caught.value.error_code == code
        assert message in str(caught.value)


def test_failover_to_the_next_url_and_stay_there() -> None:
    """The first URL failing, the second answers; the next call goes to the second directly."""
    with serve(flaky(100)) as down, serve(flaky(0)) as up:
        registry = client(f"{down.url},{up.url}", retries=1)

        assert registry.schema_by_id(1) == PROBE
        assert registry.schema_by_id(2) == PROBE
        assert len(down.seen) == 1
        assert [path for path, _ in up.seen] == ["/schemas/ids/1", "/schemas/ids/2"]


def test_connection_refused_on_every_url_is_unavailable() -> None:
    """Nobody listening at either URL: unavailable, naming both URLs."""
    first, second = f"http://127.0.0.1:{closed_port()}", f"http://127.0.0.1:{closed_port()}"

    with pytest.raises(RegistryUnavailableError, match="failed 4 time") as caught:
        client(f"{first},{second}", retries=3).schema_by_id(1)
    assert first in str(caught.value)
    assert second in str(caught.value)


# -- credentials in URLs -------------------------------------------------------------------


def test_user_info_in_the_url_is_basic_auth_and_never_printed() -> None:
    """``http://user:pass@host`` sends basic auth; errors show the URL without user info."""
    body = json.dumps({"error_code": 40301, "message": "denied"}).encode()
    with serve(lambda _s, h: send(h, 403, body)) as main:
        url = main.url.replace("http://", "http://svc-user:hunter2-pw@")
        with pytest.raises(RegistryRefusedError) as refused:
            client(url).schema_by_id(1)
    down = f"http://svc-user:hunter2-pw@127.0.0.1:{closed_port()}"
    with pytest.raises(RegistryUnavailableError) as unavailable:
        client(down, retries=0).schema_by_id(1)

    assert main.seen[0][1]["Authorization"] == "Basic c3ZjLXVzZXI6aHVudGVyMi1wdw=="
    for error in (refused.value, unavailable.value):
        assert "hunter2" not in str(error)
        assert "svc-user" not in str(error)


def test_bearer_token_is_sent() -> None:
    """A bearer token goes out as ``Authorization: Bearer``."""
    with serve(lambda _s, h: send(h, 200, PROBE_ANSWER)) as main:
        client(main.url, bearer_token="tok-123").schema_by_id(1)  # noqa: S106

        assert main.seen[0][1]["Authorization"] == "Bearer tok-123"


def test_two_kinds_of_auth_are_refused() -> None:
    """A username and a bearer token together are a mistake, not a guess."""
    with pytest.raises(ValueError, match="one of"):
        SchemaRegistryClient("http://127.0.0.1:1", "svc", "pw", bearer_token="tok")  # noqa: S106


def test_an_ipv6_registry_url_is_reached() -> None:
    """``http://[::1]:port`` is split and rebuilt with its brackets."""

    class V6Server(http.server.ThreadingHTTPServer):
        address_family = socket.AF_INET6

    class _Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            send(self, 200, PROBE_ANSWER)

        def log_message(self, format: str, *args: object) -> None:
            """Quiet."""

    try:
        server = V6Server(("::1", 0), _Handler)
    except OSError:
        pytest.skip("no IPv6 loopback on this host")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01})
    thread.start()
    try:
        url = f"http://[::1]:{server.server_address[1]}"
        assert client(url).schema_by_id(1) == PROBE
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
