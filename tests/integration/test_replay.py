"""``stream-scorer replay`` as a real process on the real broker: equal to score-file, no commit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import fastavro
import pytest
from confluent_kafka import Consumer, TopicPartition

from stream_scorer.app import load_schema
from stream_scorer.devtools.devregistry import DevSchemaRegistry
from stream_scorer.devtools.generate import TransactionGenerator
from stream_scorer.devtools.loadgen import EventEncoder
from stream_scorer.lifecycle.repository import ModelRepository, promote
from stream_scorer.model_set import load_model
from stream_scorer.offline import score_file

from .conftest import MakeTopic
from .helpers import REPO, committed_offsets, produce_values, scorer_settings

READER = load_schema(REPO / "schemas/transaction.avsc", "reader")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: Events produced, and deliberately undecodable messages mixed in.
EVENTS, CORRUPT = 3000, 5


def _config(tmp_path: Path, bootstrap: str, registry_url: str, state: Path) -> Path:
    path = tmp_path / "replay.toml"
    path.write_text(
        f"""
[kafka]
bootstrap_servers = "{bootstrap}"
[schema]
wire_format = "confluent"
registry_url = "{registry_url}"
reader = "{REPO / "schemas/transaction.avsc"}"
[model]
path = "{REPO / "models/fraud/1"}"
[lifecycle]
repository = "{REPO / "models"}"
state_dir = "{state}"
[log]
level = "warning"
""",
        encoding="utf-8",
    )
    return path


def _replay(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stream_scorer", "replay", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _commit(bootstrap: str, group: str, topic: str, offsets: dict[int, int]) -> None:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        consumer.commit(
            offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()], asynchronous=False
        )
    finally:
        consumer.close()


@pytest.mark.slow
def test_replay_equals_score_file_and_leaves_the_group_alone(
    kafka_bootstrap: str, make_topic: MakeTopic, tmp_path: Path
) -> None:
    """Replay of fraud/2 against fraud@champion over a 3-partition topic: per-event results
    equal score-file's on the same events, undecodable messages counted, the group's committed
    offsets unchanged, --json parses and --png is a PNG."""
    topic = make_topic("replay", partitions=3)
    events, _ = TransactionGenerator(seed=515).generate(EVENTS)
    with DevSchemaRegistry() as registry:
        settings = scorer_settings(
            kafka_bootstrap, {"input": topic, "alerts": "unused", "dead_letter": "unused-dl"},
            registry.url,
        )  # fmt: skip
        encoder = EventEncoder(settings)
        messages: list[tuple[bytes | None, bytes | None]] = [
            (e["card_id"].encode(), encoder.encode(e)) for e in events
        ]
        messages += [(b"bad", b"\x07not avro at all")] * CORRUPT
        produce_values(kafka_bootstrap, topic, messages)
        group = settings.kafka.group_id
        _commit(kafka_bootstrap, group, topic, {0: 7, 1: 3})
        before = committed_offsets(kafka_bootstrap, group, topic)

        state = tmp_path / "state"
        promote(ModelRepository(REPO / "models", state), "fraud", "1", "champion", force=True)
        config = _config(tmp_path, kafka_bootstrap, registry.url, state)
        out, png = tmp_path / "replay.jsonl", tmp_path / "scores.png"
        done = _replay(config, "--topic", topic, "--model", "fraud/2",
                       "--against", "fraud@champion", "--json", "--png", str(png),
                       "--out", str(out))  # fmt: skip
        assert done.returncode == 0, done.stderr
        report: dict[str, Any] = json.loads(done.stdout)

        part = _replay(config, "--topic", topic, "--from", "0:5", "--to", "0:25",
                       "--model", "fraud/2", "--json")  # fmt: skip
        assert part.returncode == 0, part.stderr
        assert json.loads(part.stdout)["events"] == 20
        assert json.loads(part.stdout)["range"] == {"0": {"from": 5, "to": 25}}

    container = tmp_path / "events.avro"
    with container.open("wb") as fh:
        fastavro.writer(fh, fastavro.parse_schema(READER), events)
    offline_path = tmp_path / "offline.jsonl"
    score_file(container, load_model(REPO / "models/fraud/2", READER), 500, offline_path)
    offline = {r["event_id"]: r for r in map(json.loads, offline_path.read_text().splitlines())}
    replayed = [json.loads(line) for line in out.read_text().splitlines()]
    undecodable = [r for r in replayed if r["event_id"] is None]
    by_id = {r["event_id"]: r for r in replayed if r["event_id"] is not None}
    assert len(undecodable) == CORRUPT and all(r["error"] for r in undecodable)
    assert set(by_id) == set(offline)
    for event_id, mine in by_id.items():
        theirs = offline[event_id]
        # Equal up to float32 summation order (onnxruntime splits other batches differently).
        assert mine["score"] == pytest.approx(theirs["score"], abs=1e-6)
        keys = ("flagged", "band", "threshold", "model_name", "model_version", "error")
        assert {k: mine[k] for k in keys} == {k: theirs[k] for k in keys}
    assert sorted(r["index"] for r in replayed) == list(range(EVENTS + CORRUPT))

    assert committed_offsets(kafka_bootstrap, group, topic) == before
    assert before[0] == 7 and before[1] == 3

    assert report["events"] == EVENTS + CORRUPT
    assert report["dead_letters"]["decode"] == CORRUPT
    assert report["model"]["model"] == "fraud/2" and report["against"]["model"] == "fraud/1"
    flagged = sum(r["flagged"] for r in offline.values())
    assert report["model"]["flagged"] == flagged
    comparison = report["comparison"]
    assert comparison["events"] == EVENTS
    assert sum(comparison["confusion"].values()) == EVENTS
    # Both shipped cards carry a reference: each judged against its own.
    assert report["drift"]["fraud/1"]["events"] == EVENTS
    assert report["drift"]["fraud/2"]["events"] == EVENTS
    assert png.read_bytes().startswith(PNG_MAGIC)
