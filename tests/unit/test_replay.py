"""``stream-scorer replay``: range parsing, the range reader (a fake consumer stands in for
Kafka), and the report's arithmetic on the shipped fraud/1 and fraud/2 models."""

from __future__ import annotations

import io
import json
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import pytest
from confluent_kafka import Message, TopicPartition

from stream_scorer.app import build_decoder
from stream_scorer.cli import main
from stream_scorer.consume import MessageBatch
from stream_scorer.devtools.generate import TransactionGenerator
from stream_scorer.errors import ConfigurationError, FatalError
from stream_scorer.model_set import LoadedModel, load_model
from stream_scorer.monitoring.drift import DriftConfig
from stream_scorer.offline import SCORE_SCHEMA, score_events
from stream_scorer.records import SourceRecord
from stream_scorer.replay import (
    PLOT_HINT,
    RangeReader,
    RangeSpec,
    ReplayScorer,
    _ResultWriter,
    parse_offsets,
    parse_time,
    resolve_range,
    write_png,
)
from stream_scorer.settings import load_settings

REPO = Path(__file__).resolve().parents[2]
N_EVENTS = 1200
BATCH = 250


# -- range parsing -------------------------------------------------------------------------


def test_offsets_one_for_all_or_per_partition() -> None:
    """``N`` is every partition's offset; ``P:N,P:N`` names partitions."""
    assert parse_offsets("42", "--from") == 42
    assert parse_offsets("0:5, 2:90", "--to") == {0: 5, 2: 90}


@pytest.mark.parametrize("text", ["-1", "a", "0:", "0:5,x", "1:2:3", ""])
def test_bad_offsets_name_the_flag(text: str) -> None:
    """A malformed offset is refused, naming the flag and the text."""
    with pytest.raises(ConfigurationError, match="--from: expected an offset"):
        parse_offsets(text, "--from")


def test_a_partition_given_twice_is_refused() -> None:
    """``0:1,0:2`` is ambiguous: refused."""
    with pytest.raises(ConfigurationError, match="partition 0 is given twice"):
        parse_offsets("0:1,0:2", "--to")


def test_times_as_epoch_ms_or_iso_8601() -> None:
    """Epoch ms are taken as they are; ISO-8601 with a zone, or without one as UTC."""
    assert parse_time("1764579600000", "--since") == 1_764_579_600_000
    assert parse_time("2025-12-01T09:00:00Z", "--since") == 1_764_579_600_000
    assert parse_time("2025-12-01T10:00:00+01:00", "--since") == 1_764_579_600_000
    assert parse_time("2025-12-01T09:00:00", "--since") == 1_764_579_600_000


def test_a_bad_time_names_the_flag() -> None:
    """Neither form: the error names the flag and shows both accepted forms."""
    with pytest.raises(ConfigurationError, match="--until: expected an ISO-8601 time"):
        parse_time("yesterday", "--until")


def test_offsets_and_times_do_not_mix() -> None:
    """--from with --since is refused, and so is --until before --since."""
    with pytest.raises(ConfigurationError, match="not both"):
        RangeSpec(start=5, since_ms=10)
    with pytest.raises(ConfigurationError, match="before --since"):
        RangeSpec(since_ms=10, until_ms=5)


WATERMARKS = {0: (0, 100), 1: (20, 50), 2: (0, 0)}


def _no_lookup(times: Mapping[int, int]) -> dict[int, int]:
    msg = "offsets were given: no time lookup"
    raise AssertionError(msg)  # pragma: no cover


def test_default_range_is_earliest_to_the_high_watermark() -> None:
    """No flags: every partition from its low watermark to its high watermark."""
    assert resolve_range(RangeSpec(), WATERMARKS, _no_lookup) == {
        0: (0, 100), 1: (20, 50), 2: (0, 0),
    }  # fmt: skip


def test_offsets_are_clamped_into_what_the_partition_holds() -> None:
    """A start below the low watermark starts there; an end past the high watermark stops
    there (a replay never waits for the future); a start past the end reads nothing."""
    got = resolve_range(RangeSpec(start=10, end=70), WATERMARKS, _no_lookup)
    assert got == {0: (10, 70), 1: (20, 50), 2: (0, 0)}
    assert resolve_range(RangeSpec(start=80, end=60), WATERMARKS, _no_lookup)[0] == (60, 60)


def test_per_partition_offsets_select_the_partitions_named() -> None:
    """``--from 0:5 --to 1:30`` replays partitions 0 and 1 only, defaults elsewhere."""
    got = resolve_range(RangeSpec(start={0: 5}, end={1: 30}), WATERMARKS, _no_lookup)
    assert got == {0: (5, 100), 1: (20, 30)}


