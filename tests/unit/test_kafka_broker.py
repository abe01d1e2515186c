"""Unit tests of the pure parts of scripts/kafka_broker.py (no Java, no network)."""

from __future__ import annotations

import base64
import socket
import subprocess
from pathlib import Path

import pytest

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


def test_fetch_is_skipped_when_marker_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cached version is not fetched again (Maven is never run)."""
    (tmp_path / "9.9.9").mkdir()
    (tmp_path / "9.9.9" / kb.FETCH_MARKER).write_text("done\n")

    def no_maven(*args: object, **kwargs: object) -> None:
        pytest.fail("mvn must not run for a cached version")

    monkeypatch.setattr(subprocess, "run", no_maven)

    assert kb.fetch("9.9.9", tmp_path) == tmp_path / "9.9.9" / "libs"


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
