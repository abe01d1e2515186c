"""``stream-scorer models compare``: the live comparison read from real prometheus-client
expositions of instances that scored with a shadow and a canary."""

from __future__ import annotations

import io
import json
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastavro
import pytest
from prometheus_client import CollectorRegistry, generate_latest, start_http_server

from stream_scorer import cli
from stream_scorer.consume import MessageBatch
from stream_scorer.decode import ColumnarAvroDecoder, Framing
from stream_scorer.devtools.generate import TransactionGenerator
from stream_scorer.encode import AlertEncoder, EventFields
from stream_scorer.model_set import LiveModels, ModelSet, load_model
from stream_scorer.monitoring.canary import in_canary
from stream_scorer.monitoring.canary_rollback import CanaryMetrics, CanaryRollback
from stream_scorer.monitoring.live_compare import combine, parse, run_compare
from stream_scorer.monitoring.monitor import Monitor
from stream_scorer.monitoring.shadow import ShadowBudget
from stream_scorer.pipeline import Pipeline, score_and_flag
from stream_scorer.records import SourceRecord

REPO_ROOT = Path(__file__).resolve().parents[2]
FRAUD_MODEL = REPO_ROOT / "models" / "fraud" / "1"
READER = json.loads((REPO_ROOT / "schemas" / "transaction.avsc").read_text(encoding="utf-8"))
ALERT = json.loads((REPO_ROOT / "schemas" / "alert.avsc").read_text(encoding="utf-8"))
FRACTION = 0.25


def _variant(tmp: Path, version: str, threshold: float) -> Path:
    folder = tmp / "fraud" / version
    folder.mkdir(parents=True)
    shutil.copy(FRAUD_MODEL / "model.onnx", folder / "model.onnx")
    card = json.loads((FRAUD_MODEL / "model.json").read_text(encoding="utf-8"))
    card.update(version=version, threshold=threshold)
    (folder / "model.json").write_text(json.dumps(card), encoding="utf-8")
    return folder


def _records(n: int, seed: int) -> list[SourceRecord]:
    events, _ = TransactionGenerator(seed=seed, fraud_rate=0.1).generate(n)
    parsed = fastavro.parse_schema(READER)
    out = []
    for i, event in enumerate(events):
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed, event)
        out.append(SourceRecord("in", 0, i, event["card_id"].encode(), buf.getvalue()))
    return out


def _instance(models: ModelSet, records: list[SourceRecord], slow_shadow: bool) -> Any:
    """A registry filled by the real pipeline and monitor scoring ``records``."""
    registry = CollectorRegistry()
    live = LiveModels(models)
    budget = ShadowBudget(max_ratio=1e-12, min_budget_ms=0, strikes=1) if slow_shadow else (
        ShadowBudget(max_ratio=1e6))  # fmt: skip
    monitor = Monitor(score_and_flag, registry, budget=budget, drift_enabled=False,
                      canary=CanaryRollback(live, None, CanaryMetrics(registry)))  # fmt: skip
    pipeline = Pipeline(
        ColumnarAvroDecoder(Framing(READER, "plain")), live,
        AlertEncoder(ALERT, b"", "t", EventFields("transaction_id", "event_time")),
        "alerts", "dlq", "t", monitor=monitor,
    )  # fmt: skip
    for start in range(0, len(records), 500):
        pipeline.process(MessageBatch.from_records(records[start : start + 500]))
    return registry, monitor


@pytest.fixture(scope="module")
def instances(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Any, Any, int, int]]:
    """Two instances: champion fraud/1, canary fraud/2 (threshold 0.3), shadow fraud/3
    (threshold 0.5); the second instance's shadow is dropped as slow after one batch."""
    root = tmp_path_factory.mktemp("models")
    champion = load_model(FRAUD_MODEL, READER)
    canary = load_model(_variant(root, "2", 0.3), READER)
    shadow = load_model(_variant(root, "3", 0.5), READER)
    models = ModelSet(champion, (shadow,), canary, FRACTION)
    out = []
    for seed, n, slow in ((5, 2000, False), (6, 1000, True)):
        records = _records(n, seed)
        registry, monitor = _instance(models, records, slow)
        to_canary = sum(in_canary(r.key, FRACTION) for r in records)
        out.append((registry, monitor, n, to_canary))
    return out


