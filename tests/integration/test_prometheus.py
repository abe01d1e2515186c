"""A real Prometheus (Debian's binary) scraping a real ``stream-scorer run`` on the real broker.

The test writes a Prometheus config to its temporary directory (1 s scrape and evaluation,
``deploy/prometheus/rules.yml``, the scorer as job ``stream-scorer``), starts ``prometheus`` on a
free loopback port with temporary storage, streams events (a few undecodable) into the scorer
and then asks Prometheus' HTTP API: the target is up, every rule loads and evaluates healthy,
the recording rules see the group's partitions, and every Grafana panel's query returns data.
The scorer runs as the dashboard expects in production: small drift windows (so the drift
gauges exist within the test), fraud/2 as a shadow of fraud/1 (the comparison gauges) and the
promotion watcher on (the promotion counters; at the end a promotion of a broken version must
fire the refused-model alert).
"""

from __future__ import annotations

import json
import math
import shutil
import socket
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from stream_scorer.devtools.generate import TransactionGenerator
from stream_scorer.lifecycle import ModelRepository, promote

from .helpers import REPO, produce_values, wait_until
from .scorer_process import PacedProducer, ScorerProcess, base_config, encode_events

RULES = REPO / "deploy" / "prometheus" / "rules.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "stream-scorer.json"
#: Grafana's interval variables, replaced by a window that covers the stream's duration.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}
#: Scrape and rule evaluation interval of the test's Prometheus.
INTERVAL = "1s"
#: Events streamed, and their rate: about 40 s of traffic, longer than the checks take.
EVENTS = 40_000
RATE = 1_000
#: Every this many events one is truncated, so the decode dead-letter series moves.
CORRUPT_EVERY = 500
#: Share of keys the canary (fraud/1's own graph as version 9) decides.
CANARY_FRACTION = 0.2
#: Alerts that must not be pending while one healthy scorer works through a small stream
#: (0.2 % of it undecodable, under the dead-letter alert's 1 %).
QUIET_WHEN_HEALTHY = (
    "StreamScorerNoProgress",
    "StreamScorerDeadLetterRate",
    "StreamScorerBatchErrors",
    "StreamScorerRestarting",
    "StreamScorerNotReady",
    "StreamScorerNoModel",
    # The watcher follows an alias nobody moves: nothing is refused.
    "StreamScorerModelRefused",
    # The stream comes from the generator the model's reference was drawn from: windows of
    # DRIFT_WINDOW events stay under the alarm PSI.
    "StreamScorerDriftOverThreshold",
    "StreamScorerInstanceDown",
    "StreamScorerPartitionsUnowned",
    "StreamScorerAbsent",
)
#: Alerts that a loaded machine may rightly raise during the test.
LOAD_DEPENDENT = ("StreamScorerLagGrowing", "StreamScorerLatencyOverSLO")
#: Events per drift window: several windows close during the stream, each large enough for
#: its PSI to be stable (a window of a few hundred events is noise, and would alarm).
DRIFT_WINDOW = 5_000
#: Deadline for Prometheus to start, and for each condition asked of it.
START_TIMEOUT_S = 60.0
CONDITION_TIMEOUT_S = 60.0

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrometheusServer:
    """One ``prometheus`` process with its own config and storage under ``workdir``."""

    def __init__(self, binary: str, workdir: Path, scrape_target: str) -> None:
        """Write the config and start the server on a free port."""
        config = {
            "global": {"scrape_interval": INTERVAL, "evaluation_interval": INTERVAL},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {
                    "job_name": "stream-scorer",
                    "scrape_timeout": INTERVAL,
                    "static_configs": [{"targets": [scrape_target]}],
                }
            ],
        }
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "prometheus.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def tail(self, lines: int = 20) -> str:
        """The last lines of the server's log, for failure messages."""
        text = self.log_path.read_bytes().decode(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def ready(self) -> bool:
        """``/-/ready`` answers 200; fails at once if the process has exited."""
        assert self.proc.poll() is None, f"prometheus exited:\n{self.tail()}"
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:  # noqa: S310 - a loopback URL the test built
                return int(response.status) == 200
        except (urllib.error.URLError, OSError):
            return False

    def api(self, path: str, **params: str) -> Any:
        """The ``data`` of a successful API answer."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as response:  # noqa: S310 - a loopback URL the test built
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant vector of ``expr`` now."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data["resultType"])
        result: list[dict[str, Any]] = data["result"]
        return result

    def close(self) -> None:
        """Stop the server."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self._log.close()


@pytest.fixture
def prometheus_binary() -> str:
    """Debian's prometheus; fails with the install command when it is missing."""
    path = shutil.which("prometheus")
    assert path is not None, (
        "prometheus is not installed: `apt-get install -y prometheus` (Debian), or `make test`"
    )
    return path


def _model_repository(tmp_path: Path) -> Path:
    """fraud/1 (the version served), fraud/1's files as canary version 9, and a fraud/3 whose
    ONNX file no longer matches its card, for the refused-promotion check; created once per
    test."""
    repo = tmp_path / "models"
    if not repo.exists():
        shutil.copytree(REPO / "models" / "fraud" / "1", repo / "fraud" / "1")
        shutil.copytree(REPO / "models" / "fraud" / "1", repo / "fraud" / "9")
        card_file = repo / "fraud" / "9" / "model.json"
        card = json.loads(card_file.read_text(encoding="utf-8"))
        card["version"] = "9"  # the champion's own graph: no rollback rule can fire on it
        card_file.write_text(json.dumps(card), encoding="utf-8")
        shutil.copytree(REPO / "models" / "fraud" / "2", repo / "fraud" / "3")
        onnx = repo / "fraud" / "3" / "model.onnx"
        onnx.write_bytes(onnx.read_bytes()[:-10])
    return repo


@pytest.fixture
def labels_topic(make_topic: Any) -> str:
    """The labels topic the scorer joins (event id -> is_fraud)."""
    topic: str = make_topic("labels", partitions=2)
    return topic


@pytest.fixture
def scorer(
    kafka_bootstrap: str, topics: dict[str, str], labels_topic: str, tmp_path: Path
) -> Iterator[ScorerProcess]:
    """A running scorer on the test's topics, assigned its partitions, with drift windows,
    a shadow, a canary, a labels topic and the promotion watcher, so every dashboard series
    exists."""
    repository = _model_repository(tmp_path)
    config = base_config(
        kafka_bootstrap,
        topics,
        labels={"topic": labels_topic, "offset_reset": "earliest"},
        monitoring={
            "window_events": DRIFT_WINDOW,
            "min_window_events": DRIFT_WINDOW // 5,
            # Every batch counted: the windows of the champion, the canary and the shadow must
            # close within the test on a loaded machine (the cost cap would skip batches).
            "drift_max_share": 1.0,
            "shadows": [str(REPO / "models" / "fraud" / "2")],
            "canary": str(repository / "fraud" / "9"),
            "canary_fraction": CANARY_FRACTION,
            # A shadow over budget is dropped (and its gauges with it); a loaded 2-core
            # machine must not turn the shadow panel empty, so the budget is generous.
            "shadow_max_ratio": 1000.0,
            "shadow_min_budget_ms": 10_000.0,
        },
        lifecycle={
            "watch": "file",
            "repository": str(repository),
            "state_dir": str(tmp_path / "lifecycle"),
        },
    )
    process = ScorerProcess(tmp_path, config)
    try:
        process.wait_assigned()
        yield process
    finally:
        process.close()


def _dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every dashboard target, Grafana's variables replaced."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    queries = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            queries.append((panel["title"], expr))
    return queries


def _has_number(result: list[dict[str, Any]]) -> bool:
    """At least one sample whose value is a number (histogram_quantile of no events is NaN)."""
    return any(not math.isnan(float(sample["value"][1])) for sample in result)


def test_prometheus_scrapes_the_scorer_loads_every_rule_and_answers_every_panel(
    prometheus_binary: str,
    scorer: ScorerProcess,
    kafka_bootstrap: str,
    topics: dict[str, str],
    labels_topic: str,
    tmp_path: Path,
) -> None:
    """Debian's Prometheus scrapes a live scorer: target up, every rule of rules.yml healthy,
    partition recording rules count the topic's 4 partitions, every dashboard query has data,
    state alerts stay quiet, and a refused promotion fires StreamScorerModelRefused."""
    events, frauds = TransactionGenerator(seed=13).generate(EVENTS)
    # Every event's label first (held until its event is scored), as a label feed would.
    produce_values(
        kafka_bootstrap,
        labels_topic,
        [
            (e["transaction_id"].encode(), json.dumps({"event_id": e["transaction_id"],
                                                       "outcome": bool(f)}).encode())
            for e, f in zip(events, frauds, strict=True)
        ],
    )  # fmt: skip
    messages = encode_events(events)
    messages = [
        (key, value[:3] if i % CORRUPT_EVERY == 0 else value)
        for i, (key, value) in enumerate(messages)
    ]
    producer = PacedProducer(kafka_bootstrap, topics["input"], messages, RATE)
    target = scorer.metrics_url().removeprefix("http://")
    workdir = tmp_path / "prometheus"
    workdir.mkdir()
    server = PrometheusServer(prometheus_binary, workdir, target)
    try:
        wait_until(server.ready, START_TIMEOUT_S, "prometheus to be ready")

        def target_up() -> bool:
            active = server.api("targets")["activeTargets"]
            return [t["health"] for t in active] == ["up"]

        wait_until(target_up, CONDITION_TIMEOUT_S, f"the scorer at {target} to be scraped up")

        expected = [
            rule.get("record") or rule.get("alert")
            for group in yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
            for rule in group["rules"]
        ]

        def rules_healthy() -> bool:
            loaded = [r for g in server.api("rules")["groups"] for r in g["rules"]]
            errors = [(r["name"], r.get("lastError")) for r in loaded if r["health"] == "err"]
            assert not errors, f"rules failed to evaluate: {errors}"
            return [r["name"] for r in loaded] == expected and all(
                r["health"] == "ok" for r in loaded
            )

        wait_until(rules_healthy, CONDITION_TIMEOUT_S, "every rule to load and evaluate")
        alerts = {name for name in expected if name.startswith("StreamScorer")}
        assert alerts == {*QUIET_WHEN_HEALTHY, *LOAD_DEPENDENT}, "classify every alert above"

        # The partition-coverage alert rests on these: all 4 partitions owned and seen.
        def partitions_counted() -> bool:
            owned = server.query("stream_scorer:partitions_owned:count")
            seen = server.query("stream_scorer:partitions_seen_30m:count")
            return [float(s["value"][1]) for s in owned + seen] == [4.0, 4.0]

        wait_until(partitions_counted, CONDITION_TIMEOUT_S, "4 partitions owned and seen")

        def decode_dead_letters() -> bool:
            result = server.query('stream_scorer:records_dead_lettered:rate5m{stage="decode"} > 0')
            return bool(result)

        wait_until(decode_dead_letters, CONDITION_TIMEOUT_S, "decode dead letters to be counted")

        # The panel check can fail: a series nobody exports, or a quantile of nothing, is no data.
        assert not _has_number(server.query("stream_scorer_no_such_metric_total"))
        assert not _has_number(
            server.query(
                'histogram_quantile(0.5, rate(stream_scorer_batch_size_bucket{le="x"}[1m]))'
            )
        )
        missing: list[str] = []
        for title, expr in _dashboard_queries():
            try:
                wait_until(
                    lambda expr=expr: _has_number(server.query(expr)),
                    CONDITION_TIMEOUT_S,
                    f"panel {title!r}: {expr}",
                )
            except AssertionError:
                missing.append(f"{title}: {expr}")
        assert not missing, "panel queries without data:\n" + "\n".join(missing)

        # Alerts about state must stay quiet on a healthy scorer. Lag growth and latency are
        # left out: on a loaded 2-core machine they are true, and the alerts rightly go pending.
        quiet = "|".join(QUIET_WHEN_HEALTHY)
        firing = server.query(f'ALERTS{{alertname=~"{quiet}"}}')
        assert not firing, f"alerts pending or firing on a healthy scorer: {firing}"

        # A promotion the scorer refuses (the card's sha256 no longer matches) fires the
        # refused-model alert from the real counter, with the labels its runbook names.
        promote(
            ModelRepository(_model_repository(tmp_path), tmp_path / "lifecycle"),
            "fraud", "3", force=True, reason="test: a broken version",
        )  # fmt: skip

        def refused_alert_fires() -> bool:
            result = server.query(
                'ALERTS{alertname="StreamScorerModelRefused", alertstate="firing"}'
            )
            return [(s["metric"]["model_name"], s["metric"]["instance"]) for s in result] == [
                ("fraud", target)
            ]

        wait_until(refused_alert_fires, CONDITION_TIMEOUT_S, "StreamScorerModelRefused to fire")
        assert producer.error is None, producer.error
    finally:
        server.close()
        producer.join()
