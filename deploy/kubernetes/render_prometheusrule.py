"""Print deploy/prometheus/rules.yml as a Prometheus Operator ``PrometheusRule``.

One source of rules for compose and Kubernetes: ``prometheusrule.yaml`` is this script's output
(``python deploy/kubernetes/render_prometheusrule.py > deploy/kubernetes/prometheusrule.yaml``)
and ``tests/unit/test_k8s.py`` fails when the two differ.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

__all__ = ["render"]

RULES = Path(__file__).resolve().parents[1] / "prometheus" / "rules.yml"
HEADER = (
    "# Generated from deploy/prometheus/rules.yml by deploy/kubernetes/render_prometheusrule.py;\n"
    "# edit rules.yml (its comments explain each rule) and regenerate.\n"
)


def render(rules_text: str) -> dict[str, Any]:
    """The PrometheusRule object holding the rule groups of ``rules_text``."""
    groups = yaml.safe_load(rules_text)["groups"]
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "stream-scorer",
            "labels": {
                "app.kubernetes.io/name": "stream-scorer",
                "app.kubernetes.io/component": "scorer",
            },
        },
        "spec": {"groups": groups},
    }


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (long PromQL) as literal blocks, readable in the output."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def main() -> None:
    """Write the PrometheusRule YAML to stdout."""
    rule = render(RULES.read_text(encoding="utf-8"))
    body = yaml.dump(rule, Dumper=_Dumper, sort_keys=False, width=100)
    sys.stdout.write(HEADER + body)


if __name__ == "__main__":
    main()
