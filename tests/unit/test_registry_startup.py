"""Start-up against the registry: an outage exits 1 as an outage, a refusal exits 2 quoting it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stream_scorer.app import build_alert_encoder, build_registry, load_schema
from stream_scorer.devtools.devregistry import DevSchemaRegistry
from stream_scorer.errors import ConfigurationError, FatalError
from stream_scorer.settings import ENV_PREFIX, load_settings

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = REPO_ROOT / "schemas"
FRAUD_MODEL = REPO_ROOT / "models" / "fraud" / "1"
#: A password planted in the configuration; it must never be printed.
PLANTED = "pw-planted-7f3a"

WriteConfig = Callable[..., Path]


@pytest.fixture
def write_config(tmp_path: Path) -> WriteConfig:
    """``write_config(registry_url, schema_extra="")`` -> a TOML path for ``run``."""

    def write(registry_url: str, schema_extra: str = "") -> Path:
        path = tmp_path / "config.toml"
        path.write_text(
            f"""
[kafka]
bootstrap_servers = "127.0.0.1:9"

[schema]
reader = "{SCHEMAS / "transaction.avsc"}"
alert = "{SCHEMAS / "alert.avsc"}"
wire_format = "confluent"
registry_url = "{registry_url}"
registry_retries = 2
registry_retry_backoff_s = 0.0
{schema_extra}

[model]
path = "{FRAUD_MODEL}"

[metrics]
enabled = false

[log]
level = "error"
""",
            encoding="utf-8",
        )
        return path

    return write


def run_scorer(config: Path) -> subprocess.CompletedProcess[str]:
    """``stream-scorer run --config config`` in a child process (its own metrics registry)."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(ENV_PREFIX)}
    return subprocess.run(
        [sys.executable, "-m", "stream_scorer", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.slow
def test_registry_down_at_start_up_exits_1_as_unavailable(write_config: WriteConfig) -> None:
    """Nobody at the registry URL: exit 1 'registry unavailable' after 3 attempts, not 2."""
    url = f"http://svc:{PLANTED}@127.0.0.1:{closed_port()}"

    done = run_scorer(write_config(url))

    assert done.returncode == 1, done.stderr
    assert "registry unavailable" in done.stderr
    assert "failed 3 time" in done.stderr
    assert "configuration error" not in done.stderr
    assert PLANTED not in done.stderr + done.stdout


@pytest.mark.slow
def test_a_read_only_registry_with_auto_register_exits_2_quoting_it(
    write_config: WriteConfig,
) -> None:
    """Auto-registration against a read-only registry: exit 2 with the registry's message."""
    with DevSchemaRegistry(read_only=True) as registry:
        done = run_scorer(write_config(registry.url))

    err = done.stderr
    assert done.returncode == 2, err
    assert "configuration error" in err
    assert "read-only mode" in err
    assert "schema.auto_register" in err


@pytest.mark.slow
def test_wrong_registry_password_exits_2_without_echoing_it(write_config: WriteConfig) -> None:
    """A 401 is a configuration error quoting 'Unauthorized', never printing the password."""
    extra = f'registry_username = "svc"\nregistry_password = "{PLANTED}"'
    with DevSchemaRegistry(users={"svc": "the-right-one"}) as registry:
        done = run_scorer(write_config(registry.url, extra))

    assert done.returncode == 2, done.stderr
    assert "Unauthorized" in done.stderr
    assert PLANTED not in done.stderr + done.stdout


def settings_for(url: str, **schema: Any) -> Any:
    """Confluent-format settings pointing at ``url``, fast retries."""
    values = {"wire_format": "confluent", "registry_url": url, "registry_retry_backoff_s": 0}
    values.update(schema)
    overrides = {"schema": values, "topics": {"alerts": "alerts"}}
    return load_settings(None, overrides, environ={})


def test_auto_register_off_uses_the_operators_registration() -> None:
    """A read-only registry where an operator registered the alert schema: start-up works."""
    with DevSchemaRegistry(read_only=True) as registry:
        registry.add("alerts-value", load_schema(SCHEMAS / "alert.avsc", "schema.alert"))
        settings = settings_for(registry.url, auto_register=False)

        encoder = build_alert_encoder(settings, build_registry(settings))

    assert encoder is not None


def test_auto_register_off_without_a_registration_is_a_configuration_error() -> None:
    """A read-only registry without the subject: ConfigurationError quoting 'not found'."""
    with DevSchemaRegistry(read_only=True) as registry:
        settings = settings_for(registry.url, auto_register=False)

        with pytest.raises(ConfigurationError, match="Subject 'alerts-value' not found"):
            build_alert_encoder(settings, build_registry(settings))


def test_outage_at_start_up_is_fatal_not_configuration() -> None:
    """build_alert_encoder raises FatalError (exit 1) for an outage, after its retries."""
    settings = settings_for(f"http://127.0.0.1:{closed_port()}", registry_retries=1)

    with pytest.raises(FatalError, match="registry unavailable") as caught:
        build_alert_encoder(settings, build_registry(settings))
    assert not isinstance(caught.value, ConfigurationError)


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"registry_url": "ftp://h"}, "http:// or https://"),
        ({"registry_key_file": "k.pem"}, "registry_cert_file"),
        ({"registry_bearer_token": "t", "registry_username": "u"}, "exclusive"),
        ({"registry_retries": -1}, "registry_retries"),
    ],
)
def test_bad_registry_settings_name_the_key(schema: dict[str, Any], message: str) -> None:
    """Invalid registry settings are configuration errors naming the key."""
    with pytest.raises(ConfigurationError, match=message):
        settings_for("http://127.0.0.1:1", **schema)


def test_unreadable_ca_file_names_the_key(tmp_path: Path) -> None:
    """A CA bundle that does not exist stops start-up naming schema.registry_ca_file."""
    settings = settings_for("https://127.0.0.1:1", registry_ca_file=str(tmp_path / "none.pem"))

    with pytest.raises(ConfigurationError, match=r"schema\.registry_ca_file"):
        build_registry(settings)


@pytest.mark.parametrize(
    "schema",
    [
        {"registry_url": "", "registry_password": PLANTED},
        {"registry_url": f"ftp://svc:{PLANTED}@h"},
        {"registry_key_file": "k.pem", "registry_key_password": PLANTED},
        {"registry_bearer_token": PLANTED, "registry_username": "u"},
    ],
    ids=["empty-url", "url-user-info", "key-without-cert", "token-and-user"],
)
def test_bad_registry_settings_never_echo_a_secret(schema: dict[str, Any]) -> None:
    """The error for a bad registry section names the key and prints none of its values."""
    overrides = {"schema": {"wire_format": "confluent", **schema}}

    with pytest.raises(ConfigurationError, match=r"schema\.registry_") as caught:
        load_settings(None, overrides, environ={})
    assert PLANTED not in str(caught.value)
