"""Unit tests of the pure parts of scripts/kafka_broker.py (no Java, no network)."""

from __future__ import annotations

import base64
import hashlib
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12

from scripts import kafka_broker as kb

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_server_properties_are_single_node_kraft(tmp_path: Path) -> None:
    """The rendered config is a combined KRaft broker+controller on loopback."""
    text = kb.render_properties(kb.server_properties(19092, 19093, tmp_path))
    props = kb.parse_properties(text)

    assert props["process.roles"] == "broker,controller"
    assert props["node.id"] == "1"
    assert props["controller.quorum.bootstrap.servers"] == "127.0.0.1:19093"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert props["controller.listener.names"] == "CONTROLLER"
    assert props["log.dirs"] == str(tmp_path / kb.KRAFT_LOG_DIR)
    assert "controller.quorum.voters" not in props  # incompatible with `format --standalone`


def test_server_properties_suit_a_single_replica(tmp_path: Path) -> None:
    """Internal topics use one replica and consumer groups join without delay."""
    props = kb.server_properties(1, 2, tmp_path)

    assert props["offsets.topic.replication.factor"] == "1"
    assert props["transaction.state.log.replication.factor"] == "1"
    assert props["transaction.state.log.min.isr"] == "1"
    assert props["min.insync.replicas"] == "1"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["auto.create.topics.enable"] == "false"
    assert props["num.partitions"] == "1"


def test_properties_round_trip_skips_comments() -> None:
    """Parsing a rendered file gives back its keys and values, ignoring the header."""
    props = {"a.b": "1", "c": "x=y"}

    text = kb.render_properties(props, header="hello")

    assert text.startswith("# hello\n")
    assert kb.parse_properties(text) == props


def test_log4j2_config_logs_warn_to_stdout() -> None:
    """The log4j2 config sends WARN+ to the console (redirected to broker.log)."""
    props = kb.parse_properties(kb.render_log4j2_config())

    assert props["rootLogger.level"] == "WARN"
    assert props["appender.out.type"] == "Console"


def test_cluster_id_is_kafka_shaped() -> None:
    """Cluster ids are 22-char base64url UUIDs that never start with a dash."""
    ids = {kb.generate_cluster_id() for _ in range(200)}

    assert len(ids) == 200
    for cluster_id in ids:
        assert len(cluster_id) == 22
        assert not cluster_id.startswith("-")
        assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


def test_free_ports_are_distinct_and_bindable() -> None:
    """find_free_ports returns distinct ports that can be bound."""
    ports = kb.find_free_ports(3)

    assert len(set(ports)) == 3
    assert all(kb.port_is_free(port) for port in ports)


def test_port_is_free_detects_a_listener() -> None:
    """A port with a listening socket is reported as taken."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        assert not kb.port_is_free(sock.getsockname()[1])


def test_java_command_runs_main_class_from_cached_jars(tmp_path: Path) -> None:
    """The JVM command uses the jar wildcard classpath, heap flags and log4j2 config."""
    cmd = kb.build_java_command(
        "java", tmp_path / "libs", kb.KAFKA_MAIN, ["server.properties"], log4j2_config=Path("l")
    )

    assert cmd[0] == "java"
    assert "-Xmx512m" in cmd
    assert "-Dlog4j2.configurationFile=l" in cmd
    assert cmd[cmd.index("-cp") + 1] == f"{tmp_path / 'libs'}/*"
    assert cmd[-2:] == ["kafka.Kafka", "server.properties"]


def fake_jars(libs: Path, contents: dict[str, bytes]) -> dict[str, str]:
    """Write jars with the given bytes; return their checksum list."""
    libs.mkdir(parents=True, exist_ok=True)
    for name, data in contents.items():
        (libs / name).write_bytes(data)
    return {name: hashlib.sha256(data).hexdigest() for name, data in contents.items()}


def no_maven(*args: object, **kwargs: object) -> None:
    """Stand-in for subprocess.run that fails the test if Maven is started."""
    pytest.fail("mvn must not run for a cached, verified version")


def test_fetch_is_skipped_when_verified_marker_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cached version verified against the current list is not fetched again."""
    sums = fake_jars(tmp_path / "9.9.9" / "libs", {"a.jar": b"a"})
    checksums = tmp_path / "list.sha256"
    checksums.write_text(kb.render_checksums(sums))
    assert kb.fetch("9.9.9", tmp_path, checksums=checksums) == tmp_path / "9.9.9" / "libs"
    monkeypatch.setattr(subprocess, "run", no_maven)

    assert kb.fetch("9.9.9", tmp_path, checksums=checksums) == tmp_path / "9.9.9" / "libs"


