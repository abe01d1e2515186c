"""Shared builders for the unit tests: records, events, schemas, model cards, registries.

Builders that tests call with arguments are fixtures returning a function
(``make_record(value, offset=3)``): no test module imports this file, because pytest loads
every ``conftest.py`` as a module named ``conftest`` and the last one loaded would win.
"""

from __future__ import annotations

import copy
import io
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import fastavro
import pytest
import structlog
from prometheus_client import CollectorRegistry

from stream_scorer.devtools.devregistry import DevSchemaRegistry
from stream_scorer.records import Header, SourceRecord

REPO_ROOT = Path(__file__).resolve().parents[1]
SCHEMAS_DIR = REPO_ROOT / "schemas"
#: The shipped model version.
FRAUD_MODEL_DIR = REPO_ROOT / "models" / "fraud" / "1"
#: Small test models: tensor layout, ZipMap output, and one that cannot bind to the schema.
TEST_MODELS_DIR = REPO_ROOT / "tests" / "data" / "models"

#: Topic every built record comes from unless a test says otherwise.
INPUT_TOPIC = "transactions"
#: 2026-01-01T00:00:00Z in epoch milliseconds.
EVENT_TIME_MS = 1_767_225_600_000

MakeRecord = Callable[..., SourceRecord]
MakeTransaction = Callable[..., dict[str, Any]]


def build_record(
    value: bytes | None,
    offset: int = 0,
    partition: int = 0,
    *,
    topic: str = INPUT_TOPIC,
    key: bytes | None = b"card-0001",
    headers: tuple[Header, ...] = (),
    timestamp_ms: int = 0,
) -> SourceRecord:
    """A consumed Kafka record with the given value and coordinates."""
    return SourceRecord(topic, partition, offset, key, value, headers, timestamp_ms)


def build_transaction(**overrides: Any) -> dict[str, Any]:
    """A valid ``Transaction`` (schemas/transaction.avsc) as fastavro writes it, with overrides."""
    event: dict[str, Any] = {
        "transaction_id": "txn-0001",
        "card_id": "card-0001",
        "account_id": "acct-0001",
        "amount": 42.5,
        "currency": "EUR",
        "merchant_id": "m-001",
        "merchant_name": "Corner Shop",
        "merchant_category": "grocery",
        "mcc": 5411,
        "channel": "POS",
        "card_present": True,
        "country": "DE",
        "home_country": "DE",
        "distance_from_home_km": 3.5,
        "txn_count_1h": 1,
        "seconds_since_last_txn": 3600,
        "device_id": None,
        "ip_address": None,
        "is_new_device": False,
        "event_time": EVENT_TIME_MS,
    }
    event.update(overrides)
    return event


def avro_body(schema: Mapping[str, Any], record: Any) -> bytes:
    """The schemaless Avro binary encoding of ``record`` written with ``schema``."""
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(copy.deepcopy(dict(schema))), record)
    return buffer.getvalue()


def load_json(path: Path) -> dict[str, Any]:
    """Parse a JSON file (``.avsc``, ``model.json``)."""
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


@pytest.fixture
def make_record() -> MakeRecord:
    """``make_record(value, offset=..., partition=..., key=..., topic=...)`` → SourceRecord."""
    return build_record


@pytest.fixture
def make_transaction() -> MakeTransaction:
    """``make_transaction(**overrides)`` → a valid transaction event dict."""
    return build_transaction


@pytest.fixture
def avro_bytes() -> Callable[[Mapping[str, Any], Any], bytes]:
    """``avro_bytes(schema, record)`` → the schemaless Avro body (no framing)."""
    return avro_body


@pytest.fixture
def registry() -> CollectorRegistry:
    """A fresh Prometheus registry, so no test sees another's samples."""
    return CollectorRegistry()


@pytest.fixture
def reader_schema() -> dict[str, Any]:
    """schemas/transaction.avsc, parsed as JSON (a fresh copy per test)."""
    return load_json(SCHEMAS_DIR / "transaction.avsc")


@pytest.fixture
def alert_schema() -> dict[str, Any]:
    """schemas/alert.avsc, parsed as JSON (a fresh copy per test)."""
    return load_json(SCHEMAS_DIR / "alert.avsc")


@pytest.fixture(scope="session")
def dev_registry() -> Iterator[DevSchemaRegistry]:
    """An in-process Schema Registry on a free loopback port, closed after the session.

    Session-scoped because closing one waits out ``serve_forever``'s 0.5 s poll; registering
    is idempotent, so tests sharing it see stable ids for the schemas they register.
    """
    server = DevSchemaRegistry()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def write_card(tmp_path: Path) -> Callable[..., Path]:
    """``write_card(card, name="card")`` writes ``<tmp>/<name>/model.json``; returns the folder."""

    def write(card: Mapping[str, Any], name: str = "card") -> Path:
        folder = tmp_path / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.json").write_text(json.dumps(card), encoding="utf-8")
        return folder

    return write


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Undo structlog and stdlib logging configuration a test (e.g. the CLI) changes."""
    saved = structlog.get_config()
    processors = list(saved["processors"])
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        saved["processors"] = processors
        structlog.configure(**saved)
        root.handlers[:] = handlers
        root.setLevel(level)
