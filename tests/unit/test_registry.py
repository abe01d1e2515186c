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

from stream_scorer.consume import MessageBatch
from stream_scorer.devtools.devregistry import DevSchemaRegistry
from stream_scorer.registry import (
    MAX_SCHEMA_JSON_DEPTH,
    RegistryError,
    RegistryRefusedError,
    RegistryUnavailableError,
    SchemaNotFoundError,
    SchemaRegistryClient,
    full_jitter_s,
    redact_url,
)

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


def test_read_only_registry_refusal_quotes_its_message() -> None:
    """A read-only registry refuses registration with HTTP 422; its message is in the error."""
    with (
        DevSchemaRegistry(read_only=True) as registry,
        pytest.raises(RegistryRefusedError, match="read-only mode") as caught,
    ):
        SchemaRegistryClient(registry.url).register("locked-value", PROBE)

    assert caught.value.status == 422
    assert caught.value.error_code == 42205


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

    with pytest.raises(RegistryUnavailableError, match="HTTP 500") as caught:
        SchemaRegistryClient(stub.url, retries=1, retry_backoff_s=0).schema_by_id(1)
    assert not isinstance(caught.value, SchemaNotFoundError)
    assert len(stub.requests) == 2


def test_non_avro_schema_type_is_not_found(stub: Stub) -> None:
    """A PROTOBUF schema under the id is treated as no Avro schema for it."""
    stub.body = {"schema": "syntax = 'proto3';", "schemaType": "PROTOBUF"}

    with pytest.raises(SchemaNotFoundError, match="PROTOBUF"):
        SchemaRegistryClient(stub.url).schema_by_id(2)


def test_non_json_answer_is_a_registry_error(stub: Stub) -> None:
    """A 200 answer that is not JSON (a proxy's HTML page) raises RegistryError."""
    stub.body = b"<html>login required</html>"

    with pytest.raises(RegistryUnavailableError, match="not JSON"):
        SchemaRegistryClient(stub.url, retries=0).schema_by_id(1)


def test_answer_without_schema_key_is_a_registry_error(stub: Stub) -> None:
    """A 200 answer without the 'schema' key rejects that id, not a bare KeyError."""
    stub.body = {"unexpected": True}

    with pytest.raises(SchemaNotFoundError, match="no schema text"):
        SchemaRegistryClient(stub.url).schema_by_id(3)


