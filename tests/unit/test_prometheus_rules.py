"""The Prometheus rules: promtool accepts them and their unit tests pass; each has a runbook.

``promtool`` comes from Debian's ``prometheus`` package (``make venv`` and ``.ci/run`` install it
where it is missing). Its absence is a failure with the install command, never a skip.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from stream_scorer.app import load_schema
from stream_scorer.lifecycle import ModelRepository
from stream_scorer.lifecycle.watcher import PromotionWatcher
from stream_scorer.metrics import ScorerMetrics
from stream_scorer.model_set import LiveModels, ModelSet, load_model
from stream_scorer.monitoring.drift import DriftMetrics

REPO_ROOT = Path(__file__).resolve().parents[2]
RULES = REPO_ROOT / "deploy" / "prometheus" / "rules.yml"
RULES_TESTS = REPO_ROOT / "deploy" / "prometheus" / "rules.test.yml"
OPERATIONS = REPO_ROOT / "docs" / "operations.md"
#: A metric name in a PromQL expression (recorded series contain ':' and are not metrics).
_METRIC = re.compile(r"\b(stream_scorer_[a-z0-9_]+)\b")
#: Metrics the rules read that the Python process collector exports (default registry).
PROCESS_METRICS = {"process_start_time_seconds", "up"}


@pytest.fixture(scope="module")
def promtool() -> str:
    """Path of promtool; fails with the install command when it is missing."""
    path = shutil.which("promtool")
    assert path is not None, (
        "promtool is not installed: `apt-get install -y prometheus` (Debian), "
        "or `make promtool` (make test runs it)"
    )
    return path


def _rules() -> list[dict[str, Any]]:
    """Every rule of rules.yml, in order."""
    document = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


def _alerts() -> list[dict[str, Any]]:
    return [rule for rule in _rules() if "alert" in rule]


def _run(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=RULES.parent,
    )


def test_promtool_checks_the_rules(promtool: str) -> None:
    """`promtool check rules` accepts rules.yml."""
    result = _run(promtool, "check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_tests_pass(promtool: str) -> None:
    """`promtool test rules` passes every case of rules.test.yml."""
    result = _run(promtool, "test", "rules", RULES_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout, result.stdout


def test_a_broken_rule_test_fails(promtool: str, tmp_path: Path) -> None:
    """The harness can fail: an expected alert that the rules do not raise is reported."""
    (tmp_path / "rules.yml").write_text(RULES.read_text(encoding="utf-8"), encoding="utf-8")
    case = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {
                        "series": 'stream_scorer_ready{job="stream-scorer",instance="a"}',
                        "values": "1x10",
                    }
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "10m",
                        "alertname": "StreamScorerNotReady",
                        "exp_alerts": [{"exp_labels": {"severity": "critical", "instance": "a"}}],
                    }
                ],
            }
        ],
    }
    (tmp_path / "broken.test.yml").write_text(yaml.safe_dump(case), encoding="utf-8")
    result = subprocess.run(
        [promtool, "test", "rules", "broken.test.yml"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "StreamScorerNotReady" in result.stdout + result.stderr


def test_every_alert_is_tested_firing() -> None:
    """Each alert appears in rules.test.yml with at least one expected firing alert."""
    document = yaml.safe_load(RULES_TESTS.read_text(encoding="utf-8"))
    firing = {
        case["alertname"]
        for test in document["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    missing = [rule["alert"] for rule in _alerts() if rule["alert"] not in firing]
    assert not missing, f"alerts without a firing test case: {missing}"


def test_every_alert_has_a_runbook_entry() -> None:
    """Each alert's runbook_url points at a heading of docs/operations.md with the three parts."""
    text = OPERATIONS.read_text(encoding="utf-8")
    sections = re.split(r"^### ", text, flags=re.MULTILINE)
    by_heading = {section.split("\n", 1)[0].strip(): section for section in sections[1:]}
    for rule in _alerts():
        name = rule["alert"]
        assert rule["annotations"]["runbook_url"] == f"docs/operations.md#{name.lower()}", name
        assert name in by_heading, f"docs/operations.md has no '### {name}' runbook"
        body = by_heading[name]
        for part in ("**What it means.**", "**First checks.**", "**Fixes.**"):
            assert part in body, f"runbook {name} lacks {part}"


def test_every_alert_has_severity_and_summary() -> None:
    """Each alert carries a severity label (warning or critical) and a summary."""
    for rule in _alerts():
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


def test_rules_read_only_metrics_the_service_exports(tmp_path: Path) -> None:
    """Every stream_scorer_* metric a rule reads is one the service registers (ScorerMetrics,
    the drift monitor's and the promotion watcher's)."""
    registry = CollectorRegistry()
    # The promotion counter is the watcher's own: build one on the shipped model.
    reader = load_schema(REPO_ROOT / "schemas" / "transaction.avsc", "reader")
    live = LiveModels(ModelSet(load_model(REPO_ROOT / "models" / "fraud" / "1", reader, 1)))
    repo = ModelRepository(REPO_ROOT / "models", tmp_path / "state")
    PromotionWatcher(repo, "fraud", "champion", live, lambda _: live.current.champion, "t", 1.0,
                     registry)  # fmt: skip
    metrics = ScorerMetrics(registry)
    # Labelled metrics export samples only once a label set exists: create one of each.
    metrics.init_labels("tx", "fraud", "1")
    metrics.set_model("fraud", "1", "ab", "tensor")
    metrics.set_lag("tx", 0, 0)
    drift = DriftMetrics(registry)
    drift.psi.labels("fraud", "1", "amount").set(0)
    drift.threshold.labels("fraud", "1", "amount").set(0.25)
    exported = {sample.name for family in registry.collect() for sample in family.samples}
    read = {name for rule in _rules() for name in _METRIC.findall(rule["expr"])}
    unknown = sorted(read - exported - PROCESS_METRICS)
    assert not unknown, f"rules read metrics the service does not export: {unknown}"
