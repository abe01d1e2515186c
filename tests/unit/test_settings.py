"""Settings: TOML file, environment overrides, errors that name the key, secrets kept secret."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError

from stream_scorer.errors import ConfigurationError
from stream_scorer.settings import (
    ENV_PREFIX,
    SECRET_MARKERS,
    Settings,
    load_settings,
    masked,
    resource_root,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

WriteToml = Callable[[str], Path]


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove STREAM_SCORER_* variables the shell may have set, so only the test's count."""
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX) or name.upper().startswith("SCHEMA"):
            monkeypatch.delenv(name)


@pytest.fixture
def write_toml(tmp_path: Path) -> WriteToml:
    """``write_toml(text)`` → path of a config file holding ``text``."""

    def write(text: str) -> Path:
        path = tmp_path / "stream-scorer.toml"
        path.write_text(text, encoding="utf-8")
        return path

    return write


def test_toml_file_loads(write_toml: WriteToml) -> None:
    """Values in the TOML file replace the defaults, section by section."""
    path = write_toml(
        """
        [topics]
        input = "in"
        alerts = "out"
        dead_letter = "dlq"
        [schema]
        wire_format = "plain"
        [batch]
        max_size = 10
        max_wait_ms = 5
        [kafka.consumer]
        "fetch.wait.max.ms" = 7
        """
    )

    settings = load_settings(path)

    assert (settings.topics.input, settings.topics.alerts, settings.topics.dead_letter) == (
        "in",
        "out",
        "dlq",
    )
    assert settings.schema_.wire_format == "plain"
    assert (settings.batch.max_size, settings.batch.max_wait_ms) == (10, 5)
    assert settings.kafka.consumer == {"fetch.wait.max.ms": 7}
    assert settings.model.path == resource_root() / "models/fraud/1"  # untouched default


def test_defaults_without_a_file() -> None:
    """Without a file or environment, the documented defaults apply."""
    settings = load_settings(None, environ={})

    assert settings.schema_.wire_format == "confluent"
    assert settings.batch.max_size == 1000
    assert settings.topics.input == "transactions"


def test_environment_overrides_file(write_toml: WriteToml, monkeypatch: pytest.MonkeyPatch) -> None:
    """STREAM_SCORER_BATCH__MAX_SIZE beats the file's batch.max_size; other keys stay."""
    path = write_toml("[batch]\nmax_size = 10\nmax_wait_ms = 5\n")
    monkeypatch.setenv("STREAM_SCORER_BATCH__MAX_SIZE", "500")

    settings = load_settings(path)

    assert settings.batch.max_size == 500
    assert settings.batch.max_wait_ms == 5


def test_overrides_beat_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Command-line overrides beat environment variables."""
    monkeypatch.setenv("STREAM_SCORER_LOG__LEVEL", "error")

    settings = load_settings(None, overrides={"log": {"level": "debug"}})

    assert settings.log.level == "debug"


def test_overrides_keep_the_rest_of_the_section(write_toml: WriteToml) -> None:
    """An override of one key leaves the file's other keys in that section in force."""
    path = write_toml("[log]\nformat = 'json'\nlevel = 'warning'\n")

    settings = load_settings(path, overrides={"log": {"level": "debug"}})

    assert (settings.log.level, settings.log.format) == ("debug", "json")


def test_librdkafka_properties_from_environment_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    """A librdkafka passthrough section is given as JSON in the environment."""
    monkeypatch.setenv("STREAM_SCORER_KAFKA__CONSUMER", '{"fetch.wait.max.ms": 5}')

    assert load_settings(None).kafka.consumer == {"fetch.wait.max.ms": 5}


def test_schema_section_is_overridable_from_environment(
    write_toml: WriteToml, monkeypatch: pytest.MonkeyPatch
) -> None:
    """STREAM_SCORER_SCHEMA__WIRE_FORMAT overrides schema.wire_format like any other key."""
    monkeypatch.setenv("STREAM_SCORER_SCHEMA__WIRE_FORMAT", "plain")

    assert load_settings(write_toml("[batch]\nmax_size = 10\n")).schema_.wire_format == "plain"


@pytest.mark.parametrize(
    ("toml", "named"),
    [
        ("[batch]\nmax_sise = 10\n", "batch.max_sise"),
        ("[nonsense]\nx = 1\n", "nonsense"),
        ("[kafka]\nbootstrap = 'x:1'\n", "kafka.bootstrap"),
    ],
    ids=["key-in-section", "unknown-section", "kafka-typo"],
)
def test_unknown_key_in_file_is_named(toml: str, named: str, write_toml: WriteToml) -> None:
    """An unknown key in the file is a ConfigurationError naming it."""
    with pytest.raises(ConfigurationError, match=re.escape(f"{named}: unknown key")):
        load_settings(write_toml(toml))


