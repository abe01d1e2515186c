"""CI validates every shipped model: ``models validate --json`` passes for each version on disk.

The versions are discovered (every ``models/<name>/<version>/model.json``), not listed, so a new
one is validated the day it lands. Each is validated by the real console script, with the
config that serves its model (the defaults for fraud, ``examples/<name>.toml`` for the others:
that config's reader schema is the one the model must bind to), against the version that
config serves when that is another version: the champion of a fresh deployment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from stream_scorer.lifecycle.validate import quality_gates
from stream_scorer.model_card import ModelCard
from stream_scorer.settings import ENV_PREFIX, load_settings

REPO_ROOT = Path(__file__).resolve().parents[2]
MODELS = REPO_ROOT / "models"
VERSIONS = sorted(
    (p.parent.parent.name, p.parent.name) for p in MODELS.glob("*/*/model.json")
)  # fmt: skip


def _served() -> dict[str, tuple[Path | None, str]]:
    """Model name -> (config file, None for the defaults; the version it serves)."""
    configs: list[Path | None] = [None, *sorted((REPO_ROOT / "examples").glob("*.toml"))]
    served: dict[str, tuple[Path | None, str]] = {}
    for config in configs:
        path = load_settings(config, environ={}).model.path
        served.setdefault(path.parent.name, (config, path.name))
    return served


SERVED = _served()


def test_discovery_finds_the_shipped_versions() -> None:
    """The glob sees every model folder (fraud 1 and 2, churn, recommender, expected_loss)."""
    assert {"fraud/1", "fraud/2", "churn/1", "recommender/1", "expected_loss/1"} <= {
        f"{n}/{v}" for n, v in VERSIONS
    }


@pytest.mark.slow
@pytest.mark.parametrize(("name", "version"), VERSIONS, ids=[f"{n}/{v}" for n, v in VERSIONS])
def test_shipped_version_passes_every_gate(name: str, version: str, tmp_path: Path) -> None:
    """`stream-scorer models validate NAME/VERSION --json` exits 0 with no gate failed."""
    assert name in SERVED, f"no config serves models/{name}: add examples/{name}.toml"
    config, champion = SERVED[name]
    args = [str(Path(sys.executable).with_name("stream-scorer")), "models", "validate",
            f"{name}/{version}", "--json"]  # fmt: skip
    if config is not None:
        args += ["--config", str(config)]
    if champion != version:
        args += ["--against", f"{name}/{champion}"]
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(ENV_PREFIX)}
    env.update(
        {
            f"{ENV_PREFIX}LIFECYCLE__REPOSITORY": str(MODELS),
            # Results and history in a scratch folder, not the checkout's models/.lifecycle.
            f"{ENV_PREFIX}LIFECYCLE__STATE_DIR": str(tmp_path / "state"),
            # Timing is measured and shown, never asserted here: the shared CI machine is not
            # the serving one (bench/ holds the speed targets).
            f"{ENV_PREFIX}LIFECYCLE__BATCH_P99_BUDGET_MS": "60000",
        }
    )
    done = subprocess.run(  # the console script under test, fixed arguments
        args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    report: dict[str, Any] = json.loads(done.stdout)
    gates = {g["name"]: g for g in report["gates"]}
    assert report["passed"], json.dumps(report, indent=1)
    assert not [g for g in gates.values() if g["status"] == "FAIL"]
    # The quality gates of the card's output type were checked, not skipped for want of data.
    card = ModelCard.load(MODELS / name / version)
    for metric in quality_gates(card):
        assert gates[metric]["status"] == "PASS", gates[metric]
    assert report["against"] == (None if champion == version else f"{name}/{champion}")
