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
from stream_scorer.decode.columnar.columns import BytesColumn
from stream_scorer.encode import EventFields, ScoreEncoder, ScoreRows, _raw_strings
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


def _bytes_column(name: str, values: list[bytes | None]) -> BytesColumn:
    """A decoded string column as the columnar decoder makes it: slices of one buffer."""
    buffer = b"".join(v or b"" for v in values)
    lengths = np.array([len(v or b"") for v in values], np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    null = np.array([v is None for v in values])
    return BytesColumn(
        name=name,
        null=null if null.any() else None,
        buffer=np.frombuffer(buffer, np.uint8),
        start=starts,
        length=lengths,
    )


@pytest.mark.parametrize(
    ("ids", "keys"),
    [
        (
            [f"txn-{i:04d}-ü".encode() for i in range(80)],
            [f"card-{i % 7}".encode() for i in range(80)],
        ),
        ([b"ok", b"bad-\xff", b"x"] * 3, [b"c0", None, b"c2"] * 3),
    ],
    ids=["valid-utf8", "invalid-utf8-and-null"],
)
def test_string_columns_sliced_from_the_buffer_equal_the_decoded_values(
    ids: list[bytes | None], keys: list[bytes | None]
) -> None:
    """Ids and keys read as raw slices of the batch buffer give the same records as their
    decoded values do; invalid UTF-8 and nulls take the decoding path and read the same."""
    n = len(ids)
    records = _records(n)
    rows = np.arange(0, n, 2)  # every other row: the slices must follow the index
    policy = threshold_policy(0.5)
    scores = np.linspace(0.0, 1.0, len(rows))
    encoder = ScoreEncoder(SCORE_SCHEMA, b"", EventFields(id_field="id", key_field="card"))

    def encode(columns: dict[str, Any]) -> list[Any]:
        return encoder.encode_rows(
            ScoreRows(records, rows, scores, policy.assign(scores), None, columns),
            policy, "m", "7", NOW_MS,
        )  # fmt: skip

    sliced = encode({"id": _bytes_column("id", ids), "card": _bytes_column("card", keys)})
    decoded = encode(
        {
            "id": ValuesColumn.of([None if v is None else v.decode(errors="replace") for v in ids]),
            "card": ValuesColumn.of(
                [None if v is None else v.decode(errors="replace") for v in keys]
            ),
        }
    )

    assert sliced == decoded
    assert [_decode(value)["event_id"] for _, value, _ in sliced][:2] == [
        (ids[0] or b"").decode(errors="replace"),
        (ids[2] or b"").decode(errors="replace"),
    ]


def test_raw_string_slices_are_taken_only_when_they_equal_the_decoded_text() -> None:
    """Valid UTF-8 rows come back as buffer slices; a null or an invalid row means decode."""
    column = _bytes_column("id", [b"a", "é".encode(), None, b"\xff"])

    assert _raw_strings(column, np.array([0, 1])) == [b"a", "é".encode()]
    assert _raw_strings(column, np.array([0, 2])) is None
    assert _raw_strings(column, np.array([3])) is None
    assert _raw_strings(ValuesColumn.of(["a"]), np.array([0])) is None