def test_an_unknown_partition_is_refused() -> None:
    """A partition the topic does not have is an error naming the partitions it has."""
    with pytest.raises(ConfigurationError, match=r"no partition \[7\].*\[0, 1, 2\]"):
        resolve_range(RangeSpec(start={7: 0}), WATERMARKS, _no_lookup)


def test_times_go_through_offsets_for_times() -> None:
    """--since/--until become the first offsets at or after those times; a time past every
    message is the end of the partition."""
    asked: list[dict[int, int]] = []

    def lookup(times: Mapping[int, int]) -> dict[int, int]:
        asked.append(dict(times))
        when = next(iter(times.values()))
        return {0: 10, 1: 25, 2: -1} if when == 1000 else {0: 60, 1: -1, 2: -1}

    got = resolve_range(RangeSpec(since_ms=1000, until_ms=2000), WATERMARKS, lookup)
    assert asked == [{0: 1000, 1: 1000, 2: 1000}, {0: 2000, 1: 2000, 2: 2000}]
    assert got == {0: (10, 60), 1: (25, 50), 2: (0, 0)}


# -- the reader, on a fake consumer ------------------------------------------------------------


class FakeConsumer:
    """Holds messages per partition; records every call so tests see what the reader did."""

    def __init__(self, config: dict[str, Any], log: dict[int, list[int]], *, stall: bool = False):
        self.config = config
        self.log = log
        self.stall = stall
        self.calls: list[str] = []
        self.next: dict[int, int] = {}
        self.paused: set[int] = set()

    def __getattr__(self, name: str) -> Any:
        if name in {"subscribe", "commit", "store_offsets"}:
            msg = f"replay called {name}"
            raise AssertionError(msg)
        raise AttributeError(name)

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.calls.append("assign")
        self.next = {tp.partition: tp.offset for tp in partitions}

    def consume(self, n: int, timeout: float) -> list[Message]:
        out: list[Message] = []
        if self.stall:
            return out
        for p in sorted(self.next):
            while p not in self.paused and len(out) < n and self.next[p] < len(self.log[p]):
                offset = self.next[p]
                out.append(Message(topic="t", partition=p, offset=offset, value=b"v"))
                self.next[p] += 1
        return out

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition("t", tp.partition, self.next[tp.partition]) for tp in partitions]

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused |= {tp.partition for tp in partitions}

    def close(self) -> None:
        self.calls.append("close")


def _reader(log: dict[int, list[int]], **kw: Any) -> tuple[RangeReader, list[FakeConsumer]]:
    made: list[FakeConsumer] = []

    def factory(config: dict[str, Any]) -> FakeConsumer:
        made.append(FakeConsumer(config, log, **kw))
        return made[-1]

    reader = RangeReader(
        {"group.id": "scorers", "group.instance.id": "a", "enable.auto.commit": True},
        "t", 4, 5.0, factory,
    )  # fmt: skip
    return reader, made


def test_reader_never_joins_the_group_and_stops_at_the_end() -> None:
    """Assigned, not subscribed; a throwaway group, no auto-commit, no static id; messages
    past each partition's end are not read; it ends without waiting."""
    log = {0: list(range(30)), 1: list(range(30))}
    reader, made = _reader(log)
    reader.ranges = {0: (5, 15), 1: (0, 3)}
    seen = [(r.partition, r.offset) for batch in reader.batches() for r in batch]
    reader.close()
    consumer = made[0]
    assert sorted(seen) == [(0, o) for o in range(5, 15)] + [(1, o) for o in range(3)]
    assert consumer.config["group.id"].startswith("stream-scorer-replay-")
    assert consumer.config["enable.auto.commit"] is False
    assert "group.instance.id" not in consumer.config
    assert consumer.calls == ["assign", "close"]


def test_reader_batches_are_at_most_batch_size() -> None:
    """Batches hold at most ``batch_size`` messages (the settings' ``batch.max_size``)."""
    reader, _ = _reader({0: list(range(11))})
    reader.ranges = {0: (0, 11)}
    sizes = [len(batch) for batch in reader.batches()]
    assert sum(sizes) == 11 and max(sizes) == 4


def test_an_empty_range_reads_nothing() -> None:
    """Every partition empty: no assignment, no batch."""
    reader, made = _reader({0: []})
    reader.ranges = {0: (7, 7)}
    assert list(reader.batches()) == []
    assert made[0].calls == []