def test_unreachable_registry_is_a_registry_error() -> None:
    """Connection refused raises RegistryUnavailableError naming the registry."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"

    with pytest.raises(RegistryUnavailableError, match="registry unavailable") as caught:
        SchemaRegistryClient(url, timeout_s=2.0, retry_backoff_s=0).schema_by_id(1)
    assert url in str(caught.value)
    assert not isinstance(caught.value, SchemaNotFoundError)


def nested_schema_text(levels: int) -> str:
    """A record nested ``levels`` records deep, as JSON text (three JSON levels per record)."""
    text = '"int"'
    for i in range(levels):
        text = f'{{"type":"record","name":"R{i}","fields":[{{"name":"f","type":{text}}}]}}'
    return text


def test_unknown_ids_are_remembered_for_the_ttl(stub: Stub) -> None:
    """An unknown id is asked for once, then rejected from the negative cache."""
    stub.status, stub.body = 404, {"error_code": 40403, "message": "Schema not found"}
    client = SchemaRegistryClient(stub.url, unknown_id_ttl_s=60)

    for _ in range(3):
        with pytest.raises(SchemaNotFoundError, match="Schema not found"):
            client.schema_by_id(7)

    assert [path for path, _ in stub.requests] == ["/schemas/ids/7"]


def test_unknown_ids_are_asked_again_after_the_ttl(stub: Stub) -> None:
    """With a TTL of 0 every lookup of an unknown id goes to the registry again."""
    stub.status, stub.body = 404, {"error_code": 40403, "message": "Schema not found"}
    client = SchemaRegistryClient(stub.url, unknown_id_ttl_s=0)

    for _ in range(2):
        with pytest.raises(SchemaNotFoundError):
            client.schema_by_id(7)

    assert len(stub.requests) == 2


def test_an_id_registered_after_a_miss_is_found_once_the_ttl_passes(
    dev_registry: DevSchemaRegistry,
) -> None:
    """The negative cache expires: an id unknown at first is served once it exists."""
    client = SchemaRegistryClient(dev_registry.url, unknown_id_ttl_s=0)
    probe = {"type": "record", "name": "Late", "fields": [{"name": "z", "type": "long"}]}
    with pytest.raises(SchemaNotFoundError):
        client.schema_by_id(999_001)
    schema_id = dev_registry.add("late-value", probe)

    assert client.schema_by_id(schema_id) == probe


@pytest.mark.parametrize("levels", [2_000, 60], ids=["json-recursion", "depth-limit"])
def test_a_deeply_nested_schema_is_a_per_id_rejection(stub: Stub, levels: int) -> None:
    """A schema 2,000 records deep (RecursionError in json.loads) or 60 deep (over the
    depth limit) raises SchemaNotFoundError for that id, asked once."""
    stub.body = {"schema": nested_schema_text(levels)}
    client = SchemaRegistryClient(stub.url)

    for _ in range(2):
        with pytest.raises(SchemaNotFoundError, match=f"deeper than {MAX_SCHEMA_JSON_DEPTH}"):
            client.schema_by_id(5)
    assert len(stub.requests) == 1


def test_a_moderately_nested_schema_is_served(stub: Stub) -> None:
    """A record 30 records deep (90 JSON levels) is within the limit."""
    stub.body = {"schema": nested_schema_text(30)}

    assert SchemaRegistryClient(stub.url).schema_by_id(5)["name"] == "R29"


@pytest.mark.parametrize("kind", ["record", "columnar"])
def test_a_deep_writer_schema_dead_letters_its_events_in_the_decoder(
    stub: Stub, reader_schema: dict[str, Any], kind: str
) -> None:
    """Through either decoder, a message naming a 2,000-deep schema is rejected, not raised."""
    from stream_scorer.decode import (  # noqa: PLC0415
        AvroDecoder,
        ColumnarAvroDecoder,
        Framing,
        frame_body,
    )
    from stream_scorer.records import SourceRecord  # noqa: PLC0415

    stub.body = {"schema": nested_schema_text(2_000)}
    decoder_class = AvroDecoder if kind == "record" else ColumnarAvroDecoder
    decoder = decoder_class(
        Framing(reader_schema, "confluent", registry=SchemaRegistryClient(stub.url))
    )
    records = [
        SourceRecord("t", 0, offset, None, frame_body("confluent", b"\x00", schema_id=9))
        for offset in range(3)
    ]

    batch = decoder.decode(MessageBatch.from_records(records), ["amount"])

    assert [r.source.offset for r in batch.rejected] == [0, 1, 2]
    assert all("deeper than" in r.message for r in batch.rejected)
    assert len(stub.requests) == 1


def test_a_schema_that_is_not_a_record_is_a_per_id_rejection(stub: Stub) -> None:
    """A bare ``"int"`` under an id cannot describe an event: rejected for that id."""
    stub.body = {"schema": '"int"'}

    with pytest.raises(SchemaNotFoundError, match="not an Avro record"):
        SchemaRegistryClient(stub.url).schema_by_id(6)


def test_allowed_subjects_reject_ids_registered_elsewhere(dev_registry: DevSchemaRegistry) -> None:
    """With registry_subjects set, only ids registered under those subjects are served."""
    allowed = dev_registry.add("allowed-value", PROBE)
    foreign = dev_registry.add("foreign-value", OTHER)
    client = SchemaRegistryClient(dev_registry.url, subjects=("allowed-value",))

    assert client.schema_by_id(allowed) == PROBE
    with pytest.raises(SchemaNotFoundError, match="allowed subject"):
        client.schema_by_id(foreign)


def test_alert_schema_id_with_auto_register_off_uses_the_latest_version() -> None:
    """A read-only registry seeded by an operator: the subject's latest version's id is used."""
    with DevSchemaRegistry(read_only=True) as registry:
        registry.add("alerts-value", OTHER)
        seeded = registry.add("alerts-value", PROBE)
        client = SchemaRegistryClient(registry.url)

        assert client.alert_schema_id("alerts-value", PROBE, auto_register=False) == seeded


def test_alert_schema_id_refuses_a_latest_version_that_is_another_schema() -> None:
    """The latest version must be the alert schema itself, else alerts would lie about it."""
    with DevSchemaRegistry(read_only=True) as registry:
        registry.add("alerts-value", OTHER)

        with pytest.raises(RegistryError, match=r"is not schema\.alert") as caught:
            SchemaRegistryClient(registry.url).alert_schema_id("alerts-value", PROBE, False)
    assert not isinstance(caught.value, RegistryUnavailableError)


def test_alert_schema_id_of_an_unknown_subject_quotes_the_registry() -> None:
    """No version under the subject: a refusal carrying the registry's 'not found' message."""
    with (
        DevSchemaRegistry(read_only=True) as registry,
        pytest.raises(RegistryRefusedError, match="Subject 'none-value' not found"),
    ):
        SchemaRegistryClient(registry.url).alert_schema_id("none-value", PROBE, False)