@pytest.mark.parametrize(
    ("toml", "named"),
    [
        ("[batch]\nmax_size = 'many'\n", "batch.max_size"),
        ("[batch]\nmax_size = 0\n", "batch.max_size"),
        ("[batch]\nmax_wait_ms = 5000\n", "batch.max_wait_ms"),
        ("[model]\nthreshold = 1.5\n", "model.threshold"),
        ("[delivery]\nmode = 'sometimes'\n", "delivery.mode"),
        ("[metrics]\nport = 70000\n", "metrics.port"),
        ("[kafka]\nsecurity_protocol = 'TLS'\n", "kafka.security_protocol"),
    ],
    ids=["type", "below-min", "above-max", "threshold", "literal", "port", "protocol"],
)
def test_wrong_type_or_value_names_the_key(toml: str, named: str, write_toml: WriteToml) -> None:
    """A value of the wrong type or out of range is a ConfigurationError naming its key."""
    with pytest.raises(ConfigurationError, match=re.escape(f"{named}: ")):
        load_settings(write_toml(toml))


def test_wrong_type_from_environment_names_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad value from the environment is named just like one from the file."""
    monkeypatch.setenv("STREAM_SCORER_BATCH__MAX_SIZE", "lots")

    with pytest.raises(ConfigurationError, match=r"batch\.max_size"):
        load_settings(None)


def test_unknown_key_in_known_section_from_environment_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A typo in the key of a known section's environment variable is refused, named."""
    monkeypatch.setenv("STREAM_SCORER_BATCH__MAX_SIZ", "3")

    with pytest.raises(ConfigurationError, match=r"batch\.max_siz"):
        load_settings(None)


