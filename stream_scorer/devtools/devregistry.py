"""A minimal in-process Schema Registry speaking the Confluent REST API, for the demo and tests.

It implements only what stream-scorer and its producer use: register a schema under a subject
(``POST /subjects/{subject}/versions``, idempotent per schema text), fetch a schema by id
(``GET /schemas/ids/{id}``) and list subjects. It keeps everything in memory. It is a
development stand-in, announced as such: production points ``schema.registry_url`` at a real
registry (docker-compose.yml runs Confluent's).
"""

from __future__ import annotations

import http.server
import json
import re
import threading
from typing import Any

__all__ = ["DevSchemaRegistry"]

#: First id handed out; real registries start at 1 as well.
FIRST_ID = 1
#: Path of the register call.
REGISTER_PATH = re.compile(r"^/subjects/([^/]+)/versions/?$")
#: Path of the fetch-by-id call.
BY_ID_PATH = re.compile(r"^/schemas/ids/(\d+)/?$")


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

    def _reply(self, status: int, body: dict[str, Any] | list[Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        match = BY_ID_PATH.match(self.path)
        if match:
            schema = self.state.schemas.get(int(match.group(1)))
            if schema is None:
                self._reply(404, {"error_code": 40403, "message": "Schema not found"})
            else:
                self._reply(200, {"schema": schema})
        elif self.path.rstrip("/") == "/subjects":
            self._reply(200, sorted(self.state.subjects))
        else:
            self._reply(404, {"error_code": 404, "message": "not supported by the dev registry"})

    def do_POST(self) -> None:
        match = REGISTER_PATH.match(self.path)
        if not match:
            self._reply(404, {"error_code": 404, "message": "not supported by the dev registry"})
            return
        length = int(self.headers.get("Content-Length", "0"))
        try:
            body = json.loads(self.rfile.read(length))
            schema_id = self.state.register(match.group(1), body["schema"])
        except (ValueError, KeyError, TypeError) as exc:
            self._reply(422, {"error_code": 42201, "message": f"invalid schema: {exc}"})
            return
        self._reply(200, {"id": schema_id})

    def log_message(self, format: str, *args: object) -> None:
        """No access log."""


class DevSchemaRegistry:
    """Serves the registry on ``host:port`` (0 = a free port) from a daemon thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Start serving."""
        handler = type("Handler", (_Handler,), {"state": _State()})
        self._server = http.server.ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self.url = f"http://{host}:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="dev-registry", daemon=True
        )
        self._thread.start()

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