def test_cached_jars_that_fail_verification_are_not_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache marked by an older, unverified fetch is checked; a tampered jar is deleted and
    the fresh download (here: the same tampered bytes) fails loudly, leaving no marker."""
    libs = tmp_path / "9.9.9" / "libs"
    sums = fake_jars(libs, {"kafka_2.13-9.9.9.jar": b"genuine", "b.jar": b"b"})
    checksums = tmp_path / "list.sha256"
    checksums.write_text(kb.render_checksums(sums))
    (tmp_path / "9.9.9" / kb.FETCH_MARKER).write_text("kafka_2.13 9.9.9\n")  # pre-checksum marker
    (libs / "kafka_2.13-9.9.9.jar").write_bytes(b"tampered")

    def tampered_maven(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        assert "-C" in cmd, "Maven runs with strict checksums"
        fake_jars(libs, {"kafka_2.13-9.9.9.jar": b"tampered", "b.jar": b"b"})
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/mvn")
    monkeypatch.setattr(subprocess, "run", tampered_maven)

    with pytest.raises(
        kb.BrokerError, match=r"kafka_2\.13-9\.9\.9\.jar: sha256 [0-9a-f]{64}, expected"
    ):
        kb.fetch("9.9.9", tmp_path, checksums=checksums)
    assert not (tmp_path / "9.9.9" / kb.FETCH_MARKER).exists()
    assert not libs.exists(), "refused jars are removed, so nothing can start them"
    with pytest.raises(kb.BrokerError, match="not fetched"):
        kb.KafkaBroker(tmp_path / "data", version="9.9.9", cache_dir=tmp_path).start(timeout_s=1)


def test_verify_jars_names_every_problem(tmp_path: Path) -> None:
    """A changed, a missing and an unlisted jar are each named; matching jars pass."""
    sums = fake_jars(tmp_path, {"same.jar": b"1", "changed.jar": b"2", "extra.jar": b"3"})
    expected = {"same.jar": sums["same.jar"], "changed.jar": "0" * 64, "gone.jar": "1" * 64}

    with pytest.raises(kb.BrokerError) as info:
        kb.verify_jars(tmp_path, expected)

    text = str(info.value)
    assert f"changed.jar: sha256 {sums['changed.jar']}, expected {'0' * 64}" in text
    assert "gone.jar: missing" in text
    assert "extra.jar: not in the list" in text
    assert "same.jar" not in text
    kb.verify_jars(tmp_path, sums)  # the true list passes


def test_missing_checksum_list_refuses_to_fetch(tmp_path: Path) -> None:
    """A version without a committed checksum list is not fetched at all."""
    with pytest.raises(kb.BrokerError, match=r"no checksum list for Kafka 9\.9\.9"):
        kb.fetch("9.9.9", tmp_path, checksums=tmp_path / "absent.sha256")


@pytest.mark.parametrize(
    "line",
    ["abc  short.jar", f"{'g' * 64}  nothex.jar", f"{'a' * 64}", f"{'a' * 64} one-space.jar"],
)
def test_malformed_checksum_lines_are_errors(line: str) -> None:
    """A line that is not '<64 hex>  <name>' makes the whole list invalid."""
    with pytest.raises(kb.BrokerError, match="line 2"):
        kb.parse_checksums(f"# header\n{line}\n")


def test_checksums_round_trip_in_sha256sum_format() -> None:
    """Rendered lists parse back, sorted by name, in the format sha256sum -c reads."""
    sums = {"b.jar": "b" * 64, "a.jar": "a" * 64}

    text = kb.render_checksums(sums, header="h")

    assert text.splitlines()[1] == f"{'a' * 64}  a.jar"
    assert kb.parse_checksums(text) == sums


def test_committed_checksum_list_covers_the_pinned_version() -> None:
    """The repository lists every jar of the pinned Kafka version, the server jar included."""
    sums = kb.parse_checksums(kb.checksum_path_for(kb.KAFKA_VERSION).read_text())

    assert f"kafka_2.13-{kb.KAFKA_VERSION}.jar" in sums
    assert f"kafka-clients-{kb.KAFKA_VERSION}.jar" in sums
    assert len(sums) > 30


def test_secured_listeners_are_added_beside_plaintext(tmp_path: Path) -> None:
    """With TLS material the broker also serves SSL and SASL_SSL with SCRAM-SHA-512 only,
    while PLAINTEXT stays the inter-broker listener."""
    tls = kb.TlsFiles(tmp_path / "ca.pem", tmp_path / "b.p12", "pw")

    props = kb.server_properties(1, 2, tmp_path, secure_ports=(3, 4), tls=tls)

    assert props["listeners"] == (
        "PLAINTEXT://127.0.0.1:1,SSL://127.0.0.1:3,SASL_SSL://127.0.0.1:4,CONTROLLER://127.0.0.1:2"
    )
    assert props["advertised.listeners"] == (
        "PLAINTEXT://127.0.0.1:1,SSL://127.0.0.1:3,SASL_SSL://127.0.0.1:4"
    )
    assert props["inter.broker.listener.name"] == "PLAINTEXT"
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert props["ssl.keystore.location"] == str(tmp_path / "b.p12")
    assert "ScramLoginModule" in props["listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config"]
    plain = kb.server_properties(1, 2, tmp_path)
    assert not any(key.startswith(("ssl.", "sasl.")) for key in plain)
    with pytest.raises(ValueError, match="go together"):
        kb.server_properties(1, 2, tmp_path, secure_ports=(3, 4))


def test_scram_users_become_format_arguments() -> None:
    """Each SCRAM user is one --add-scram argument; reserved characters are refused."""
    assert kb.scram_format_args({"u": "p"}) == ["--add-scram", "SCRAM-SHA-512=[name=u,password=p]"]
    with pytest.raises(ValueError, match="must not contain"):
        kb.scram_format_args({"u": "p,w"})


def test_generated_certificate_is_signed_for_loopback(tmp_path: Path) -> None:
    """The broker certificate chains to the generated CA and names 127.0.0.1 and localhost."""
    tls = kb.generate_tls_files(tmp_path)

    ca = x509.load_pem_x509_certificate(tls.ca_pem.read_bytes())
    key, cert, chain = pkcs12.load_key_and_certificates(
        tls.keystore.read_bytes(), tls.keystore_password.encode()
    )
    assert key is not None and cert is not None
    cert.verify_directly_issued_by(ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [c.subject for c in chain] == [ca.subject]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    with pytest.raises(ValueError):
        pkcs12.load_key_and_certificates(tls.keystore.read_bytes(), b"wrong")


def test_broker_picks_distinct_free_ports(tmp_path: Path) -> None:
    """Without explicit ports the broker gets two distinct ports and a loopback address."""
    broker = kb.KafkaBroker(tmp_path)

    assert broker.port != broker.controller_port
    assert broker.bootstrap_servers == f"127.0.0.1:{broker.port}"
    assert not broker.is_running()


def test_start_without_fetched_jars_fails_loudly(tmp_path: Path) -> None:
    """start() refuses to run when the jars have not been fetched."""
    broker = kb.KafkaBroker(tmp_path / "data", cache_dir=tmp_path / "cache")

    with pytest.raises(kb.BrokerError, match="not fetched"):
        broker.start(timeout_s=1)


def test_stale_pid_file_is_not_running(tmp_path: Path) -> None:
    """A pid file naming a non-Kafka process does not count as a running broker."""
    broker = kb.KafkaBroker(tmp_path)
    broker.pid_path.write_text("1\n")

    assert not broker.is_running()
    broker.kill()  # must not signal pid 1's group
    assert not broker.pid_path.exists()


def test_from_data_dir_reads_recorded_ports(tmp_path: Path) -> None:
    """A broker described from a data dir uses the ports in its server.properties."""
    (tmp_path / kb.SERVER_PROPERTIES).write_text(
        kb.render_properties(kb.server_properties(29092, 29093, tmp_path))
    )

    broker = kb.KafkaBroker.from_data_dir(tmp_path)

    assert (broker.port, broker.controller_port) == (29092, 29093)


def test_from_data_dir_finds_plaintext_among_secured_listeners(tmp_path: Path) -> None:
    """A secured broker's data dir still yields its PLAINTEXT port, not the last listener's."""
    tls = kb.TlsFiles(tmp_path / "ca.pem", tmp_path / "b.p12", "pw")
    props = kb.server_properties(29092, 29093, tmp_path, secure_ports=(29094, 29095), tls=tls)
    (tmp_path / kb.SERVER_PROPERTIES).write_text(kb.render_properties(props))

    broker = kb.KafkaBroker.from_data_dir(tmp_path)

    assert (broker.port, broker.controller_port) == (29092, 29093)


def test_secured_broker_gets_five_distinct_ports(tmp_path: Path) -> None:
    """With TLS the broker picks distinct free ports for SSL and SASL_SSL as well."""
    tls = kb.TlsFiles(tmp_path / "ca.pem", tmp_path / "b.p12", "pw")

    broker = kb.KafkaBroker(tmp_path, tls=tls, scram_users={"u": "p"})

    assert broker.secure_ports is not None
    assert len({broker.port, broker.controller_port, *broker.secure_ports}) == 4
    assert broker.bootstrap_ssl == f"127.0.0.1:{broker.secure_ports[0]}"
    with pytest.raises(kb.BrokerError, match="no secured listeners"):
        _ = kb.KafkaBroker(tmp_path).bootstrap_sasl_ssl
    with pytest.raises(ValueError, match="need tls"):
        kb.KafkaBroker(tmp_path, scram_users={"u": "p"})
