"""The Kubernetes manifests in deploy/kubernetes/: valid objects that fit together.

Core kinds are validated with ``kubernetes-validate`` (the Kubernetes OpenAPI schemas, offline,
strict: unknown fields fail). The KEDA and Prometheus Operator objects are validated with
``jsonschema`` against the ``openAPIV3Schema`` of their published CRDs, vendored in
``tests/data/crds/`` (README there names the release and file), also rejecting undeclared fields.
The rest checks what no schema can: the probes hit the scorer's endpoints, the pod runs as
non-root on a read-only root filesystem, secrets arrive through files or secret references,
the group and topic KEDA watches are the scorer's, and the replica ceiling is the partition count.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from stream_scorer.settings import ENV_PREFIX, load_settings
from tests.unit.test_deploy import _settings_key

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S = REPO_ROOT / "deploy" / "kubernetes"
CRDS = REPO_ROOT / "tests" / "data" / "crds"
RULES = REPO_ROOT / "deploy" / "prometheus" / "rules.yml"
#: Kubernetes version the core objects are validated against (kubernetes-validate's newest).
KUBERNETES_VERSION = "1.37.0"
#: Kinds kubernetes-validate knows; everything else needs a vendored CRD schema.
CORE_KINDS = {"ConfigMap", "Deployment", "PodDisruptionBudget", "Secret", "Service"}
#: (apiVersion, kind) → vendored CRD schema file.
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_scaledobjects.v1alpha1.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda.sh_triggerauthentications.v1alpha1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_servicemonitors.v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com_prometheusrules.v1.json",
}
#: The Secret's example, which kustomization.yaml deliberately does not apply.
SECRET_EXAMPLE = "secret.example.yaml"  # noqa: S105 - a file name, not a password


def _documents() -> dict[str, dict[str, Any]]:
    """Every object in deploy/kubernetes/*.yaml by kind (one object of each kind)."""
    objects: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if document is None:
                continue
            kind = document["kind"]
            assert kind not in objects, f"two {kind} objects; the tests expect one"
            document["__file__"] = path.name
            objects[kind] = document
    return objects


@pytest.fixture(scope="module")
def objects() -> dict[str, dict[str, Any]]:
    """The manifests' objects by kind."""
    return _documents()


def _strip(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != "__file__"}


def _strict(schema: Any) -> Any:
    """``schema`` with undeclared properties refused wherever properties are declared and the
    schema neither allows extra ones nor preserves unknown fields (as the API server prunes)."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def _crd_validator(api_version: str, kind: str) -> jsonschema.Draft7Validator:
    vendored = json.loads((CRDS / CRD_SCHEMAS[api_version, kind]).read_text(encoding="utf-8"))
    assert f"{vendored['group']}/{vendored['version']}" == api_version
    assert vendored["kind"] == kind
    schema = _strict(vendored["schema"])
    # The CRD schema types metadata as a bare object; ObjectMeta's own rules are Kubernetes'.
    schema["properties"]["metadata"] = {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        },
        "additionalProperties": False,
    }
    return jsonschema.Draft7Validator(schema)


def _container(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    containers = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def _pod_labels(objects: dict[str, dict[str, Any]]) -> dict[str, str]:
    labels: dict[str, str] = objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
    return labels


def _scorer_toml(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return tomllib.loads(objects["ConfigMap"]["data"]["scorer.toml"])


def _config_file(objects: dict[str, dict[str, Any]]) -> str:
    """Path of scorer.toml inside the container, from the ConfigMap's volume mount."""
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if "configMap" in v)
    assert volume["configMap"]["name"] == objects["ConfigMap"]["metadata"]["name"]
    mount = next(m for m in _container(objects)["volumeMounts"] if m["name"] == volume["name"])
    assert mount.get("readOnly") is True
    return f"{mount['mountPath']}/scorer.toml"


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("kind", sorted(CORE_KINDS))
def test_core_objects_are_valid_kubernetes(objects: dict[str, dict[str, Any]], kind: str) -> None:
    """kubernetes-validate (strict) accepts each core object for Kubernetes 1.37."""
    obj = _strip(objects[kind])
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{objects[kind]['__file__']}: {exc}")


@pytest.mark.parametrize(("api_version", "kind"), sorted(CRD_SCHEMAS))
def test_custom_resources_match_their_crd_schema(
    objects: dict[str, dict[str, Any]], api_version: str, kind: str
) -> None:
    """Each KEDA and Prometheus Operator object validates against its vendored CRD schema."""
    obj = _strip(objects[kind])
    assert obj["apiVersion"] == api_version
    errors = sorted(_crd_validator(api_version, kind).iter_errors(obj), key=str)
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_crd_validation_rejects_unknown_and_mistyped_fields(
    objects: dict[str, dict[str, Any]],
) -> None:
    """The CRD check can fail: a misspelt field and a string replica count are both refused."""
    validator = _crd_validator("keda.sh/v1alpha1", "ScaledObject")
    misspelt = copy.deepcopy(_strip(objects["ScaledObject"]))
    misspelt["spec"]["maxReplicas"] = misspelt["spec"].pop("maxReplicaCount")
    assert any("maxReplicas" in e.message for e in validator.iter_errors(misspelt))
    mistyped = copy.deepcopy(_strip(objects["ScaledObject"]))
    mistyped["spec"]["maxReplicaCount"] = "6"
    assert list(validator.iter_errors(mistyped))


def test_core_validation_rejects_unknown_fields(objects: dict[str, dict[str, Any]]) -> None:
    """kubernetes-validate in strict mode refuses a field the Deployment schema lacks."""
    broken = copy.deepcopy(_strip(objects["Deployment"]))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    """kustomization.yaml applies every manifest except the placeholder Secret."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", SECRET_EXAMPLE}
    assert set(kustomization["resources"]) == files


def test_probes_resources_and_security(objects: dict[str, dict[str, Any]]) -> None:
    """Liveness on /healthz and readiness on /readyz at the metrics port; requests and limits;
    non-root, no privilege escalation, no capabilities, read-only root filesystem."""
    container = _container(objects)
    settings = _scorer_toml(objects)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == settings["metrics"]["port"]
    assert settings["metrics"]["host"] == "0.0.0.0"  # noqa: S104 - probes come from the kubelet
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), kind

    pod = objects["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    grace = pod["terminationGracePeriodSeconds"]
    assert settings["delivery"]["flush_timeout_s"] < grace, "SIGKILL would cut the final flush"


def test_container_runs_the_mounted_config(objects: dict[str, dict[str, Any]]) -> None:
    """The container runs `stream-scorer run --config` on the ConfigMap's scorer.toml."""
    assert _container(objects)["args"] == ["run", "--config", _config_file(objects)]


def test_static_membership_from_the_pod_name(objects: dict[str, dict[str, Any]]) -> None:
    """STREAM_SCORER_KAFKA__GROUP_INSTANCE_ID comes from the pod's name (downward API)."""
    env = {e["name"]: e for e in _container(objects)["env"]}
    instance = env[f"{ENV_PREFIX}KAFKA__GROUP_INSTANCE_ID"]
    assert instance["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_secrets_come_from_the_secret(objects: dict[str, dict[str, Any]]) -> None:
    """The SASL password is a file from the Secret's volume, the registry password a secret
    reference; the ConfigMap holds no password, and every key used exists in the Secret."""
    secret = objects["Secret"]
    keys = set(secret["stringData"])
    name = secret["metadata"]["name"]
    settings = _scorer_toml(objects)
    assert "sasl_password" not in settings["kafka"]
    assert "registry_password" not in settings["schema"]

    pod = objects["Deployment"]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    password_file = Path(settings["kafka"]["sasl_password_file"])
    mount = next(
        m
        for m in _container(objects)["volumeMounts"]
        if password_file.parent == Path(m["mountPath"])
    )
    source = volumes[mount["name"]]["secret"]
    assert source["secretName"] == name
    assert {"key": "sasl-password", "path": password_file.name} in source["items"]

    env = {e["name"]: e for e in _container(objects)["env"]}
    ref = env[f"{ENV_PREFIX}SCHEMA__REGISTRY_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == name and ref["key"] in keys
    for item in source["items"]:
        assert item["key"] in keys

    auth = objects["TriggerAuthentication"]["spec"]["secretTargetRef"]
    for target in auth:
        assert target["name"] == name and target["key"] in keys, target


def test_configmap_loads_as_the_pod_would(
    objects: dict[str, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """scorer.toml with the Deployment's environment loads with load_settings; every
    STREAM_SCORER_* variable names a real setting."""
    config = tmp_path / "scorer.toml"
    config.write_text(objects["ConfigMap"]["data"]["scorer.toml"], encoding="utf-8")
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    for entry in _container(objects)["env"]:
        section, key = _settings_key(entry["name"])
        monkeypatch.setenv(entry["name"], f"value-of-{section}-{key}")
    settings = load_settings(config)
    assert settings.kafka.group_instance_id == "value-of-kafka-group_instance_id"
    assert settings.schema_.registry_password is not None
    assert settings.model.intra_op_threads == 1, "onnxruntime must not size itself by the node"


def test_selectors_line_up(objects: dict[str, dict[str, Any]]) -> None:
    """Deployment, Service, PodDisruptionBudget and ServiceMonitor select the same pods, and the
    Service is named `stream-scorer`, the job label the alert rules expect."""
    labels = _pod_labels(objects)
    deployment = objects["Deployment"]["spec"]
    assert deployment["selector"]["matchLabels"] == {
        k: labels[k] for k in deployment["selector"]["matchLabels"]
    }
    service = objects["Service"]
    assert service["metadata"]["name"] == "stream-scorer"
    assert _matches(service["spec"]["selector"], labels)
    assert _matches(objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"], labels)
    assert objects["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1
    monitor = objects["ServiceMonitor"]["spec"]
    assert _matches(monitor["selector"]["matchLabels"], service["metadata"]["labels"])
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    assert [e["port"] for e in monitor["endpoints"]] == ["metrics"]
    assert service_ports == {"metrics"}
    assert [e["path"] for e in monitor["endpoints"]] == ["/metrics"]


def test_keda_scales_the_scorers_group_up_to_the_partition_count(
    objects: dict[str, dict[str, Any]],
) -> None:
    """The ScaledObject scales the Deployment on the lag of the scorer's own group and input
    topic, with the partition count as maxReplicaCount and idle consumers not allowed; every
    kafka trigger parameter is one KEDA's kafka scaler reads."""
    scaled = objects["ScaledObject"]
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == objects["Deployment"]["metadata"]["name"]
    partitions = int(scaled["metadata"]["annotations"]["stream-scorer/input-partitions"])
    assert spec["maxReplicaCount"] == partitions
    assert 1 <= spec["minReplicaCount"] <= partitions
    assert "replicas" not in objects["Deployment"]["spec"], "KEDA owns the replica count"

    (trigger,) = spec["triggers"]
    assert trigger["type"] == "kafka"
    assert (
        trigger["authenticationRef"]["name"] == objects["TriggerAuthentication"]["metadata"]["name"]
    )
    metadata = trigger["metadata"]
    settings = _scorer_toml(objects)
    assert metadata["consumerGroup"] == settings["kafka"]["group_id"]
    assert metadata["topic"] == settings["topics"]["input"]
    assert metadata["bootstrapServers"] == settings["kafka"]["bootstrap_servers"]
    assert metadata["allowIdleConsumers"] == "false"
    assert int(metadata["lagThreshold"]) > 0

    params = json.loads((CRDS / "keda-kafka-scaler-params.json").read_text(encoding="utf-8"))
    unknown = set(metadata) - set(params["triggerMetadata"])
    assert not unknown, f"the kafka scaler reads no trigger metadata {sorted(unknown)}"
    for name, value in metadata.items():
        if name in params["enums"]:
            assert value in params["enums"][name], (name, value)
    auth = {t["parameter"] for t in objects["TriggerAuthentication"]["spec"]["secretTargetRef"]}
    assert auth <= set(params["authParams"]), sorted(auth - set(params["authParams"]))


def test_prometheusrule_is_rules_yml(objects: dict[str, dict[str, Any]]) -> None:
    """The PrometheusRule holds exactly the groups of deploy/prometheus/rules.yml, and the
    render script reproduces the committed file."""
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    assert objects["PrometheusRule"]["spec"]["groups"] == groups
    rendered = subprocess.run(
        [sys.executable, str(K8S / "render_prometheusrule.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    committed = (K8S / "prometheusrule.yaml").read_text(encoding="utf-8")
    assert rendered == committed, (
        "prometheusrule.yaml is stale: python deploy/kubernetes/render_prometheusrule.py "
        "> deploy/kubernetes/prometheusrule.yaml"
    )
