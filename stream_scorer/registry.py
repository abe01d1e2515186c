"""Confluent Schema Registry client: writer schemas by id, the alert schema's id; hardened.

Only the calls the service needs, over the standard library's HTTP client:

* ``schema_by_id``: the writer schema of a Confluent-framed message, cached per id for the life
  of the process (ids are immutable in a registry). An id with no usable Avro schema (unknown,
  not Avro, not JSON, nested too deep, too large, outside ``subjects``) raises
  :class:`SchemaNotFoundError`, remembered for ``unknown_id_ttl_s`` so a stream of such messages
  does not call the registry once per message.
* ``alert_schema_id``: register the alert schema, or with auto-registration off use the
  subject's latest registered version (which must be that schema).

Why not ``confluent_kafka.schema_registry``: its client (httpx) offers URL failover, retries
with jitter, TLS and basic or bearer auth, and this module matches those; but it reads every
answer whole with no size cap, its timeout is per network operation (a server dripping a byte
per second holds a call for ever), it has no negative cache, and adding a cap or a deadline
would mean reaching into its private ``_RestClient.session``. It would also add five
dependencies (attrs, cachetools, certifi, httpx, authlib) to a service that needs two GETs and a
POST.

Every call has a deadline (``deadline_s``, retries and backoff included) and every attempt a
deadline of its own (``timeout_s``, connect to last byte, not per read). Outages (connection
failures, timeouts, HTTP 408/429/5xx, unreadable answers) are retried with exponential backoff
and full jitter, rotating through the configured URLs, and end as
:class:`RegistryUnavailableError`. A refusal (another 4xx: 401, 403, 409, 422...) is not retried
and raises :class:`RegistryRefusedError` carrying the registry's own message. Redirects are
followed on the same origin; a redirect to another origin is followed without credentials
(neither the Authorization header nor the client certificate), and never from https to http.
Credentials in a URL (``https://user:pass@host``) are used as basic auth and never appear in
an error message.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import random
import socket
import ssl
import threading
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fastavro.schema

from stream_scorer.errors import ConfigurationError

if TYPE_CHECKING:
    from stream_scorer.settings import SchemaSettings

__all__ = [
    "RegistryError",
    "RegistryRefusedError",
    "RegistryUnavailableError",
    "SchemaNotFoundError",
    "SchemaRegistryClient",
    "full_jitter_s",
    "redact_url",
]

#: Content type the Confluent Schema Registry API speaks.
CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
#: What the client accepts: the registry's types, then plain JSON (proxies, older versions).
ACCEPT = f"{CONTENT_TYPE}, application/vnd.schemaregistry+json, application/json"
#: HTTP status the registry answers for an unknown schema id or subject.
HTTP_NOT_FOUND = 404
#: Statuses that mean "try again": timeout, throttled, server-side failures (as Confluent's
#: own clients retry).
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: Redirect statuses followed; 301/302/303 turn a POST into a GET in browsers, so a POST is
#: only redirected by 307/308, which keep the method and body.
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
METHOD_KEEPING_REDIRECTS = frozenset({307, 308})
#: Most redirects followed in one attempt; a registry needs none, a proxy one or two.
MAX_REDIRECTS = 3
#: Longest backoff between two attempts, whatever the attempt number.
MAX_BACKOFF_S = 10.0
#: Read size per system call; small enough that the size cap and deadline are checked often.
READ_CHUNK_BYTES = 64 * 1024
#: Deepest JSON nesting accepted in a schema. An Avro record inside a record adds three
#: levels (record, fields list, field), so this allows ~40 nested records; it keeps fastavro's
#: recursive parser (and ours) far from Python's recursion limit.
MAX_SCHEMA_JSON_DEPTH = 128
#: Most unknown ids remembered at once: a producer writing random ids must not grow memory.
NEGATIVE_CACHE_MAX = 4096
#: Longest registry message quoted in an error, in characters.
MAX_MESSAGE_CHARS = 300


class RegistryError(Exception):
    """The registry could not be used: base of the errors below."""


class RegistryUnavailableError(RegistryError):
    """No usable answer after every retry and URL: an outage, not a configuration problem."""


class RegistryRefusedError(RegistryError):
    """The registry answered with a refusal (4xx other than 408/429); not retried.

    Attributes:
        status: The HTTP status.
        error_code: The registry's ``error_code`` (e.g. 40401, 42205), or -1 if none.
        registry_message: The registry's own ``message``, truncated.
    """

    def __init__(self, what: str, status: int, error_code: int, registry_message: str) -> None:
        """Build the message from the registry's answer."""
        super().__init__(f"{what}: HTTP {status}, error {error_code}: {registry_message}")
        self.status = status
        self.error_code = error_code
        self.registry_message = registry_message


