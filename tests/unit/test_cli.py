"""The command line: exit codes and messages of `config check` and `score-file`."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastavro
import pytest

from stream_scorer import cli
from stream_scorer.devtools.generate import TransactionGenerator
from stream_scorer.logging import configure_logging
from stream_scorer.settings import ENV_PREFIX

REPO_ROOT = Path(__file__).resolve().parents[2]
FRAUD_MODEL = REPO_ROOT / "models" / "fraud" / "1"
UNBINDABLE_MODEL = REPO_ROOT / "tests" / "data" / "models" / "unbindable" / "1"
SCHEMAS = REPO_ROOT / "schemas"

WriteConfig = Callable[..., Path]


@pytest.fixture(autouse=True)
def _isolate(monkeypatch: pytest.MonkeyPatch) -> None:
    """No STREAM_SCORER_* from the shell; logging configured without caching loggers."""
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)

    def uncached(level: str = "info", fmt: Any = "auto", cache: bool = True) -> None:
        del cache  # cached loggers would outlive the test and escape capture_logs later
        configure_logging(level, fmt, cache=False)

    monkeypatch.setattr(cli, "configure_logging", uncached)


@pytest.fixture
def write_config(tmp_path: Path) -> WriteConfig:
    """``write_config(wire_format="plain", model=FRAUD_MODEL, extra="")`` → a TOML path."""

    def write(wire_format: str = "plain", model: Path = FRAUD_MODEL, extra: str = "") -> Path:
        path = tmp_path / "config.toml"
        path.write_text(
            f"""
[schema]
reader = "{SCHEMAS / "transaction.avsc"}"
alert = "{SCHEMAS / "alert.avsc"}"
wire_format = "{wire_format}"
registry_url = "http://127.0.0.1:9"

[model]
path = "{model}"

[log]
level = "error"
{extra}
""",
            encoding="utf-8",
        )
        return path

    return write


def test_config_check_passes_with_plain_wire_format(
    write_config: WriteConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    """`config check` on a valid plain-format config exits 0 and names model and bindings."""
    code = cli.main(["config", "check", "--config", str(write_config())])

    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith("ok: config valid; reader schema Transaction; model fraud/1 binds 10")
    assert "wire format plain" in out


def test_config_check_does_not_contact_the_registry(
    write_config: WriteConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    """`config check` with the confluent format passes with no registry listening."""
    code = cli.main(["config", "check", "--config", str(write_config("confluent"))])

    assert code == 0
    assert "wire format confluent" in capsys.readouterr().out


def test_check_alias(write_config: WriteConfig, capsys: pytest.CaptureFixture[str]) -> None:
    """The short `check` command does the same as `config check`."""
    assert cli.main(["check", "--config", str(write_config())]) == 0
    assert capsys.readouterr().out.startswith("ok: config valid")


def test_unknown_key_exits_2_naming_it(
    write_config: WriteConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown settings key exits 2 with a configuration error naming the key."""
    path = write_config(extra="[batch]\nmax_sise = 10\n")

    code = cli.main(["config", "check", "--config", str(path)])

    err = capsys.readouterr().err
    assert code == 2
    assert "stream-scorer: configuration error" in err
    assert "batch.max_sise" in err


def test_unbindable_model_exits_2_naming_the_input(
    write_config: WriteConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    """A model whose input the reader schema cannot feed exits 2 naming the input."""
    code = cli.main(["config", "check", "--config", str(write_config(model=UNBINDABLE_MODEL))])

    err = capsys.readouterr().err
    assert code == 2
    assert "input 'not_a_field'" in err


def test_missing_model_folder_exits_2(
    write_config: WriteConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A model path without a card exits 2 naming model.path."""
    code = cli.main(["config", "check", "--config", str(write_config(model=tmp_path / "none"))])

    assert code == 2
    assert "model.path" in capsys.readouterr().err


def test_unknown_environment_section_exits_2(
    write_config: WriteConfig, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A mistyped STREAM_SCORER_ variable exits 2 naming it."""
    monkeypatch.setenv("STREAM_SCORER_MODLE__PATH", "x")

    code = cli.main(["config", "check", "--config", str(write_config())])

    assert code == 2
    assert "STREAM_SCORER_MODLE__PATH" in capsys.readouterr().err


def test_score_file_command(
    write_config: WriteConfig,
    tmp_path: Path,
    reader_schema: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`score-file` writes one JSON line per event of the input container file."""
    events, _ = TransactionGenerator(seed=5).generate(20)
    source = tmp_path / "in.avro"
    with source.open("wb") as fh:
        fastavro.writer(fh, fastavro.parse_schema(reader_schema), events)
    output = tmp_path / "out.jsonl"

    code = cli.main(["score-file", "--config", str(write_config()), str(source), "-o", str(output)])

    lines = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert code == 0
    assert [r["event_id"] for r in lines] == [e["transaction_id"] for e in events]
    assert all(isinstance(r["score"], float) for r in lines)
    assert capsys.readouterr().err == ""  # log level error: the summary is not printed


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    """--version prints the version and exits 0."""
    with pytest.raises(SystemExit) as caught:
        cli.main(["--version"])

    assert caught.value.code == 0
    assert capsys.readouterr().out.startswith("stream-scorer ")


@pytest.mark.parametrize(
    ("extra", "model", "named"),
    [
        ('[batch]\nmax_size = "lots"\n', FRAUD_MODEL, "batch.max_size"),
        ('[kafka]\nbootstrap_server = "x:1"\n', FRAUD_MODEL, "kafka.bootstrap_server"),
        ("", UNBINDABLE_MODEL, "input 'not_a_field'"),
    ],
)
def test_run_refuses_to_start_before_touching_kafka(
    write_config: WriteConfig,
    capsys: pytest.CaptureFixture[str],
    extra: str,
    model: Path,
    named: str,
) -> None:
    """`run` with a wrong type, an unknown key or an unbindable model exits 2 naming it, before
    any Kafka client exists (the configured broker address is never dialled)."""
    path = write_config(model=model, extra=extra + "[metrics]\nenabled = false\n")

    code = cli.main(["run", "--config", str(path)])

    err = capsys.readouterr().err
    assert code == 2
    assert named in err