def test_a_range_that_stops_moving_is_an_error_not_a_hang() -> None:
    """No progress for the idle timeout before the end: FatalError naming where it stopped."""
    made: list[FakeConsumer] = []

    def factory(config: dict[str, Any]) -> FakeConsumer:
        made.append(FakeConsumer(config, {0: list(range(10))}, stall=True))
        return made[-1]

    reader = RangeReader({}, "t", 4, 0.05, factory)
    reader.ranges = {0: (0, 10)}
    with pytest.raises(FatalError, match=r"no progress for 0.05 s .*0 at 0 of \[0, 10\)"):
        list(reader.batches())


# -- the report, on the shipped models ---------------------------------------------------------


@pytest.fixture(scope="module")
def reader_schema_json() -> dict[str, Any]:
    """The transaction reader schema."""
    schema: dict[str, Any] = json.loads((REPO / "schemas/transaction.avsc").read_text("utf-8"))
    return schema


@pytest.fixture(scope="module")
def fraud(reader_schema_json: dict[str, Any]) -> tuple[LoadedModel, LoadedModel]:
    """fraud/2 (replayed) and fraud/1 (held against), as the repository ships them."""
    return (
        load_model(REPO / "models/fraud/2", reader_schema_json),
        load_model(REPO / "models/fraud/1", reader_schema_json),
    )


@pytest.fixture(scope="module")
def events() -> list[dict[str, Any]]:
    """Seeded transactions with enough fraud for both models to flag and disagree."""
    generated, _ = TransactionGenerator(seed=77, fraud_rate=0.05).generate(N_EVENTS)
    return generated


@pytest.fixture(scope="module")
def replayed(
    fraud: tuple[LoadedModel, LoadedModel],
    events: list[dict[str, Any]],
    reader_schema_json: dict[str, Any],
) -> tuple[ReplayScorer, list[dict[str, Any]]]:
    """The events as plain Avro messages (three undecodable among them), decoded by the
    service's decoder and scored by both models in batches."""
    settings = load_settings(None, {"schema": {"wire_format": "plain"}}, environ={})
    decoder = build_decoder(settings, reader_schema_json, None)
    parsed = fastavro.parse_schema(reader_schema_json)
    records = []
    for i, event in enumerate(events):
        body = io.BytesIO()
        fastavro.schemaless_writer(body, parsed, event)
        records.append(SourceRecord("t", i % 2, i, None, body.getvalue()))
    records[10:10] = [SourceRecord("t", 0, 10_000 + i, None, b"\xff") for i in range(3)]
    scorer = ReplayScorer(*fraud, DriftConfig(), "transaction_id", top=5)
    results: list[dict[str, Any]] = []
    for start in range(0, len(records), BATCH):
        chunk = MessageBatch.from_records(records[start : start + BATCH])
        results += scorer.decode_and_score(decoder.decode, chunk)
    return scorer, results


def _offline(model: LoadedModel, events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["event_id"]: r for r in score_events(events, model, BATCH)}


def test_results_equal_score_file_and_keep_the_undecodable(
    replayed: tuple[ReplayScorer, list[dict[str, Any]]],
    fraud: tuple[LoadedModel, LoadedModel],
    events: list[dict[str, Any]],
) -> None:
    """Per-event results equal score-file's for the same events; undecodable messages are
    listed with their reason, not lost."""
    _, results = replayed
    offline = _offline(fraud[0], events)
    scored = {r["event_id"]: r for r in results if r["event_id"] is not None}
    assert set(scored) == set(offline)
    for event_id, mine in scored.items():
        theirs = offline[event_id]
        assert mine["score"] == pytest.approx(theirs["score"], abs=1e-6)
        assert (mine["flagged"], mine["band"], mine["model_version"]) == (
            theirs["flagged"], theirs["band"], theirs["model_version"],
        )  # fmt: skip
    bad = [r for r in results if r["event_id"] is None]
    assert len(bad) == 3 and all(r["error"] and r["score"] is None for r in bad)