class SchemaNotFoundError(RegistryError):
    """No usable Avro schema under this id (unknown, not Avro, malformed, too deep, too large,
    or outside the allowed subjects): the messages naming it are rejected, not fatal."""


def full_jitter_s(base_s: float, retry: int, uniform: float) -> float:
    """Backoff before retry number ``retry`` (0-based): "full jitter" over a doubling cap.

    Spreading retries uniformly over ``[0, min(base * 2^retry, 10 s))`` keeps many scorers
    that lost the registry together from returning to it in lockstep.

    Args:
        base_s: The first cap.
        retry: Retries already made.
        uniform: A uniform draw from ``[0, 1)``.
    """
    return uniform * min(base_s * 2.0**retry, MAX_BACKOFF_S)


def redact_url(url: str) -> str:
    """``url`` without user info, for messages: ``https://u:p@h:1/x`` -> ``https://***@h:1/x``."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"***@{host}"))


@dataclass(frozen=True, slots=True)
class _Origin:
    scheme: str
    host: str
    port: int

    @classmethod
    def of(cls, url: str) -> _Origin:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            msg = f"not an http(s) URL: {redact_url(url)}"
            raise ValueError(msg)
        default = 443 if parts.scheme == "https" else 80
        return cls(parts.scheme, parts.hostname, parts.port or default)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host  # IPv6 literal
        return f"{self.scheme}://{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class _Base:
    """One configured registry URL, split into origin and path prefix, user info removed."""

    origin: _Origin
    prefix: str
    userinfo: tuple[str, str] | None

    @classmethod
    def parse(cls, url: str) -> _Base:
        parts = urllib.parse.urlsplit(url.strip())
        userinfo = None
        if parts.username is not None:
            userinfo = (
                urllib.parse.unquote(parts.username),
                urllib.parse.unquote(parts.password or ""),
            )
        return cls(_Origin.of(url.strip()), parts.path.rstrip("/"), userinfo)

    def __str__(self) -> str:
        return f"{self.origin}{self.prefix}"


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    body: bytes
    location: str | None = None


class _Retryable(Exception):
    """One attempt failed in a way another attempt may not (network, timeout, 5xx)."""


class _Unusable(Exception):
    """The answer cannot be used at all (over the size cap, nested too deep to parse)."""


class _Watchdog:
    """Shuts a connection's socket down at a deadline, waking any blocked read or write.

    A socket timeout bounds each system call only: a server sending one byte per second keeps
    every ``recv`` short and the whole request endless. Shutting the socket down from a timer
    thread bounds the request as a whole, TLS handshake included, for plain and TLS sockets.
    """

    def __init__(self, seconds: float) -> None:
        self._lock = threading.Lock()
        self._watched: socket.socket | None = None
        self.fired = False
        self._timer = threading.Timer(max(seconds, 0.0), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            if self._watched is not None:
                # Already closed by the server: nothing left to wake.
                with contextlib.suppress(OSError):
                    self._watched.shutdown(socket.SHUT_RDWR)

    def create_connection(
        self,
        address: tuple[str, int],
        timeout: float | None = None,
        source_address: tuple[str, int] | None = None,
    ) -> socket.socket:
        """``socket.create_connection``, watched: http.client calls it to connect."""
        sock = socket.create_connection(address, timeout, source_address)
        with self._lock:
            # A duplicate of the descriptor survives the TLS wrap (which detaches ``sock``),
            # and shutting it down shuts the one underlying connection down.
            self._watched = socket.socket(fileno=os.dup(sock.fileno()))
            if self.fired:
                self._watched.shutdown(socket.SHUT_RDWR)
        return sock

    def close(self) -> None:
        self._timer.cancel()
        with self._lock:
            if self._watched is not None:
                self._watched.close()
                self._watched = None


def _json_depth_exceeds(value: Any, limit: int) -> bool:
    """Whether parsed JSON nests deeper than ``limit``; iterative, so never a RecursionError."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return False


