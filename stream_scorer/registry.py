"""A small Confluent Schema Registry client: fetch writer schemas by id, register schemas.

Only the two calls the service needs, over the standard library's HTTP client, with every
fetched schema cached per id for the life of the process (ids are immutable in a registry).
"""

from __future__ import annotations

import base64
import json
import threading
import urllib.error
import urllib.request
from typing import Any

__all__ = ["RegistryError", "SchemaNotFoundError", "SchemaRegistryClient"]

#: Content type the Confluent Schema Registry API speaks.
CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
#: HTTP status the registry answers for an unknown schema id or subject.
HTTP_NOT_FOUND = 404


class RegistryError(Exception):
    """The registry could not be reached or answered something unexpected."""


class SchemaNotFoundError(RegistryError):
    """The registry does not know this schema id."""


class SchemaRegistryClient:
    """Fetches and registers Avro schemas; thread-safe; caches schemas by id."""

    def __init__(
        self,
        url: str,
        username: str | None = None,
        password: str | None = None,
        timeout_s: float = 5.0,
    ) -> None:
        """Point the client at ``url`` (e.g. ``http://localhost:8081``)."""
        self.url = url.rstrip("/")
        self._timeout_s = timeout_s
        self._headers = {"Accept": CONTENT_TYPE, "Content-Type": CONTENT_TYPE}
        if username is not None:
            token = base64.b64encode(f"{username}:{password or ''}".encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"
        self._by_id: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(  # noqa: S310 - the URL scheme comes from settings
            self.url + path, data=data, method=method, headers=self._headers
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as response:  # noqa: S310
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code == HTTP_NOT_FOUND:
                msg = f"{method} {path}: not found in registry {self.url}"
                raise SchemaNotFoundError(msg) from exc
            msg = f"{method} {path}: registry {self.url} answered HTTP {exc.code}"
            raise RegistryError(msg) from exc
        except (urllib.error.URLError, TimeoutError, OSError, ValueError) as exc:
            msg = f"{method} {path}: registry {self.url} unreachable: {exc}"
            raise RegistryError(msg) from exc

    def schema_by_id(self, schema_id: int) -> dict[str, Any]:
        """The Avro schema (parsed JSON) registered under ``schema_id``, cached.

        Raises:
            SchemaNotFoundError: No schema has this id.
            RegistryError: The registry is unreachable or broken.
        """
        with self._lock:
            cached = self._by_id.get(schema_id)
        if cached is not None:
            return cached
        answer = self._request("GET", f"/schemas/ids/{schema_id}")
        try:
            schema_type = answer.get("schemaType", "AVRO")
            text = answer["schema"]
        except (AttributeError, KeyError, TypeError) as exc:
            msg = f"registry {self.url} answered {answer!r:.200} for schema id {schema_id}"
            raise RegistryError(msg) from exc
        if schema_type != "AVRO":
            msg = f"schema id {schema_id} is {schema_type}, not AVRO"
            raise SchemaNotFoundError(msg)
        try:
            schema: dict[str, Any] = json.loads(text)
        except (TypeError, ValueError) as exc:
            msg = f"registry {self.url}: schema id {schema_id} is not JSON: {exc}"
            raise RegistryError(msg) from exc
        with self._lock:
            self._by_id[schema_id] = schema
        return schema

    def register(self, subject: str, schema: dict[str, Any]) -> int:
        """Register ``schema`` under ``subject`` (idempotent) and return its id."""
        answer = self._request(
            "POST", f"/subjects/{subject}/versions", {"schema": json.dumps(schema)}
        )
        schema_id = int(answer["id"])
        with self._lock:
            self._by_id[schema_id] = schema
        return schema_id