def test_comparison_arithmetic_matches_the_two_models_scored_apart(
    replayed: tuple[ReplayScorer, list[dict[str, Any]]],
    fraud: tuple[LoadedModel, LoadedModel],
    events: list[dict[str, Any]],
) -> None:
    """Confusion, agreement, alert rates, mean |diff| and correlation equal what the two
    models' separate offline scores give."""
    scorer, _ = replayed
    data = scorer.finish("t", {0: (0, 1), 1: (0, 1)}).data
    a, b = _offline(fraud[0], events), _offline(fraud[1], events)
    ids = sorted(a)
    x = np.array([a[i]["score"] for i in ids])
    y = np.array([b[i]["score"] for i in ids])
    fa = np.array([a[i]["flagged"] for i in ids])
    fb = np.array([b[i]["flagged"] for i in ids])
    c = data["comparison"]
    assert c["confusion"] == {
        "both": int((fa & fb).sum()), "only_model": int((fa & ~fb).sum()),
        "only_against": int((~fa & fb).sum()), "neither": int((~fa & ~fb).sum()),
    }  # fmt: skip
    assert c["confusion"]["only_model"] + c["confusion"]["only_against"] > 0
    assert (c["model"], c["against"]) == ("fraud/2", "fraud/1")
    assert c["agreement"] == pytest.approx(float((fa == fb).mean()), abs=1e-6)
    assert c["mean_abs_score_diff"] == pytest.approx(float(np.abs(x - y).mean()), abs=1e-6)
    assert c["score_correlation"] == pytest.approx(float(np.corrcoef(x, y)[0, 1]), abs=1e-5)
    assert data["model"]["alert_rate"] == pytest.approx(float(fa.mean()))
    assert c["alert_rate"]["model"] == pytest.approx(float(fa.mean()))
    assert data["against"]["alert_rate"] == pytest.approx(float(fb.mean()))
    assert data["model"]["band_counts"] == {"PASS": int((~fa).sum()), "FLAG": int(fa.sum())}
    assert c["disagreements"] == int((fa != fb).sum())
    assert "band_confusion" not in c, "plain threshold cards: the decision confusion says it"


def test_top_disagreements_are_bounded_and_the_largest(
    replayed: tuple[ReplayScorer, list[dict[str, Any]]],
    fraud: tuple[LoadedModel, LoadedModel],
    events: list[dict[str, Any]],
) -> None:
    """At most ``top`` disagreements, by |score diff| descending, each a real disagreement
    and the largest of all."""
    scorer, _ = replayed
    top = scorer.finish("t", {}).data["top_disagreements"]
    a, b = _offline(fraud[0], events), _offline(fraud[1], events)
    diffs = sorted(
        (abs(a[i]["score"] - b[i]["score"]) for i in a if a[i]["flagged"] != b[i]["flagged"]),
        reverse=True,
    )
    assert len(top) == min(5, len(diffs))
    assert [t["abs_diff"] for t in top] == pytest.approx(diffs[: len(top)], abs=1e-6)
    for t in top:
        assert (a[t["event_id"]]["flagged"], b[t["event_id"]]["flagged"]) != (True, True)
        assert t["model_band"] != t["against_band"]