def test_alert_schema_id_with_auto_register_on_registers(dev_registry: DevSchemaRegistry) -> None:
    """With auto-registration the schema is registered and its id returned."""
    client = SchemaRegistryClient(dev_registry.url)

    schema_id = client.alert_schema_id("auto-value", OTHER, auto_register=True)

    assert client.latest("auto-value")[0] == schema_id


def test_dev_registry_with_users_refuses_anonymous_requests() -> None:
    """A dev registry with users answers 401 without basic auth and serves with it."""
    with DevSchemaRegistry(users={"svc": "pw"}) as registry:
        with pytest.raises(RegistryRefusedError, match="Unauthorized"):
            SchemaRegistryClient(registry.url).register("auth-value", PROBE)
        schema_id = SchemaRegistryClient(registry.url, "svc", "pw").register("auth-value", PROBE)

    assert schema_id >= 1


@pytest.mark.parametrize(
    ("retry", "uniform", "expected"),
    [(0, 0.5, 0.1), (1, 0.5, 0.2), (2, 1.0, 0.8), (3, 0.0, 0.0), (10, 0.5, 5.0)],
)
def test_full_jitter_doubles_up_to_a_cap(retry: int, uniform: float, expected: float) -> None:
    """Backoff is uniform over a cap doubling from 0.2 s per retry, never above 10 s."""
    assert full_jitter_s(0.2, retry, uniform) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://u:p@reg.example:8081/x", "https://***@reg.example:8081/x"),
        ("http://only-user@h", "http://***@h"),
        ("http://h:8081", "http://h:8081"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    """User info is replaced by *** and nothing else changes."""
    assert redact_url(url) == shown


def test_every_call_is_reported_with_its_outcome_and_time() -> None:
    """on_call hears each API call (the service's registry metrics): a registration (whose id
    is then cached, so fetching it calls nothing) and a fetch of an unknown id, refused."""
    from stream_scorer.devtools.devregistry import DevSchemaRegistry  # noqa: PLC0415

    calls: list[tuple[str, str]] = []
    with DevSchemaRegistry() as dev:
        client = SchemaRegistryClient(dev.url)
        client.on_call = lambda op, outcome, seconds: calls.append((op, outcome))
        schema_id = client.register("s-value", {"type": "record", "name": "R", "fields": []})
        client.schema_by_id(schema_id)
        with pytest.raises(SchemaNotFoundError):
            client.schema_by_id(987_654)

    assert calls == [("subjects", "ok"), ("schema_by_id", "refused")]
