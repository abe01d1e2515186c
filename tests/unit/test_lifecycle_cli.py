"""``stream-scorer models ...``: output, exit codes and what each command records."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from stream_scorer import cli
from stream_scorer.logging import configure_logging
from stream_scorer.settings import ENV_PREFIX

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config whose repository holds copies of fraud/1 and fraud/2; no env overrides."""
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)

    def uncached(level: str = "info", fmt: Any = "auto", cache: bool = True) -> None:
        del cache
        configure_logging(level, fmt, cache=False)

    monkeypatch.setattr(cli, "configure_logging", uncached)
    for version in ("1", "2"):
        shutil.copytree(REPO_ROOT / "models/fraud" / version, tmp_path / "models/fraud" / version)
    path = tmp_path / "config.toml"
    path.write_text(
        f"""
[schema]
reader = "{REPO_ROOT / "schemas/transaction.avsc"}"
alert = "{REPO_ROOT / "schemas/alert.avsc"}"
wire_format = "plain"

[model]
path = "{tmp_path / "models/fraud/1"}"

[log]
level = "error"

[lifecycle]
repository = "{tmp_path / "models"}"
state_dir = "{tmp_path / "state"}"
validation_events = 4000
batch_p99_budget_ms = 60000
""",
        encoding="utf-8",
    )
    return path


def models(config: Path, *args: str) -> int:
    """Run ``stream-scorer models ARGS --config CONFIG``."""
    return cli.main(["models", *args, "--config", str(config)])


def test_list_shows_versions_aliases_and_status(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`models list` prints one row per version with its aliases and validation status."""
    assert models(config, "promote", "fraud/1", "--force") == 0
    capsys.readouterr()
    assert models(config, "list") == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert rows[0][:4] == ["model", "version", "aliases", "validation"]
    assert rows[1][:5] == ["fraud", "1", "champion", "not", "validated"]
    assert rows[2][:3] == ["fraud", "2", "-"]


def test_validate_records_and_unlocks_promotion(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A refused promotion exits 2; after a passing `validate` the same promotion works."""
    assert models(config, "promote", "fraud/1", "--force") == 0
    assert models(config, "promote", "fraud/2") == 2
    assert "validation status is not validated" in capsys.readouterr().err
    assert models(config, "validate", "fraud/2", "--against", "fraud@champion", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] is True
    assert report["against"] == "fraud/1"
    assert {g["name"] for g in report["gates"]} >= {"golden set", "alert rate", "batch p99"}
    assert models(config, "promote", "fraud/2", "--reason", "more trees") == 0
    assert "fraud@champion -> 2 (was 1)" in capsys.readouterr().out
    assert models(config, "show", "fraud@champion") == 0
    out = capsys.readouterr().out
    assert out.startswith("fraud/2")
    assert "validation: passed" in out


def test_failing_validation_exits_1_and_stays_unpromotable(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A version failing a gate exits 1, prints the table, and is still refused promotion."""
    card_file = tmp_path / "models/fraud/2/model.json"
    card = json.loads(card_file.read_text())
    card["sha256"] = "f" * 64
    card_file.write_text(json.dumps(card))
    assert models(config, "validate", "fraud/2") == 1
    out = capsys.readouterr().out
    assert "FAILED" in out.splitlines()[0]
    assert any(line.startswith("hashes") and "FAIL" in line for line in out.splitlines())
    assert models(config, "promote", "fraud/2") == 2


def test_rollback_and_history(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """History lists validate, force, promote, refuse and rollback with who and why."""
    assert models(config, "promote", "fraud/1", "--force", "--reason", "bootstrap") == 0
    assert models(config, "promote", "fraud/2") == 2
    assert models(config, "promote", "fraud/2", "--force") == 0
    assert models(config, "rollback", "fraud", "--reason", "alerts doubled") == 0
    capsys.readouterr()
    assert models(config, "history", "fraud") == 0
    lines = capsys.readouterr().out.splitlines()
    actions = [line.split()[1] for line in lines]
    assert actions == ["force", "refuse", "force", "rollback"]
    assert "fraud/1 champion (was 2)" in lines[-1]
    assert lines[-1].endswith(": alerts doubled")
    assert models(config, "history", "fraud", "--json") == 0
    entries = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert entries[0]["reason"] == "bootstrap"


def test_rollback_without_earlier_version_exits_2(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rolling back an alias that was only ever promoted once is refused, clearly."""
    assert models(config, "promote", "fraud/1", "--force") == 0
    assert models(config, "rollback", "fraud") == 2
    assert "no earlier version" in capsys.readouterr().err


def test_card_renders_markdown_from_the_json(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`models card` renders the card's threshold, inputs, golden set and hash from model.json."""
    assert models(config, "card", "fraud/2") == 0
    text = capsys.readouterr().out
    card = json.loads((tmp_path / "models/fraud/2/model.json").read_text())
    assert text.startswith("# Model card: fraud v2")
    assert f"**{card['threshold']}**" in text
    assert "| `distance_from_home_km` | `distance_from_home_km` | float32 | nan |" in text
    assert "64 inputs with expected scores" in text
    assert card["sha256"] in text
    assert "## Ethical considerations\n\n- Country and home country are inputs" in text
    out = tmp_path / "card.md"
    assert models(config, "card", "fraud/2", "-o", str(out)) == 0
    assert out.read_text() == text


def test_unknown_version_exits_2(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Naming a version that does not exist is a clear error, exit 2."""
    assert models(config, "show", "fraud/7") == 2
    assert "fraud/7 not found" in capsys.readouterr().err


def test_shipped_card_view_is_the_rendered_card() -> None:
    """Each shipped fraud version's MODEL_CARD.md is exactly what `models card` renders from its
    model.json, slices by channel and country included."""
    from stream_scorer.lifecycle.card import render_card  # noqa: PLC0415
    from stream_scorer.model_card import ModelCard  # noqa: PLC0415

    for version in ("1", "2"):
        folder = REPO_ROOT / "models/fraud" / version
        text = render_card(ModelCard.load(folder))
        assert (folder / "MODEL_CARD.md").read_text() == text
        assert "### By channel" in text
        assert "### By country" in text
        assert "_Not stated in the card._" not in text


@pytest.mark.slow
def test_demo_promotes_live() -> None:
    """`demo --promote-after 2` swaps fraud/2 in while it streams, and shows the history."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    # Its own process: the demo registers its metrics in the global Prometheus registry.
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(ENV_PREFIX)}
    done = subprocess.run(  # the console script under test, fixed arguments
        [str(Path(sys.executable).with_name("stream-scorer")), "demo", "--duration", "10",
         "--promote-after", "2", "--rate", "500"],
        cwd=REPO_ROOT, env={**env, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True,
        text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    text = done.stdout
    assert "Promoted fraud/2 to champion" in text
    assert "history: applied fraud/2 by instance:" in text
    assert "model=fraud/2" in text.splitlines()[-2]
