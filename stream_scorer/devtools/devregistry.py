"""A minimal in-process Schema Registry speaking the Confluent REST API, for the demo and tests.

It implements only what stream-scorer and its producer use: register a schema under a subject
(``POST /subjects/{subject}/versions``, idempotent per schema text), fetch a schema by id
(``GET /schemas/ids/{id}``) and the subjects it is registered under
(``GET /schemas/ids/{id}/versions``), a subject's versions and latest version
(``GET /subjects/{subject}/versions[/latest]``) and list subjects. It keeps everything in
memory. It can play a locked-down registry: ``read_only=True`` refuses registration by
clients as Confluent's read-only mode does (HTTP 422, error 42205), and ``users`` requires
basic auth (HTTP 401, error 40101). It is a development stand-in, announced as such:
production points ``schema.registry_url`` at a real registry (docker-compose.yml runs
Confluent's).
"""

from __future__ import annotations

import base64
import http.server
import json
import re
import threading
import urllib.parse
from collections.abc import Mapping
from typing import Any

__all__ = ["DevSchemaRegistry"]

#: First id handed out; real registries start at 1 as well.
FIRST_ID = 1
#: Path of the register call and of a subject's version list.
VERSIONS_PATH = re.compile(r"^/subjects/([^/]+)/versions/?$")
#: Path of a subject's latest version.
LATEST_PATH = re.compile(r"^/subjects/([^/]+)/versions/latest/?$")
#: Path of the fetch-by-id call.
BY_ID_PATH = re.compile(r"^/schemas/ids/(\d+)/?$")
#: Path of the subjects-and-versions of an id.
ID_VERSIONS_PATH = re.compile(r"^/schemas/ids/(\d+)/versions/?$")


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ids: dict[str, int] = {}  # canonical schema text -> id
        self.schemas: dict[int, str] = {}
        self.subjects: dict[str, list[int]] = {}

    def register(self, subject: str, schema: str) -> int:
        canonical = json.dumps(json.loads(schema), sort_keys=True, separators=(",", ":"))
        with self.lock:
            schema_id = self.ids.get(canonical)
            if schema_id is None:
                schema_id = len(self.ids) + FIRST_ID
                self.ids[canonical] = schema_id
                self.schemas[schema_id] = schema
            versions = self.subjects.setdefault(subject, [])
            if schema_id not in versions:
                versions.append(schema_id)
            return schema_id


class _Handler(http.server.BaseHTTPRequestHandler):
    state: _State
    read_only: bool
    #: Accepted ``Authorization`` header values; empty accepts any request.
    authorizations: frozenset[str]

    def _reply(self, status: int, body: dict[str, Any] | list[Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        if not self.authorizations or self.headers.get("Authorization") in self.authorizations:
            return True
        self._reply(401, {"error_code": 40101, "message": "Unauthorized"})
        return False

    def _subject(self, match: re.Match[str]) -> str:
        return urllib.parse.unquote(match.group(1))

    def _get_by_id(self, match: re.Match[str]) -> None:
        schema = self.state.schemas.get(int(match.group(1)))
        if schema is None:
            self._reply(404, {"error_code": 40403, "message": "Schema not found"})
        else:
            self._reply(200, {"schema": schema})

    def _get_id_versions(self, match: re.Match[str]) -> None:
        schema_id = int(match.group(1))
        pairs = [
            {"subject": subject, "version": ids.index(schema_id) + 1}
            for subject, ids in sorted(self.state.subjects.items())
            if schema_id in ids
        ]
        if not pairs:
            self._reply(404, {"error_code": 40403, "message": "Schema not found"})
        else:
            self._reply(200, pairs)

    def _get_latest(self, match: re.Match[str]) -> None:
        subject = self._subject(match)
        ids = self.state.subjects.get(subject)
        if not ids:
            self._reply(404, {"error_code": 40401, "message": f"Subject '{subject}' not found."})
            return
        body = {"subject": subject, "version": len(ids), "id": ids[-1]}
        self._reply(200, {**body, "schema": self.state.schemas[ids[-1]]})

    def _get_versions(self, match: re.Match[str]) -> None:
        ids = self.state.subjects.get(self._subject(match))
        if not ids:
            self._reply(404, {"error_code": 40401, "message": "Subject not found."})
        else:
            self._reply(200, list(range(1, len(ids) + 1)))

    def do_GET(self) -> None:
        if not self._authorized():
            return
        path = self.path.split("?", 1)[0]
        routes = (
            (BY_ID_PATH, self._get_by_id),
            (ID_VERSIONS_PATH, self._get_id_versions),
            (LATEST_PATH, self._get_latest),
            (VERSIONS_PATH, self._get_versions),
        )
        for pattern, route in routes:
            if match := pattern.match(path):
                route(match)
                return
        if path.rstrip("/") == "/subjects":
            self._reply(200, sorted(self.state.subjects))
        else:
            self._reply(404, {"error_code": 404, "message": "not supported by the dev registry"})

    def do_POST(self) -> None:
        if not self._authorized():
            return
        match = VERSIONS_PATH.match(self.path.split("?", 1)[0])
        if not match:
            self._reply(404, {"error_code": 404, "message": "not supported by the dev registry"})
            return
        subject = self._subject(match)
        if self.read_only:
            # Confluent's answer in READONLY mode.
            message = f"Subject {subject} is in read-only mode"
            self._reply(422, {"error_code": 42205, "message": message})
            return
        length = int(self.headers.get("Content-Length", "0"))
        try:
            body = json.loads(self.rfile.read(length))
            schema_id = self.state.register(subject, body["schema"])
        except (ValueError, KeyError, TypeError) as exc:
            self._reply(422, {"error_code": 42201, "message": f"invalid schema: {exc}"})
            return
        self._reply(200, {"id": schema_id})

    def log_message(self, format: str, *args: object) -> None:
        """No access log."""


class DevSchemaRegistry:
    """Serves the registry on ``host:port`` (0 = a free port) from a daemon thread."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        read_only: bool = False,
        users: Mapping[str, str] | None = None,
    ) -> None:
        """Start serving.

        Args:
            host: Address to listen on.
            port: Port; 0 picks a free one (see :attr:`url`).
            read_only: Refuse registration over HTTP, as a registry in READONLY mode or one
                that forbids clients to register does; seed it with :meth:`add`.
            users: When given, user name -> password pairs required as basic auth.
        """
        self._state = _State()
        authorizations = frozenset(
            "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
            for user, password in (users or {}).items()
        )
        handler = type(
            "Handler",
            (_Handler,),
            {"state": self._state, "read_only": read_only, "authorizations": authorizations},
        )
        self._server = http.server.ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self.url = f"http://{host}:{self._server.server_address[1]}"
        # A short poll so close() returns promptly (tests open many of these).
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="dev-registry",
            daemon=True,
        )
        self._thread.start()

    def add(self, subject: str, schema: Mapping[str, Any]) -> int:
        """Register ``schema`` under ``subject`` directly (as an operator would); its id."""
        return self._state.register(subject, json.dumps(schema))

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> DevSchemaRegistry:
        """Use as a context manager."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop on exit."""
        self.close()