def test_drift_against_the_card_reference_and_latency(
    replayed: tuple[ReplayScorer, list[dict[str, Any]]],
) -> None:
    """Each card's reference judges one window over the whole range with the service's drift
    code (both shipped fraud cards carry one). Dead letters by reason; latency percentiles."""
    scorer, _ = replayed
    data = scorer.finish("t", {}).data
    drift = data["drift"]["fraud/1"]
    assert drift["events"] == N_EVENTS
    assert {"amount", "_score"} <= set(drift["psi"])
    assert all(v >= 0 for v in drift["psi"].values())
    assert data["drift"]["fraud/2"]["events"] == N_EVENTS
    assert data["dead_letters"]["decode"] == 3
    assert data["dead_letters"]["by_reason"]["decode"] == {"decode/DecodeError": 3}
    for part in ("decode", "batch"):
        latency = data["latency_ms"][part]
        assert 0 < latency["p50"] <= latency["p99"]
    assert data["batches"] == -(-(N_EVENTS + 3) // BATCH)
    text = scorer.finish("t", {0: (0, 5)}).table()
    assert "comparison fraud/2 vs fraud/1" in text and "drift fraud/1" in text
    json.dumps(data)  # --json: plain values only


def test_band_confusion_when_a_card_declares_bands(
    fraud: tuple[LoadedModel, LoadedModel],
    events: list[dict[str, Any]],
    reader_schema_json: dict[str, Any],
    tmp_path: Path,
) -> None:
    """fraud/2 with approve < 0.4 <= review < 0.8 <= decline against plain fraud/1: per-band
    rates, and a band-vs-band confusion that adds up to the compared events."""
    folder = tmp_path / "fraud" / "2"
    shutil.copytree(REPO / "models/fraud/2", folder)
    card = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    del card["threshold"]
    card["decision"] = {"bands": [
        {"name": "approve", "publish": False},
        {"name": "review", "from": 0.4, "publish": True},
        {"name": "decline", "from": 0.8, "publish": True},
    ]}  # fmt: skip
    (folder / "model.json").write_text(json.dumps(card), encoding="utf-8")
    banded = load_model(folder, reader_schema_json)
    settings = load_settings(None, {"schema": {"wire_format": "plain"}}, environ={})
    decoder = build_decoder(settings, reader_schema_json, None)
    parsed = fastavro.parse_schema(reader_schema_json)
    records = []
    for i, event in enumerate(events):
        body = io.BytesIO()
        fastavro.schemaless_writer(body, parsed, event)
        records.append(SourceRecord("t", 0, i, None, body.getvalue()))
    scorer = ReplayScorer(banded, fraud[1], DriftConfig(), "transaction_id")
    scorer.decode_and_score(decoder.decode, MessageBatch.from_records(records))
    data = scorer.finish("t", {}).data
    scores = np.array([r["score"] for r in score_events(events, banded, BATCH)])
    expected = {
        "approve": float((scores < 0.4).mean()),
        "review": float(((scores >= 0.4) & (scores < 0.8)).mean()),
        "decline": float((scores >= 0.8).mean()),
    }
    assert data["model"]["band_rates"] == pytest.approx(expected)
    confusion = data["comparison"]["band_confusion"]
    assert set(confusion) == {"approve", "review", "decline"}
    assert set(confusion["review"]) == {"PASS", "FLAG"}
    assert sum(n for row in confusion.values() for n in row.values()) == N_EVENTS
    assert sum(confusion["review"].values()) == round(expected["review"] * N_EVENTS)


def test_out_writes_score_file_avro(
    replayed: tuple[ReplayScorer, list[dict[str, Any]]], tmp_path: Path
) -> None:
    """--out x.avro: records in score-file's Avro schema, numbered in replay order."""
    _, results = replayed
    path = tmp_path / "out.avro"
    writer = _ResultWriter(path)
    writer.write([dict(r) for r in results])
    writer.close()
    with path.open("rb") as fh:
        read = [r for r in fastavro.reader(fh) if isinstance(r, dict)]
    assert [r["index"] for r in read] == list(range(len(results)))
    assert all(set(r) == {f["name"] for f in SCORE_SCHEMA["fields"]} for r in read)


def test_png_is_written(
    replayed: tuple[ReplayScorer, list[dict[str, Any]]], tmp_path: Path
) -> None:
    """--png writes a PNG of both score distributions."""
    scorer, _ = replayed
    path = tmp_path / "scores.png"
    write_png(path, scorer)
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_png_without_matplotlib_names_the_extra(
    replayed: tuple[ReplayScorer, list[dict[str, Any]]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No matplotlib: one clear error naming ``pip install 'stream-scorer[plot]'``."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'stream-scorer\[plot\]'"):
        write_png(tmp_path / "x.png", replayed[0])


def test_cli_refuses_mixed_ranges_and_missing_plot_extra_before_any_work(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bad flags exit 2 with one line, before any model is loaded or broker contacted."""
    code = main(["replay", "--model", "fraud/2", "--from", "3", "--since", "5"])
    assert code == 2
    assert "not both" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["replay", "--model", "fraud/2", "--png", "x.png"]) == 2
    assert PLOT_HINT in capsys.readouterr().err


def test_card_without_a_reference_has_no_drift(
    tmp_path: Path, fraud: tuple[LoadedModel, LoadedModel], reader_schema_json: dict[str, Any]
) -> None:
    """A card with no reference statistics: its drift is reported as None, not invented."""
    folder = tmp_path / "fraud" / "8"
    shutil.copytree(REPO / "models/fraud/2", folder)
    card = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    del card["reference"]
    card["version"] = "8"
    (folder / "model.json").write_text(json.dumps(card), encoding="utf-8")
    bare = load_model(folder, reader_schema_json)
    settings = load_settings(None, {"schema": {"wire_format": "plain"}}, environ={})
    decoder = build_decoder(settings, reader_schema_json, None)
    parsed = fastavro.parse_schema(reader_schema_json)
    generated, _ = TransactionGenerator(seed=3).generate(200)
    records = []
    for i, event in enumerate(generated):
        body = io.BytesIO()
        fastavro.schemaless_writer(body, parsed, event)
        records.append(SourceRecord("t", 0, i, None, body.getvalue()))
    scorer = ReplayScorer(bare, fraud[1], DriftConfig(), "transaction_id", top=5)
    scorer.decode_and_score(decoder.decode, MessageBatch.from_records(records))

    drift = scorer.finish("t", {}).data["drift"]

    assert drift["fraud/8"] is None
    assert drift["fraud/1"]["events"] == 200
