"""The Schema Registry client against the in-process DevSchemaRegistry and a scripted stub."""

from __future__ import annotations

import base64
import http.server
import json
import socket
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from stream_scorer.devtools.devregistry import DevSchemaRegistry
from stream_scorer.registry import RegistryError, SchemaNotFoundError, SchemaRegistryClient

PROBE = {"type": "record", "name": "Probe", "fields": [{"name": "a", "type": "int"}]}
OTHER = {"type": "record", "name": "Other", "fields": [{"name": "b", "type": "string"}]}


@dataclass
class Stub:
    """A scripted registry: answers every GET with ``status``/``body``; records requests.

    ``body`` is sent as JSON, or as it is when it is bytes.
    """

    status: int = 200
    body: Any = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def stub() -> Iterator[Stub]:
    """A loopback HTTP server replaying one scripted answer, stopped after the test."""
    state = Stub()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append((self.path, dict(self.headers.items())))
            raw = state.body
            data = raw if isinstance(raw, bytes) else json.dumps(raw).encode()
            self.send_response(state.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            """Quiet."""

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01})
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_register_is_idempotent_and_ids_differ_per_schema(
    dev_registry: DevSchemaRegistry,
) -> None:
    """Registering the same schema twice gives one id; a different schema gets another."""
    client = SchemaRegistryClient(dev_registry.url)

    first = client.register("probe-value", PROBE)
    again = client.register("probe-value", PROBE)
    other = client.register("other-value", OTHER)

    assert first == again
    assert other != first


def test_schema_by_id_returns_the_registered_schema(dev_registry: DevSchemaRegistry) -> None:
    """A fresh client fetches by id exactly the schema another client registered."""
    schema_id = SchemaRegistryClient(dev_registry.url).register("probe-value", PROBE)

    assert SchemaRegistryClient(dev_registry.url).schema_by_id(schema_id) == PROBE


def test_dev_registry_lists_subjects(dev_registry: DevSchemaRegistry) -> None:
    """The dev registry lists the subjects schemas were registered under."""
    SchemaRegistryClient(dev_registry.url).register("listed-value", PROBE)

    with urllib.request.urlopen(f"{dev_registry.url}/subjects", timeout=5) as response:  # noqa: S310
        subjects = json.loads(response.read())

    assert "listed-value" in subjects


def test_unknown_id_raises_schema_not_found(dev_registry: DevSchemaRegistry) -> None:
    """An id the registry does not know raises SchemaNotFoundError (HTTP 404)."""
    with pytest.raises(SchemaNotFoundError, match="not found"):
        SchemaRegistryClient(dev_registry.url).schema_by_id(987_654)


def test_invalid_schema_registration_is_a_registry_error(dev_registry: DevSchemaRegistry) -> None:
    """The dev registry answers 422 to a body without a schema; the client raises RegistryError."""
    client = SchemaRegistryClient(dev_registry.url)

    with pytest.raises(RegistryError, match="HTTP 422") as caught:
        client._request("POST", "/subjects/bad-value/versions", {"not": "a schema"})
    assert not isinstance(caught.value, SchemaNotFoundError)


def test_schemas_are_cached_per_id(stub: Stub) -> None:
    """A second lookup of the same id is served from the cache without an HTTP request."""
    stub.body = {"schema": json.dumps(PROBE)}
    client = SchemaRegistryClient(stub.url)

    assert client.schema_by_id(4) == PROBE
    assert client.schema_by_id(4) == PROBE
    assert [path for path, _ in stub.requests] == ["/schemas/ids/4"]


def test_basic_auth_header_is_sent(stub: Stub) -> None:
    """Username and password go out as an HTTP Basic Authorization header."""
    stub.body = {"schema": json.dumps(PROBE)}

    SchemaRegistryClient(stub.url, username="svc", password="s3cret").schema_by_id(1)  # noqa: S106

    (_, headers), *_ = stub.requests
    assert headers["Authorization"] == "Basic " + base64.b64encode(b"svc:s3cret").decode()


def test_server_error_is_a_registry_error_not_not_found(stub: Stub) -> None:
    """HTTP 500 raises RegistryError (fatal upstream), never SchemaNotFoundError (a reject)."""
    stub.status, stub.body = 500, {"message": "boom"}

    with pytest.raises(RegistryError, match="HTTP 500") as caught:
        SchemaRegistryClient(stub.url).schema_by_id(1)
    assert not isinstance(caught.value, SchemaNotFoundError)


def test_non_avro_schema_type_is_not_found(stub: Stub) -> None:
    """A PROTOBUF schema under the id is treated as no Avro schema for it."""
    stub.body = {"schema": "syntax = 'proto3';", "schemaType": "PROTOBUF"}

    with pytest.raises(SchemaNotFoundError, match="PROTOBUF"):
        SchemaRegistryClient(stub.url).schema_by_id(2)


def test_non_json_answer_is_a_registry_error(stub: Stub) -> None:
    """A 200 answer that is not JSON (a proxy's HTML page) raises RegistryError."""
    stub.body = b"<html>login required</html>"

    with pytest.raises(RegistryError, match="registry"):
        SchemaRegistryClient(stub.url).schema_by_id(1)


def test_answer_without_schema_key_is_a_registry_error(stub: Stub) -> None:
    """A 200 answer without the 'schema' key raises RegistryError, not a bare KeyError."""
    stub.body = {"unexpected": True}

    with pytest.raises(RegistryError):
        SchemaRegistryClient(stub.url).schema_by_id(3)


def test_unreachable_registry_is_a_registry_error() -> None:
    """Connection refused raises RegistryError naming the registry."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"

    with pytest.raises(RegistryError, match="unreachable") as caught:
        SchemaRegistryClient(url, timeout_s=2.0).schema_by_id(1)
    assert not isinstance(caught.value, SchemaNotFoundError)