def test_unknown_environment_section_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A STREAM_SCORER_ variable naming no section is refused, naming the variable."""
    monkeypatch.setenv("STREAM_SCORER_BACTH__MAX_SIZE", "3")

    with pytest.raises(
        ConfigurationError, match=r"STREAM_SCORER_BACTH__MAX_SIZE: unknown settings section 'bacth'"
    ):
        load_settings(None)


def test_environ_argument_is_checked_instead_of_os_environ() -> None:
    """load_settings checks the mapping it is given for unknown sections."""
    with pytest.raises(ConfigurationError, match="unknown settings section 'nope'"):
        load_settings(None, environ={"STREAM_SCORER_NOPE": "1"})


@pytest.mark.parametrize(
    "topics",
    [
        "input = 'x'\nalerts = 'x'\n",
        "input = 'x'\ndead_letter = 'x'\n",
        "alerts = 'y'\ndead_letter = 'y'\n",
    ],
    ids=["input-alerts", "input-dlq", "alerts-dlq"],
)
def test_topics_must_differ(topics: str, write_toml: WriteToml) -> None:
    """Input, alert and dead-letter topics must be three different topics."""
    with pytest.raises(ConfigurationError, match="must differ"):
        load_settings(write_toml(f"[topics]\n{topics}"))


def test_confluent_without_registry_url_is_refused(write_toml: WriteToml) -> None:
    """The confluent wire format needs schema.registry_url."""
    with pytest.raises(ConfigurationError, match=r"schema\.registry_url is required"):
        load_settings(write_toml("[schema]\nwire_format = 'confluent'\nregistry_url = ''\n"))


def test_plain_takes_at_most_one_writer(write_toml: WriteToml) -> None:
    """The plain wire format refuses two writer schemas."""
    with pytest.raises(ConfigurationError, match="at most one schema"):
        load_settings(write_toml("[schema]\nwire_format = 'plain'\nwriters = ['a', 'b']\n"))


def test_invalid_toml_is_a_configuration_error(write_toml: WriteToml) -> None:
    """A file that is not TOML is a ConfigurationError naming the file."""
    path = write_toml("[batch\nmax_size = 1\n")

    with pytest.raises(ConfigurationError, match="not valid TOML"):
        load_settings(path)


def test_missing_file_is_a_configuration_error(tmp_path: Path) -> None:
    """A config path that does not exist is a ConfigurationError naming it."""
    with pytest.raises(ConfigurationError, match="cannot read config file"):
        load_settings(tmp_path / "absent.toml")


def test_sasl_password_file_is_read(write_toml: WriteToml, tmp_path: Path) -> None:
    """The password comes from the file, stripped, into the librdkafka config."""
    secret = tmp_path / "password"
    secret.write_text("hunter2\n", encoding="utf-8")
    path = write_toml(f"[kafka]\nsasl_username = 'svc'\nsasl_password_file = '{secret}'\n")

    kafka = load_settings(path).kafka

    assert kafka.password() == "hunter2"
    config = kafka.client_config()
    assert (config["sasl.username"], config["sasl.password"]) == ("svc", "hunter2")


def test_unreadable_password_file_is_a_configuration_error(
    write_toml: WriteToml, tmp_path: Path
) -> None:
    """A password file that cannot be read is a ConfigurationError naming the key."""
    path = write_toml(f"[kafka]\nsasl_password_file = '{tmp_path / 'absent'}'\n")

    with pytest.raises(ConfigurationError, match=r"kafka\.sasl_password_file"):
        load_settings(path).kafka.password()


def test_password_and_password_file_are_exclusive(write_toml: WriteToml, tmp_path: Path) -> None:
    """Setting both sasl_password and sasl_password_file is refused."""
    path = write_toml(f"[kafka]\nsasl_password = 'a'\nsasl_password_file = '{tmp_path}/pw'\n")

    with pytest.raises(ConfigurationError, match="exclusive"):
        load_settings(path)


def test_masked_hides_secret_properties() -> None:
    """masked() replaces password, secret and key values and keeps the rest."""
    config = {
        "bootstrap.servers": "b:9092",
        "sasl.password": "p1",
        "ssl.key.password": "p2",
        "sasl.oauthbearer.client.secret": "p3",
        "ssl.key.pem": "p4",
        "sasl.oauthbearer.config": "principal=x clientSecret=p5",
        "ssl.keystore.password": "p6",
        "basic.auth.user.info": "u:p7",
        "sasl.oauthbearer.client.secret.file": "p8",
        "client.id": "c",
    }

    shown = masked(config)

    secret_keys = set(config) - {"bootstrap.servers", "client.id"}
    assert shown == {
        "bootstrap.servers": "b:9092",
        "client.id": "c",
        **dict.fromkeys(secret_keys, "*****"),
    }
    assert config["sasl.password"] == "p1"  # a copy: the real config is untouched


def test_secrets_are_not_in_repr_or_str(write_toml: WriteToml) -> None:
    """Passwords never appear in repr(), str() or the JSON dump of the settings."""
    path = write_toml(
        "[kafka]\nsasl_password = 'kafka-hunter2'\n[schema]\nregistry_password = 'reg-hunter3'\n"
    )

    settings = load_settings(path)

    for text in (repr(settings), str(settings), settings.model_dump_json()):
        assert "kafka-hunter2" not in text
        assert "reg-hunter3" not in text
    assert settings.kafka.password() == "kafka-hunter2"
    assert settings.schema_.registry_password is not None
    assert settings.schema_.registry_password.get_secret_value() == "reg-hunter3"


def test_settings_are_frozen() -> None:
    """Loaded settings cannot be changed in place."""
    settings = load_settings(None)

    with pytest.raises(ValidationError):
        settings.batch.max_size = 3  # type: ignore[misc]
    assert isinstance(settings, Settings)


def test_masked_shows_callbacks_by_type_only() -> None:
    """masked() renders a callback or logger as its type name, so a log line stays JSON."""
    import logging  # noqa: PLC0415 - only this test needs it

    shown = masked({"error_cb": print, "logger": logging.getLogger("x"), "linger.ms": 5})

    assert shown == {"error_cb": "<builtin_function_or_method>", "logger": "<Logger>",
                     "linger.ms": 5}  # fmt: skip


def test_file_paths_resolve_against_the_files_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Relative paths in a config file resolve against its folder, whatever the working dir."""
    folder = tmp_path / "etc"
    folder.mkdir()
    path = folder / "scorer.toml"
    path.write_text(
        "[schema]\nreader = 'sch/in.avsc'\nwriters = ['sch/w1.avsc']\n"
        "[model]\npath = '../models/m/1'\n"
        "[kafka]\nsasl_password_file = 'pw'\n[kafka.common]\n'ssl.ca.location' = 'ca.pem'\n"
        "[metrics]\nhost = 'x'\n",
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)

    settings = load_settings(Path("etc/scorer.toml"), environ={})

    assert settings.schema_.reader == folder / "sch/in.avsc"
    assert settings.schema_.writers == (folder / "sch/w1.avsc",)
    assert settings.model.path == folder / "../models/m/1"
    assert settings.kafka.sasl_password_file == folder / "pw"
    assert settings.kafka.common == {"ssl.ca.location": "ca.pem"}  # passthrough: untouched
    assert settings.metrics.host == "x"  # not a path


