"""The command line: exit codes, one-line errors, help texts, and secrets never printed."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fastavro
import pytest
from prometheus_client import REGISTRY

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


@pytest.fixture(autouse=True)
def _fresh_default_registry() -> Iterator[None]:
    """`run` in-process registers its metrics in the default registry: undo it per test."""
    before = set(REGISTRY._collector_to_names)  # no public listing of collectors
    yield
    for collector in set(REGISTRY._collector_to_names) - before:
        REGISTRY.unregister(collector)


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


def test_config_check_prints_no_info_log_lines_unless_asked(
    write_config: WriteConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    """`config check` keeps stderr free of the service's info lines; --log-level info shows them."""
    assert cli.main(["config", "check", "--config", str(write_config())]) == 0
    assert capsys.readouterr().err == ""

    assert (
        cli.main(["config", "check", "--config", str(write_config()), "--log-level", "info"]) == 0
    )
    assert "model_loaded" in capsys.readouterr().err


def test_config_check_does_not_contact_the_registry(
    write_config: WriteConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    """`config check` with the confluent format passes with no registry listening."""
    code = cli.main(["config", "check", "--config", str(write_config("confluent"))])

    assert code == 0
    assert "wire format confluent" in capsys.readouterr().out


def test_check_duplicate_is_gone(capsys: pytest.CaptureFixture[str]) -> None:
    """The undocumented `check` duplicate of `config check` is refused as a usage error."""
    with pytest.raises(SystemExit) as caught:
        cli.main(["check"])

    assert caught.value.code == 2
    assert "invalid choice: 'check'" in capsys.readouterr().err


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


def _actions(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:  # argparse offers no public walk over its options
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _actions(child, f"{path} {name}")
        else:
            yield path, action


def test_every_option_has_help_text() -> None:
    """Every option and argument of every command says what it does in --help."""
    missing = [
        f"{path} {action.dest}"
        for path, action in _actions(cli._parser(), "stream-scorer")
        if not action.help or action.help == argparse.SUPPRESS
    ]

    assert not missing, f"no help text: {missing}"
    helps = {(p, a.dest): a.help for p, a in _actions(cli._parser(), "stream-scorer")}
    assert "log.level" in str(helps["stream-scorer run", "log_level"])
    assert "fraudulent" in str(helps["stream-scorer produce", "fraud_rate"])
    assert "TOML" in str(helps["stream-scorer demo", "config"])


@pytest.mark.parametrize(
    "argv",
    [
        ["produce", "--rate", "-5"],
        ["produce", "--rate", "nan"],
        ["produce", "--count", "0"],
        ["produce", "--fraud-rate", "1.5"],
        ["produce", "--corrupt-rate", "-0.1"],
        ["demo", "--duration", "0"],
        ["demo", "--rate", "-1"],
        ["run", "--log-level", "loud"],
    ],
    ids=" ".join,
)
def test_bad_option_values_are_refused_in_one_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A value out of range is a usage error: exit 2, one line naming the option."""
    with pytest.raises(SystemExit) as caught:
        cli.main(argv)

    err = capsys.readouterr().err
    assert caught.value.code == 2
    assert err.count("\n") == 1
    assert f"argument {argv[1]}" in err


def test_score_file_on_a_missing_file_exits_2(
    write_config: WriteConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`score-file` on a file that does not exist: one line naming it, exit 2."""
    missing = tmp_path / "absent.avro"

    code = cli.main(["score-file", "--config", str(write_config()), str(missing)])

    err = capsys.readouterr().err
    assert code == 2
    assert err == f"stream-scorer: input error: score-file: cannot read {missing}: " + (
        "No such file or directory\n"
    )


def test_score_file_on_a_non_avro_file_exits_2(
    write_config: WriteConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`score-file` on a file that is not an Avro container: one line, exit 2."""
    text = tmp_path / "events.json"
    text.write_text('{"amount": 1}\n', encoding="utf-8")

    code = cli.main(["score-file", "--config", str(write_config()), str(text)])

    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1
    assert f"{text} is not an Avro object container file" in err


@pytest.mark.parametrize(
    ("output", "says"),
    [
        ("absent-folder/out.jsonl", "does not exist"),
        ("out.csv", "unknown format .csv"),
        ("out", "unknown format (no suffix)"),
    ],
)
def test_score_file_refuses_an_output_it_cannot_write_before_scoring(
    write_config: WriteConfig,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    output: str,
    says: str,
) -> None:
    """`score-file -o` into a missing folder or an unknown format: one line naming the output,
    exit 2, and no model loaded (checked before anything is scored)."""
    events = _avro_file(
        tmp_path / "events.avro", json.loads((SCHEMAS / "transaction.avsc").read_text()), 3
    )
    target = tmp_path / output

    code = cli.main(["score-file", "--config", str(write_config()), str(events), "-o", str(target)])

    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1
    assert err.startswith(f"stream-scorer: input error: score-file: --output {target}: "), err
    assert says in err
    assert "model_loaded" not in err
    assert not target.exists()


def _avro_file(path: Path, schema: dict[str, Any], count: int) -> Path:
    events, _ = TransactionGenerator(seed=5).generate(count)
    with path.open("wb") as fh:
        fastavro.writer(fh, fastavro.parse_schema(schema), events)
    return path


def test_score_file_on_a_truncated_file_exits_1(
    write_config: WriteConfig,
    tmp_path: Path,
    reader_schema: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A container that breaks off midway: one line naming the file, exit 1."""
    whole = _avro_file(tmp_path / "whole.avro", reader_schema, 2000).read_bytes()
    cut = tmp_path / "cut.avro"
    cut.write_bytes(whole[: len(whole) // 2])

    code = cli.main(["score-file", "--config", str(write_config()), str(cut), "-o", "/dev/null"])

    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith(f"stream-scorer: fatal: score-file: {cut}: ")
    assert err.count("\n") == 1


def test_score_file_piped_into_head_exits_quietly(
    write_config: WriteConfig, tmp_path: Path, reader_schema: dict[str, Any]
) -> None:
    """`score-file ... | head -1`: the closed pipe ends the command with exit 0 and no output."""
    source = _avro_file(tmp_path / "in.avro", reader_schema, 5000)  # ~1 MB of JSON lines
    pipeline = subprocess.run(  # noqa: S602 - a real shell pipe into head is the case here
        f"'{sys.executable}' -m stream_scorer score-file --config '{write_config()}' "
        f"'{source}' | head -n 1; exit ${{PIPESTATUS[0]}}",
        shell=True,
        executable="/bin/bash",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert pipeline.returncode == 0, pipeline.stderr
    assert pipeline.stderr == ""
    assert json.loads(pipeline.stdout)["index"] == 0


def test_config_example_prints_the_shipped_example(capsys: pytest.CaptureFixture[str]) -> None:
    """`config example` prints the example configuration shipped with the package."""
    assert cli.main(["config", "example"]) == 0

    assert capsys.readouterr().out == (REPO_ROOT / "scorer.example.toml").read_text("utf-8")


def test_unexpected_error_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An error nobody foresaw still ends in one line and exit 1, not a traceback."""

    def broken(args: argparse.Namespace) -> int:
        del args
        msg = "boom"
        raise RuntimeError(msg)

    monkeypatch.setattr(cli, "_dispatch", broken)

    code = cli.main(["config", "check"])

    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("stream-scorer: unexpected error: RuntimeError: boom")
    assert err.count("\n") == 1


#: A distinct secret per slot, so a leak names its source.
SECRETS = {
    "kafka.sasl_password": "Sec-kafka-pw-1",
    "kafka.sasl_password_file": "Sec-kafka-file-2",
    "schema.registry_password": "Sec-registry-pw-3",
    "common.sasl.password": "Sec-common-pw-4",
    "consumer.sasl.oauthbearer.config": "Sec-oauth-5",
    "producer.ssl.key.password": "Sec-keypw-6",
    "common.ssl.keystore.password": "Sec-keystore-7",
    "common.ssl.key.pem": "Sec-keypem-8",
    "typo": "Sec-typo-9",
    "env.sasl_password": "Sec-env-pw-10",
    "env.common": "Sec-env-common-11",
}


def _secret_config(tmp_path: Path, mistake: str, password_line: str) -> Path:
    """A config holding secrets in every slot, plus one ``mistake``."""
    path = tmp_path / "secret.toml"
    path.write_text(
        f"""
[kafka]
{password_line}
[kafka.common]
"sasl.password" = "{SECRETS["common.sasl.password"]}"
"ssl.keystore.password" = "{SECRETS["common.ssl.keystore.password"]}"
"ssl.key.pem" = "{SECRETS["common.ssl.key.pem"]}"
[kafka.consumer]
"sasl.oauthbearer.config" = "{SECRETS["consumer.sasl.oauthbearer.config"]}"
[kafka.producer]
"ssl.key.password" = "{SECRETS["producer.ssl.key.password"]}"
[schema]
registry_password = "{SECRETS["schema.registry_password"]}"
wire_format = "plain"
[model]
path = "{FRAUD_MODEL}"
[metrics]
enabled = false
{mistake}
""",
        encoding="utf-8",
    )
    return path


#: Each configuration mistake the CLI must report without a secret: (TOML added, env added).
MISTAKES: dict[str, tuple[str, dict[str, str]]] = {
    "both-passwords": ("", {}),
    "misspelt-key": ("[kafka.x]\n", {}),
    "typo-next-to-password": ("", {}),
    "empty-registry-url": ("", {"STREAM_SCORER_SCHEMA__REGISTRY_URL": "",
                                "STREAM_SCORER_SCHEMA__WIRE_FORMAT": "confluent"}),
    "same-topics": ("[topics]\ninput = 'a'\nalerts = 'a'\n", {}),
    "wrong-type": ("[batch]\nmax_size = 'lots'\n", {}),
    "env-not-json": ("", {"STREAM_SCORER_KAFKA__COMMON": "not json " + SECRETS["env.common"]}),
    "env-unknown-section": ("", {"STREAM_SCORER_KAFAK__SASL_PASSWORD":
                                 SECRETS["env.sasl_password"]}),
    "env-wrong-type": ("", {"STREAM_SCORER_KAFKA__SASL_PASSWORD": SECRETS["env.sasl_password"],
                            "STREAM_SCORER_KAFKA__SASL_USERNAME": "1",
                            "STREAM_SCORER_METRICS__PORT": "-1"}),
    "unreadable-password-file": ("", {}),
    "missing-model": ("", {"STREAM_SCORER_MODEL__PATH": "/nonexistent/model"}),
}  # fmt: skip


@pytest.mark.parametrize("command", [["config", "check"], ["run"], ["score-file", "x.avro"]])
@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_config_errors_never_print_a_secret(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    mistake: str,
    command: list[str],
) -> None:
    """Secrets planted in every slot appear nowhere in the output of any config error path."""
    password_file = tmp_path / "kafka-password"
    password_file.write_text(SECRETS["kafka.sasl_password_file"], encoding="utf-8")
    password_line = f'sasl_password = "{SECRETS["kafka.sasl_password"]}"'
    if mistake == "both-passwords":
        password_line += f'\nsasl_password_file = "{password_file}"'
    elif mistake == "typo-next-to-password":
        password_line += f'\nsasl_pasword = "{SECRETS["typo"]}"'
    elif mistake == "unreadable-password-file":
        password_line = f'sasl_password_file = "{tmp_path / "absent"}"'
    elif mistake in {"env-not-json", "env-wrong-type"}:
        password_line = f'sasl_password_file = "{password_file}"'
    toml, env = MISTAKES[mistake]
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    _avro_file(tmp_path / "x.avro", json.loads((SCHEMAS / "transaction.avsc").read_text()), 5)
    config = _secret_config(tmp_path, toml, password_line)

    code = cli.main([*command, "--config", str(config)])

    out, err = capsys.readouterr()
    if mistake == "unreadable-password-file" and command[0] != "run":
        assert code == 0  # the password file is read only by the commands that connect
    else:
        # `run` logs its start-up (info) before the error: the error is the last line.
        assert code == 2, err
        if command[0] == "run" and mistake in {"unreadable-password-file", "missing-model"}:
            # Found after logging began (JSON lines off a terminal): the last line is JSON too,
            # and so is every line before it.
            lines = [json.loads(line) for line in err.splitlines()]
            assert lines[-1]["event"] == "command_failed", err
            assert lines[-1]["kind"] == "configuration error", err
            assert lines[-1]["exit_code"] == 2, err
        else:
            assert err.splitlines()[-1].startswith("stream-scorer: configuration error: "), err
    leaked = [slot for slot, secret in SECRETS.items() if secret in out + err]
    assert not leaked, f"{leaked} printed: {out + err}"