def test_parse_reads_every_pair_the_instance_exports(
    instances: list[tuple[Any, Any, int, int]],
) -> None:
    """Confusion counts, agreement, abs diff, correlation and alert rates per pair are the
    monitor's own; the canary pair is labelled canary with its key-hash share."""
    registry, monitor, n, to_canary = instances[0]
    view = parse("http://a:9100", generate_latest(registry).decode())
    by_pair = {(p.champion, p.challenger): p for p in view.pairs}
    assert set(by_pair) == {("fraud/1", "fraud/2"), ("fraud/1", "fraud/3")}
    for key, pair in by_pair.items():
        expected = monitor.comparisons.pairs[key].summary()
        assert pair.events == expected["events"] == n
        assert {k: int(v) for k, v in pair.confusion.items()} == expected["confusion"]
        assert pair.agreement == pytest.approx(expected["agreement"])
        assert pair.mean_abs_diff == pytest.approx(expected["mean_abs_score_diff"])
        assert pair.correlation == pytest.approx(expected["score_correlation"])
        rates = pair.alert_rates()
        assert rates[0] == pytest.approx(expected["alert_rate"]["champion"])
        assert rates[1] == pytest.approx(expected["alert_rate"]["challenger"])
    assert by_pair[("fraud/1", "fraud/2")].role == "canary"
    assert by_pair[("fraud/1", "fraud/3")].role == "shadow"
    (canary,) = view.canaries
    assert canary["decided"] == {"champion": n - to_canary, "canary": to_canary}
    assert canary["share"] == pytest.approx(to_canary / n)
    assert canary["fraction"] == FRACTION and canary["rollbacks"] == {}
    assert view.shadow_drops == []


def test_combined_pairs_sum_the_instances(instances: list[tuple[Any, Any, int, int]]) -> None:
    """Over two instances the confusion is summed, the agreement exact from it, the abs diff
    weighted by events, and no correlation is made up."""
    views = [parse(f"http://{i}", generate_latest(r).decode()) for i, (r, *_) in
             enumerate(instances)]  # fmt: skip
    combined = {(p.champion, p.challenger): p for p in combine(views)}
    canary = combined[("fraud/1", "fraud/2")]
    parts = [next(p for p in v.pairs if p.challenger == "fraud/2") for v in views]
    assert canary.events == sum(p.events for p in parts) == 3000
    for outcome in canary.confusion:
        assert canary.confusion[outcome] == sum(p.confusion[outcome] for p in parts)
    c = canary.confusion
    assert canary.agreement == pytest.approx((c["both"] + c["neither"]) / 3000)
    assert canary.correlation is None
    # The second instance's shadow was dropped after its first batch (500 events).
    shadow = combined[("fraud/1", "fraud/3")]
    assert shadow.events == 2000 + 500
    assert views[1].shadow_drops == [{"model": "fraud/3", "reason": "slow", "times": 1}]


@pytest.fixture
def served(instances: list[tuple[Any, Any, int, int]]) -> Iterator[list[str]]:
    """Both registries served over HTTP by prometheus-client, plus a port nobody listens on."""
    servers = []
    urls = []
    for registry, *_ in instances:
        server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
        servers.append((server, thread))
        urls.append(f"http://127.0.0.1:{server.server_port}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    yield [urls[0], urls[1] + "/metrics", f"http://127.0.0.1:{free}"]
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_models_compare_prints_the_table_and_json(
    served: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """``models compare --url`` (with or without /metrics, several times) prints each pair,
    the pairs over all instances, the canary share and the shadow drop, and names an
    instance that is down; ``--json`` carries the same figures."""
    assert cli.main(["models", "compare", *(a for u in served for a in ("--url", u))]) == 0
    table = capsys.readouterr().out
    assert table.count(" canary ") >= 3  # two instances and the combined row
    assert "all instances" in table
    assert "down:" in table
    assert "canary fraud/2 (champion fraud/1)" in table and "configured 25.00%" in table
    assert "shadow fraud/3" in table and "dropped (slow) 1 time(s)" in table
    out = io.StringIO()
    assert run_compare(served, True, out) == 0
    body = json.loads(out.getvalue())
    first, second, down = body["instances"]
    assert down["error"] and not down["pairs"]
    assert {p["role"] for p in first["pairs"]} == {"canary", "shadow"}
    assert sum(p["events"] for p in body["all_instances"]) == 3000 + 2500
    assert second["shadow_drops"][0]["reason"] == "slow"


def test_models_compare_fails_when_no_instance_answers(served: list[str]) -> None:
    """Every instance down: exit status 1, each with its reason."""
    out = io.StringIO()
    assert run_compare([served[2]], False, out) == 1
    assert "down:" in out.getvalue()
