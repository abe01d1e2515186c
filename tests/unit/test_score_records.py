"""Score records (schemas/score.avsc): the hand-written fast path writes exactly what fastavro
writes, keyed like alerts, for batches and record lists, binary and multiclass."""

from __future__ import annotations

import copy
import datetime as dt
import io
import json
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import pytest

from stream_scorer.consume import MessageBatch
from stream_scorer.decision import parse_policy, threshold_policy
from stream_scorer.encode import EventFields, ScoreEncoder, ScoreRows
from stream_scorer.errors import ConfigurationError
from stream_scorer.privacy import PrivacyPolicy
from stream_scorer.records import SourceRecord, ValuesColumn

SCORE_SCHEMA: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parents[2] / "schemas" / "score.avsc").read_text(encoding="utf-8")
)
PARSED = fastavro.parse_schema(copy.deepcopy(SCORE_SCHEMA))
NOW_MS = 1_767_225_700_000


def _records(n: int) -> list[SourceRecord]:
    # Offsets and partitions across varint widths, keys of every kind (none, short, long, UTF-8).
    offsets = [0, 1, 63, 64, 127, 128, 16_383, 16_384, 2**31, 2**62]
    keys: list[bytes | None] = [None, b"k", "ü-kéy".encode(), b"x" * 200]
    return [
        SourceRecord(
            "in" if i % 3 else "other-topic",
            [0, 5, 63, 64, 1000][i % 5],
            offsets[i % len(offsets)] + i,
            keys[i % len(keys)],
            b"",
        )
        for i in range(n)
    ]


def _decode(value: bytes, header: bytes = b"") -> dict[str, Any]:
    assert value.startswith(header)
    record: dict[str, Any] = fastavro.schemaless_reader(
        io.BytesIO(value[len(header) :]), PARSED, None
    )
    return record


def _expected(record: SourceRecord, score: float, band: str, published: bool) -> dict[str, Any]:
    return {
        "event_id": record.coordinates,
        "key": None if record.key is None else record.key.decode(),
        "score": score,
        "band": band,
        "published": published,
        "classes": [],
        "model_name": "m",
        "model_version": "7",
        "scored_time": dt.datetime.fromtimestamp(NOW_MS / 1000, tz=dt.UTC),
        "source_topic": record.topic,
        "source_partition": record.partition,
        "source_offset": record.offset,
    }


@pytest.mark.parametrize("as_batch", [True, False], ids=["MessageBatch", "records"])
def test_fast_path_bytes_decode_as_score_avsc(as_batch: bool) -> None:
    """Every record decodes with fastavro to the event's id, key, score, band and lineage."""
    records = _records(40)
    batch = MessageBatch.from_records(records) if as_batch else records
    rows = np.arange(0, 40, 2, dtype=np.intp)  # not every row: positions are honoured
    rng = np.random.default_rng(3)
    scores = rng.uniform(0, 1, size=len(rows))
    policy = threshold_policy(0.5)
    bands = policy.assign(scores)
    header = b"\x00\x00\x00\x00\x2a"
    encoder = ScoreEncoder(SCORE_SCHEMA, header)

    out = encoder.encode_rows(
        ScoreRows(batch, rows, scores, bands, None, {}), policy, "m", "7", NOW_MS
    )

    assert len(out) == len(rows)
    for (key, value, _), row, score, band in zip(out, rows, scores, bands, strict=True):
        record = records[row]
        assert key == record.key  # same key as the alert: same partition, same order
        published = bool(band == 1)
        assert _decode(value, header) == _expected(
            record, float(score), "FLAG" if published else "PASS", published
        )


def test_fast_path_equals_fastavro_byte_for_byte() -> None:
    """The hand-written encoding is fastavro's, byte for byte, including top classes."""
    policy = parse_policy(
        {
            "output": {"type": "multiclass", "labels": ["shoes", "hats", "bags", "socks"]},
            "decision": {
                "top_k": 3,
                "bands": [
                    {"name": "LOW", "publish": False},
                    {"name": "RECOMMEND", "from": 0.3, "publish": True},
                ],
            },
        }
    )
    records = _records(12)
    rng = np.random.default_rng(9)
    outputs = rng.dirichlet(np.ones(4), size=12)
    rows = np.arange(12, dtype=np.intp)
    values = policy.decision_values(outputs)
    columns, probabilities = policy.top_classes(outputs)
    encoder = ScoreEncoder(SCORE_SCHEMA, b"")

    out = encoder.encode_rows(
        ScoreRows(records, rows, values, policy.assign(values), (columns, probabilities), {}),
        policy,
        "m",
        "7",
        NOW_MS,
    )

    for i, (_, value, _) in enumerate(out):
        band = int(policy.assign(values[i : i + 1])[0])
        expected = {
            **_expected(records[i], float(values[i]), policy.names[band], band == 1),
            "scored_time": NOW_MS,
            "classes": [
                {"label": policy.labels[c], "probability": float(p)}
                for c, p in zip(columns[i], probabilities[i], strict=True)
            ],
        }
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, PARSED, expected)
        assert value == buffer.getvalue()


def test_id_and_key_fields_come_from_columns_through_the_privacy_policy() -> None:
    """Configured id and key fields are read from the decoded columns; the key is redacted
    as the alert's would be, and a null id falls back to the coordinates."""
    records = _records(3)
    columns = {
        "event_id": ValuesColumn.of(["e0", None, "e2"]),
        "customer": ValuesColumn.of(["c0", "c1", "c2"]),
    }
    encoder = ScoreEncoder(
        SCORE_SCHEMA,
        b"",
        EventFields(id_field="event_id", key_field="customer"),
        PrivacyPolicy(key="redact"),
    )
    policy = threshold_policy(0.5)
    scores = np.array([0.1, 0.6, 0.9])

    out = encoder.encode_rows(
        ScoreRows(records, np.arange(3), scores, policy.assign(scores), None, columns),
        policy,
        "m",
        "7",
        NOW_MS,
    )

    decoded = [_decode(value) for _, value, _ in out]
    assert [d["event_id"] for d in decoded] == ["e0", records[1].coordinates, "e2"]
    assert {key for key, _, _ in out} == {b"[redacted]"}
    assert {d["key"] for d in decoded} == {"[redacted]"}
    assert encoder.needed_fields() == ("event_id", "customer")


def test_schema_of_another_layout_is_refused() -> None:
    """A score schema whose fields differ from score.avsc is refused, naming the key."""
    other = copy.deepcopy(SCORE_SCHEMA)
    other["fields"] = [f for f in other["fields"] if f["name"] != "band"]

    with pytest.raises(ConfigurationError, match=r"schema\.scores"):
        ScoreEncoder(other, b"")


def test_empty_rows_encode_nothing() -> None:
    """No scored rows, no records."""
    encoder = ScoreEncoder(SCORE_SCHEMA, b"")
    empty = np.empty(0)

    assert (
        encoder.encode_rows(
            ScoreRows([], empty.astype(np.intp), empty, empty.astype(np.intp), None, {}),
            threshold_policy(0.5),
            "m",
            "7",
            NOW_MS,
        )
        == []
    )