def _clean(text: str) -> str:
    """A registry-supplied message made safe to print: printable, one line, truncated."""
    printable = "".join(ch if ch.isprintable() else " " for ch in text)
    return printable[:MAX_MESSAGE_CHARS]


def _refusal(what: str, answer: _Answer) -> RegistryRefusedError:
    error_code, message = -1, answer.body[:MAX_MESSAGE_CHARS].decode("utf-8", "replace")
    try:
        parsed = json.loads(answer.body)
        if isinstance(parsed, dict):
            error_code = int(parsed.get("error_code", -1))
            message = str(parsed.get("message", message))
    except (ValueError, TypeError, RecursionError):
        pass  # not the registry's JSON (a proxy page): quote the start of the body instead
    return RegistryRefusedError(what, answer.status, error_code, _clean(message))


def _canonical(schema: Any) -> str:
    return str(fastavro.schema.to_parsing_canonical_form(schema))


class SchemaRegistryClient:
    """Fetches writer schemas and the alert schema's id; thread-safe; caches per id."""

    def __init__(
        self,
        url: str,
        username: str | None = None,
        password: str | None = None,
        timeout_s: float = 5.0,
        *,
        bearer_token: str | None = None,
        ca_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        key_password: str | None = None,
        deadline_s: float = 30.0,
        retries: int = 3,
        retry_backoff_s: float = 0.2,
        max_response_bytes: int = 4 * 1024 * 1024,
        unknown_id_ttl_s: float = 30.0,
        subjects: Sequence[str] = (),
    ) -> None:
        """Point the client at one or more registry URLs.

        Args:
            url: Base URL, or several separated by commas (failover, tried in turn).
                User info in a URL (``https://user:pass@host``) is basic auth.
            username: Basic-auth user (exclusive with user info in the URL and a token).
            password: Basic-auth password.
            timeout_s: Deadline of one HTTP attempt, connect to last byte.
            bearer_token: Sent as ``Authorization: Bearer``; exclusive with basic auth.
            ca_file: PEM bundle of CAs trusted for https (default: the system's).
            cert_file: PEM client certificate for mutual TLS (may hold the key too).
            key_file: PEM private key of ``cert_file``.
            key_password: Password of an encrypted ``key_file``.
            deadline_s: Deadline of one call, every attempt and backoff included.
            retries: Attempts after the first when the registry is unavailable.
            retry_backoff_s: First backoff; doubles per retry, up to 10 s, full jitter.
            max_response_bytes: Largest answer read; a larger one is refused unread.
            unknown_id_ttl_s: How long an id without a usable schema is not asked again.
            subjects: When set, writer schema ids must be registered under one of them.

        Raises:
            ValueError: A URL that is not http(s), or auth given twice.
            ConfigurationError: Unreadable CA, certificate or key file.
        """
        self._bases = [_Base.parse(part) for part in url.split(",") if part.strip()]
        if not self._bases:
            msg = "no registry URL given"
            raise ValueError(msg)
        #: The configured URLs, user info removed: safe to log.
        self.url = ",".join(str(base) for base in self._bases)
        self._timeout_s = timeout_s
        self._deadline_s = deadline_s
        self._retries = retries
        #: Told of every API call: (operation, outcome, seconds); the service's metrics.
        self.on_call: Callable[[str, str, float], None] | None = None
        self._backoff_s = retry_backoff_s
        self._max_bytes = max_response_bytes
        self._unknown_ttl_s = unknown_id_ttl_s
        self._subjects = frozenset(subjects)
        self._auth = self._authorization(username, password, bearer_token)
        self._tls, self._tls_anonymous = self._tls_contexts(
            ca_file, cert_file, key_file, key_password
        )
        self._preferred = 0  # index of the base URL that answered last
        self._by_id: dict[int, dict[str, Any]] = {}
        self._unknown: OrderedDict[int, tuple[float, str]] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: SchemaSettings) -> SchemaRegistryClient:
        """The client ``settings`` describe (``schema.registry_*``).

        Raises:
            ConfigurationError: Missing URL, unreadable TLS file; names the key.
        """
        if not settings.registry_url:
            msg = "schema.registry_url is required for the confluent wire format"
            raise ConfigurationError(msg)

        def secret(value: Any) -> str | None:
            return None if value is None else str(value.get_secret_value())

        try:
            return cls(
                settings.registry_url,
                settings.registry_username,
                secret(settings.registry_password),
                settings.registry_timeout_s,
                bearer_token=secret(settings.registry_bearer_token),
                ca_file=settings.registry_ca_file,
                cert_file=settings.registry_cert_file,
                key_file=settings.registry_key_file,
                key_password=secret(settings.registry_key_password),
                deadline_s=settings.registry_deadline_s,
                retries=settings.registry_retries,
                retry_backoff_s=settings.registry_retry_backoff_s,
                max_response_bytes=settings.registry_max_response_bytes,
                unknown_id_ttl_s=settings.registry_unknown_id_ttl_s,
                subjects=settings.registry_subjects,
            )
        except ValueError as exc:
            msg = f"schema.registry_url: {exc}"
            raise ConfigurationError(msg) from exc

    def _authorization(
        self, username: str | None, password: str | None, bearer_token: str | None
    ) -> str | None:
        in_url = {base.userinfo for base in self._bases if base.userinfo is not None}
        given = sum((username is not None, bool(in_url), bearer_token is not None))
        if given > 1:
            msg = "give one of: registry username, user info in the URL, a bearer token"
            raise ValueError(msg)
        if bearer_token is not None:
            return f"Bearer {bearer_token}"
        if in_url:
            if len(in_url) > 1:
                msg = "the registry URLs carry different user info"
                raise ValueError(msg)
            username, password = in_url.pop()
        if username is None:
            return None
        token = base64.b64encode(f"{username}:{password or ''}".encode()).decode()
        return f"Basic {token}"

    @staticmethod
    def _tls_contexts(
        ca_file: Path | None,
        cert_file: Path | None,
        key_file: Path | None,
        key_password: str | None,
    ) -> tuple[ssl.SSLContext, ssl.SSLContext]:
        """TLS for the configured registry (with the client certificate) and for others."""
        if key_file is not None and cert_file is None:
            msg = "a registry key file needs a certificate file"
            raise ValueError(msg)
        contexts = []
        for with_cert in (True, False):
            try:
                context = ssl.create_default_context(
                    cafile=str(ca_file) if ca_file is not None else None
                )
            except (OSError, ssl.SSLError) as exc:
                msg = f"schema.registry_ca_file: cannot load {ca_file}: {exc}"
                raise ConfigurationError(msg) from exc
            if with_cert and cert_file is not None:
                try:
                    context.load_cert_chain(cert_file, key_file, key_password)
                except (OSError, ssl.SSLError) as exc:
                    msg = (
                        f"schema.registry_cert_file / registry_key_file: cannot load "
                        f"{cert_file}: {type(exc).__name__}"
                    )
                    raise ConfigurationError(msg) from exc
            contexts.append(context)
        return contexts[0], contexts[1]

    # -- HTTP ------------------------------------------------------------------------------

    def _attempt(
        self, base: _Base, method: str, path: str, body: bytes | None, deadline: float
    ) -> _Answer:
        """One attempt against one base URL, following permitted redirects."""
        target = urllib.parse.urlsplit(str(base) + path)
        for _ in range(MAX_REDIRECTS + 1):
            origin = _Origin.of(urllib.parse.urlunsplit(target))
            trusted = origin == base.origin
            answer = self._exchange(origin, target, method, body, trusted, deadline)
            if answer.status not in REDIRECT_STATUSES:
                return answer
            location = answer.location
            if method != "GET" and answer.status not in METHOD_KEEPING_REDIRECTS:
                return answer  # reported as a refusal: a POST must not turn into a GET
            if not location:
                return answer
            target = urllib.parse.urlsplit(
                urllib.parse.urljoin(urllib.parse.urlunsplit(target), location)
            )
            if origin.scheme == "https" and target.scheme != "https":
                msg = f"{origin} redirected to plain http; not followed"
                raise _Retryable(msg)
        msg = f"more than {MAX_REDIRECTS} redirects"
        raise _Retryable(msg)

    def _exchange(
        self,
        origin: _Origin,
        target: urllib.parse.SplitResult,
        method: str,
        body: bytes | None,
        trusted: bool,
        deadline: float,
    ) -> _Answer:
        """One HTTP request and its whole answer, within ``deadline``."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            msg = "deadline exceeded"
            raise _Retryable(msg)
        headers = {"Accept": ACCEPT, "User-Agent": "stream-scorer"}
        if body is not None:
            headers["Content-Type"] = CONTENT_TYPE
        # Credentials go only to the origin they were configured for: a redirect elsewhere
        # (a compromised or misconfigured proxy) gets neither the header nor the certificate.
        if trusted and self._auth is not None:
            headers["Authorization"] = self._auth
        conn: http.client.HTTPConnection
        if origin.scheme == "https":
            context = self._tls if trusted else self._tls_anonymous
            conn = http.client.HTTPSConnection(
                origin.host, origin.port, timeout=remaining, context=context
            )
        else:
            conn = http.client.HTTPConnection(origin.host, origin.port, timeout=remaining)
        watchdog = _Watchdog(remaining)
        conn._create_connection = watchdog.create_connection  # type: ignore[attr-defined] # http.client's own hook, set in its __init__
        path = target.path or "/"
        if target.query:
            path += "?" + target.query
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            data = self._read_body(response, deadline)
            if watchdog.fired:
                msg = f"no whole answer within {self._timeout_s:g} s"
                raise _Retryable(msg)
            return _Answer(response.status, data, response.getheader("Location"))
        except (OSError, http.client.HTTPException) as exc:
            if watchdog.fired:
                msg = f"no whole answer within {self._timeout_s:g} s"
                raise _Retryable(msg) from exc
            msg = f"{type(exc).__name__}: {exc}"
            raise _Retryable(msg) from exc
        finally:
            watchdog.close()
            conn.close()

    def _read_body(self, response: http.client.HTTPResponse, deadline: float) -> bytes:
        """The whole body, refused past the size cap, read one system call at a time."""
        declared = response.getheader("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > self._max_bytes:
            msg = f"answer declared larger than {self._max_bytes} bytes"
            raise _Unusable(msg)
        chunks: list[bytes] = []
        size = 0
        # read1, not read: read(n) loops until n bytes arrive, so a dripping server would keep
        # it inside one call; read1 returns after each system call and the deadline is checked.
        while chunk := response.read1(READ_CHUNK_BYTES):
            size += len(chunk)
            if size > self._max_bytes:
                msg = f"answer larger than {self._max_bytes} bytes"
                raise _Unusable(msg)
            chunks.append(chunk)
            if time.monotonic() > deadline:
                msg = f"no whole answer within {self._timeout_s:g} s"
                raise _Retryable(msg)
        return b"".join(chunks)

    def _call(self, method: str, path: str, payload: Any = None) -> Any:
        """One API call, timed and its outcome reported to :attr:`on_call` (metrics)."""
        operation = "schema_by_id" if path.startswith("/schemas/ids/") else "subjects"
        started = time.monotonic()
        outcome = "ok"
        try:
            return self._call_once(method, path, payload)
        except RegistryUnavailableError:
            outcome = "unavailable"
            raise
        except RegistryRefusedError:
            outcome = "refused"
            raise
        except _Unusable:
            outcome = "unusable"
            raise
        finally:
            if self.on_call is not None:
                self.on_call(operation, outcome, time.monotonic() - started)

    def _call_once(self, method: str, path: str, payload: Any = None) -> Any:
        """One API call: retried on outages across the URLs; the parsed JSON answer.

        Raises:
            RegistryUnavailableError: No usable answer within the retries and the deadline.
            RegistryRefusedError: A 4xx refusal (not retried).
            _Unusable: The answer exceeded the size cap or nests too deep.
        """
        body = None if payload is None else json.dumps(payload).encode()
        what = f"{method} {path}"
        started = time.monotonic()
        call_deadline = started + self._deadline_s
        problems: list[str] = []
        for attempt in range(self._retries + 1):
            index = (self._preferred + attempt) % len(self._bases)
            base = self._bases[index]
            now = time.monotonic()
            if now >= call_deadline:
                break
            try:
                answer = self._attempt(
                    base, method, path, body, min(now + self._timeout_s, call_deadline)
                )
                if answer.status in RETRYABLE_STATUSES:
                    error = _refusal(what, answer)
                    msg = f"HTTP {answer.status}: {error.registry_message}"
                    raise _Retryable(msg)
                if not 200 <= answer.status < 300:
                    raise _refusal(f"{what} at {base}", answer)  # noqa: EM102 - built by _refusal
                try:
                    parsed = json.loads(answer.body) if answer.body else None
                except RecursionError as exc:
                    msg = "answer nests too deep to parse"
                    raise _Unusable(msg) from exc
                except ValueError as exc:
                    # A proxy's HTML page or a cut answer: not the registry speaking.
                    msg = f"answer is not JSON: {answer.body[:60]!r}"
                    raise _Retryable(msg) from exc
                self._preferred = index
                return parsed
            except _Retryable as exc:
                problems.append(f"{base}: {exc}")
            if attempt < self._retries:
                backoff = full_jitter_s(self._backoff_s, attempt, random.random())
                time.sleep(max(0.0, min(backoff, call_deadline - time.monotonic())))
        elapsed = time.monotonic() - started
        msg = (
            f"registry unavailable: {what} failed {len(problems)} time(s) in {elapsed:.1f} s "
            f"at {self.url}; last: {problems[-1] if problems else 'deadline exceeded'}"
        )
        raise RegistryUnavailableError(msg)

    # -- API -------------------------------------------------------------------------------

    def _remember_unknown(self, schema_id: int, reason: str) -> SchemaNotFoundError:
        with self._lock:
            self._unknown[schema_id] = (time.monotonic() + self._unknown_ttl_s, reason)
            self._unknown.move_to_end(schema_id)
            while len(self._unknown) > NEGATIVE_CACHE_MAX:
                self._unknown.popitem(last=False)
        return SchemaNotFoundError(reason)

    def _known_unknown(self, schema_id: int) -> str | None:
        with self._lock:
            entry = self._unknown.get(schema_id)
            if entry is None:
                return None
            if entry[0] <= time.monotonic():
                del self._unknown[schema_id]
                return None
            return entry[1]

    def schema_by_id(self, schema_id: int) -> dict[str, Any]:
        """The Avro schema (parsed JSON) registered under ``schema_id``, cached.

        Raises:
            SchemaNotFoundError: No usable Avro schema under this id (remembered for a while).
            RegistryRefusedError: The registry refused the request (e.g. HTTP 401).
            RegistryUnavailableError: The registry is unavailable after every retry.
        """
        with self._lock:
            cached = self._by_id.get(schema_id)
        if cached is not None:
            return cached
        reason = self._known_unknown(schema_id)
        if reason is not None:
            raise SchemaNotFoundError(reason)
        schema = self._fetch(schema_id)
        with self._lock:
            self._by_id[schema_id] = schema
        return schema

    def _fetch(self, schema_id: int) -> dict[str, Any]:
        where = f"registry {self.url}"
        try:
            answer = self._call("GET", f"/schemas/ids/{schema_id}")
        except RegistryRefusedError as exc:
            if exc.status != HTTP_NOT_FOUND:
                raise
            reason = f"schema id {schema_id} not found in {where}: {exc.registry_message}"
            raise self._remember_unknown(schema_id, reason) from exc
        except _Unusable as exc:
            reason = f"schema id {schema_id}: {exc}"
            raise self._remember_unknown(schema_id, reason) from exc
        if not isinstance(answer, dict) or not isinstance(answer.get("schema"), str):
            reason = f"{where} answered no schema text for schema id {schema_id}"
            raise self._remember_unknown(schema_id, reason)
        schema_type = answer.get("schemaType", "AVRO")
        if schema_type != "AVRO":
            reason = f"schema id {schema_id} is {_clean(str(schema_type))}, not AVRO"
            raise self._remember_unknown(schema_id, reason)
        try:
            schema = json.loads(answer["schema"])
        except RecursionError as exc:
            reason = f"schema id {schema_id} nests deeper than {MAX_SCHEMA_JSON_DEPTH} levels"
            raise self._remember_unknown(schema_id, reason) from exc
        except ValueError as exc:
            reason = f"schema id {schema_id} is not JSON: {exc}"
            raise self._remember_unknown(schema_id, reason) from exc
        if _json_depth_exceeds(schema, MAX_SCHEMA_JSON_DEPTH):
            reason = f"schema id {schema_id} nests deeper than {MAX_SCHEMA_JSON_DEPTH} levels"
            raise self._remember_unknown(schema_id, reason)
        if not isinstance(schema, dict):
            # Valid Avro can be a bare type or a union, but an event is read as a record.
            reason = f"schema id {schema_id} is not an Avro record schema"
            raise self._remember_unknown(schema_id, reason)
        if self._subjects:
            self._check_subjects(schema_id)
        return schema

    def _check_subjects(self, schema_id: int) -> None:
        try:
            versions = self._call("GET", f"/schemas/ids/{schema_id}/versions")
        except _Unusable as exc:
            reason = f"schema id {schema_id}: subject list: {exc}"
            raise self._remember_unknown(schema_id, reason) from exc
        subjects = {
            item.get("subject") for item in versions or () if isinstance(item, dict)
        } & self._subjects
        if not subjects:
            reason = (
                f"schema id {schema_id} is not registered under an allowed subject "
                f"(schema.registry_subjects)"
            )
            raise self._remember_unknown(schema_id, reason)

    def _subject_call(self, method: str, subject: str, tail: str, payload: Any = None) -> Any:
        path = f"/subjects/{urllib.parse.quote(subject, safe='')}/versions{tail}"
        try:
            return self._call(method, path, payload)
        except _Unusable as exc:
            msg = f"{method} {path}: {exc}"
            raise RegistryError(msg) from exc

    def register(self, subject: str, schema: dict[str, Any]) -> int:
        """Register ``schema`` under ``subject`` (idempotent) and return its id.

        Raises:
            RegistryRefusedError: The registry refused (read-only, incompatible, no right).
            RegistryUnavailableError: The registry is unavailable after every retry.
            RegistryError: The answer carries no id.
        """
        answer = self._subject_call("POST", subject, "", {"schema": json.dumps(schema)})
        try:
            schema_id = int(answer["id"])
        except (KeyError, TypeError, ValueError) as exc:
            msg = f"registry {self.url} answered no id registering under {subject!r}"
            raise RegistryError(msg) from exc
        with self._lock:
            self._by_id[schema_id] = schema
        return schema_id

    def latest(self, subject: str) -> tuple[int, int, Any]:
        """The latest version registered under ``subject``: ``(id, version, parsed schema)``.

        Raises:
            RegistryRefusedError: Unknown subject (HTTP 404) or another refusal.
            RegistryUnavailableError: The registry is unavailable after every retry.
            RegistryError: The answer is not a schema version.
        """
        answer = self._subject_call("GET", subject, "/latest")
        try:
            return int(answer["id"]), int(answer["version"]), json.loads(answer["schema"])
        except (KeyError, TypeError, ValueError, RecursionError) as exc:
            msg = f"registry {self.url} answered no usable latest version of {subject!r}"
            raise RegistryError(msg) from exc

    def alert_schema_id(self, subject: str, schema: dict[str, Any], auto_register: bool) -> int:
        """The id alerts are framed with: registered now, or the subject's latest version.

        With ``auto_register`` off (a registry that forbids registration by clients), the
        latest version of ``subject`` must be ``schema`` itself (same Parsing Canonical
        Form): framing alerts with the id of another schema would make every consumer decode
        them with the wrong writer schema.

        Raises:
            RegistryRefusedError: The registry refused; its message says why.
            RegistryUnavailableError: The registry is unavailable after every retry.
            RegistryError: The latest version is not ``schema``.
        """
        if auto_register:
            return self.register(subject, schema)
        schema_id, version, latest = self.latest(subject)
        try:
            same = _canonical(latest) == _canonical(schema)
        except (fastavro.schema.SchemaParseException, ValueError, KeyError, TypeError) as exc:
            msg = f"subject {subject!r} version {version} (id {schema_id}) is not valid Avro"
            raise RegistryError(msg) from exc
        if not same:
            msg = (
                f"subject {subject!r}: its latest version {version} (id {schema_id}) is not "
                f"schema.alert; register schema.alert under it, or point schema.alert at it"
            )
            raise RegistryError(msg)
        with self._lock:
            self._by_id[schema_id] = schema
        return schema_id