def test_absolute_and_environment_paths_are_used_as_given(
    write_toml: WriteToml, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An absolute path in the file, and a relative one from the environment, stay as given."""
    path = write_toml("[schema]\nreader = '/abs/in.avsc'\n[model]\npath = 'rel/m'\n")
    monkeypatch.setenv("STREAM_SCORER_MODEL__PATH", "from-env/m")

    settings = load_settings(path, overrides={"schema": {"alert": "cli/alert.avsc"}})

    assert settings.schema_.reader == Path("/abs/in.avsc")
    assert settings.model.path == Path("from-env/m")
    assert settings.schema_.alert == Path("cli/alert.avsc")


def test_defaults_name_the_shipped_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Path keys set nowhere point at the shipped schemas and model, from any working dir."""
    monkeypatch.chdir(tmp_path)

    settings = load_settings(None, environ={})

    assert settings.schema_.reader.is_absolute()
    assert (
        settings.schema_.reader.read_bytes()
        == (REPO_ROOT / "schemas/transaction.avsc").read_bytes()
    )
    assert settings.schema_.alert.read_bytes() == (REPO_ROOT / "schemas/alert.avsc").read_bytes()
    assert (settings.model.path / "model.json").is_file()


@pytest.mark.parametrize(
    ("toml", "named", "secret"),
    [
        (
            "[kafka]\nsasl_password = 'S3cret-both'\nsasl_password_file = '/x/pw'\n",
            "exclusive",
            "S3cret-both",
        ),
        (
            "[kafka]\nsasl_password = 'S3cret-next'\nsasl_pasword = 'S3cret-typo'\n",
            "kafka.sasl_pasword: unknown key",
            "S3cret-",
        ),
        (
            "[schema]\nregistry_url = ''\nregistry_password = 'S3cret-reg'\n",
            "schema.registry_url is required",
            "S3cret-reg",
        ),
        (
            "[kafka]\nsasl_password = 'S3cret-sec'\n[topics]\ninput = 'a'\nalerts = 'a'\n",
            "must differ",
            "S3cret-sec",
        ),
        ("[kafka.common]\n'sasl.password' = ['S3cret-list']\n", "kafka.common", "S3cret-list"),
        (
            "[kafka.common]\n'sasl.oauthbearer.config' = {a = 'S3cret-oauth'}\n",
            "sasl.oauthbearer.config",
            "S3cret-oauth",
        ),
        ("[schema]\nregistry_password = 12345678\n", "registry_password", "12345678"),
    ],
    ids=[
        "both-passwords",
        "misspelt-key",
        "empty-registry-url",
        "section-rule",
        "table-list",
        "oauthbearer",
        "wrong-type",
    ],
)
def test_validation_errors_never_quote_secrets(
    write_toml: WriteToml, toml: str, named: str, secret: str
) -> None:
    """A config error names the key but never echoes a secret, a whole section or a typo'd key."""
    with pytest.raises(ConfigurationError) as caught:
        load_settings(write_toml(toml), environ={})

    assert named in str(caught.value)
    assert secret not in str(caught.value)


def test_validation_errors_quote_plain_values(write_toml: WriteToml) -> None:
    """A wrong value of a non-secret key is quoted, so the user sees what was wrong."""
    with pytest.raises(ConfigurationError, match=r"batch\.max_size: .*\(got 'lots'\)"):
        load_settings(write_toml("[batch]\nmax_size = 'lots'\n"), environ={})


@pytest.mark.parametrize("value", ["not json", "[1, 2]", '"a string"'])
def test_librdkafka_table_from_environment_must_be_a_json_object(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """STREAM_SCORER_KAFKA__COMMON that is not a JSON object names the variable, not its value."""
    monkeypatch.setenv("STREAM_SCORER_KAFKA__COMMON", value)

    with pytest.raises(ConfigurationError, match="STREAM_SCORER_KAFKA__COMMON: not a JSON") as c:
        load_settings(None)

    assert value not in str(c.value)


def test_secret_markers_cover_librdkafka_secret_properties() -> None:
    """Every librdkafka property holding a secret (librdkafka CONFIGURATION.md) is a secret."""
    secret_properties = [
        "sasl.password", "sasl.oauthbearer.config", "sasl.oauthbearer.client.secret",
        "ssl.key.password", "ssl.key.pem", "ssl_key", "ssl.keystore.password",
        "sasl.oauthbearer.assertion.private.key.passphrase",
        "sasl.oauthbearer.assertion.private.key.pem",
        "sasl.jaas.config", "basic.auth.user.info",
    ]  # fmt: skip
    for key in secret_properties:
        assert any(marker in key for marker in SECRET_MARKERS), key
