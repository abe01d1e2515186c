#!/usr/bin/env python3
"""Run a real single-node Apache Kafka broker (KRaft, broker+controller) for tests and benches.

The broker is the genuine Apache Kafka server: its jars are fetched from Maven Central with
``mvn dependency:copy-dependencies`` (see ``scripts/kafka-broker-pom.xml``) into
``.cache/kafka/<version>/libs`` and started with the system ``java`` (17+). No Docker.

Command line (run from anywhere; paths default to the repository's ``.cache/kafka``)::

    python scripts/kafka_broker.py fetch
    python scripts/kafka_broker.py start [--port 9092] [--controller-port 9093] [--data-dir D]
    python scripts/kafka_broker.py stop|kill|status [--data-dir D]
    python scripts/kafka_broker.py run [...]          # foreground, Ctrl-C stops it

Python (tests import this module as ``scripts.kafka_broker``)::

    broker = KafkaBroker(tmp_dir)          # free ports picked at construction
    broker.fetch()
    broker.start()
    broker.bootstrap_servers               # "127.0.0.1:<port>"
    broker.stop()                          # data is kept: start() again reuses it

Only the standard library is required; ``confluent_kafka`` is used for the readiness check
when importable (a raw ApiVersions request is the fallback).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import fcntl
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = [
    "DEFAULT_CACHE_DIR",
    "DEFAULT_CONTROLLER_PORT",
    "DEFAULT_DATA_DIR",
    "DEFAULT_PORT",
    "KAFKA_VERSION",
    "BrokerError",
    "KafkaBroker",
    "build_java_command",
    "fetch",
    "find_free_ports",
    "generate_cluster_id",
    "main",
    "parse_properties",
    "render_log4j2_config",
    "render_properties",
    "server_properties",
]

# Apache Kafka release run by the harness: 4.1.1 is a current 4.x bug-fix release whose
# `kafka_2.13` artifact resolves cleanly from Maven Central and runs on Java 17.
KAFKA_VERSION = "4.1.1"
# Repository root (this file lives in <root>/scripts/); anchors the default paths below.
REPO_ROOT = Path(__file__).resolve().parent.parent
# Fetch-only POM listing the broker jars; committed next to this script.
POM_PATH = REPO_ROOT / "scripts" / "kafka-broker-pom.xml"
# Jar cache (git-ignored): <cache>/<version>/libs/*.jar.
DEFAULT_CACHE_DIR = REPO_ROOT / ".cache" / "kafka"
# Data dir used by the CLI (config, KRaft log dirs, broker.log, broker.pid live here).
DEFAULT_DATA_DIR = DEFAULT_CACHE_DIR / "data"
# Kafka's conventional client port, so `make broker` matches the service's default config.
DEFAULT_PORT = 9092
# Kafka's conventional KRaft controller port.
DEFAULT_CONTROLLER_PORT = 9093
# Interface everything binds to: loopback only, the broker is never reachable from outside.
HOST = "127.0.0.1"
# Written into <cache>/<version>/ after a successful fetch; its presence means "cached".
FETCH_MARKER = ".fetch-complete"
# Cold start on a 2-core machine is ~5-10 s; 90 s leaves room for a loaded CI runner.
START_TIMEOUT_S = 90.0
# Controlled shutdown of a single combined node takes a few seconds; then we SIGKILL.
STOP_TIMEOUT_S = 30.0
# Maven resolving ~45 jars (~45 MB) cold takes under a minute on a decent link.
FETCH_TIMEOUT_S = 600.0
# How often readiness/exit conditions are polled while waiting on a deadline.
POLL_INTERVAL_S = 0.2
# Broker JVM heap: enough for tests and benches, small enough for a 2-core/4 GB runner.
BROKER_HEAP_OPTS = ("-Xms256m", "-Xmx512m")
# StorageTool only writes a few files; keep its JVM small.
TOOL_HEAP_OPTS = ("-Xmx256m",)
# File names inside the data dir.
SERVER_PROPERTIES = "server.properties"
LOG4J2_CONFIG = "log4j2.properties"
LOG_FILE = "broker.log"
PID_FILE = "broker.pid"
# KRaft log dir (topic partitions and the __cluster_metadata log) inside the data dir.
KRAFT_LOG_DIR = "kraft-logs"
# Written by `StorageTool format`; its presence means the storage is already formatted.
META_PROPERTIES = "meta.properties"
# Main classes of the Kafka server jar.
KAFKA_MAIN = "kafka.Kafka"
STORAGE_TOOL_MAIN = "kafka.tools.StorageTool"
# Linux prctl option and the signal the kernel sends a child when its parent dies.
PR_SET_PDEATHSIG = 1
# Kafka ApiVersions request key, used by the stdlib readiness probe.
API_VERSIONS_KEY = 18
# Lines of broker.log quoted in errors when the broker fails to start.
LOG_TAIL_LINES = 40


class BrokerError(RuntimeError):
    """The broker could not be fetched, started or stopped."""


# --------------------------------------------------------------------------- pure helpers


def generate_cluster_id() -> str:
    """Return a random KRaft cluster id (base64url of a UUID, 22 chars, as Kafka makes them).

    Returns:
        The cluster id; never starts with ``-`` (Kafka's ``Uuid.randomUuid`` rule, so it
        is never mistaken for a command-line flag).
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def find_free_ports(count: int = 1, host: str = HOST) -> list[int]:
    """Return ``count`` distinct TCP ports that are free on ``host`` right now.

    All sockets are held open until every port is chosen, so the ports differ from each
    other; another process may still take one before the broker binds it.

    Args:
        count: How many ports to return.
        host: Interface to probe.

    Returns:
        The ports, in the order the kernel handed them out.
    """
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def port_is_free(port: int, host: str = HOST) -> bool:
    """Return whether ``port`` can be bound on ``host`` now.

    Args:
        port: TCP port.
        host: Interface to probe.

    Returns:
        True when a listening socket could bind it.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def server_properties(port: int, controller_port: int, data_dir: Path) -> dict[str, str]:
    """Return the single-node KRaft broker+controller configuration.

    Args:
        port: Client (PLAINTEXT) port.
        controller_port: KRaft controller port.
        data_dir: Directory holding the KRaft log dir.

    Returns:
        Property name to value, in the order written to ``server.properties``.
    """
    log_dir = str(data_dir / KRAFT_LOG_DIR)
    return {
        # KRaft combined mode: this one process is the whole cluster.
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.bootstrap.servers": f"{HOST}:{controller_port}",
        "controller.listener.names": "CONTROLLER",
        "listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{port}",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": log_dir,
        "metadata.log.dir": log_dir,
        # One replica of everything, internal topics included.
        "num.partitions": "1",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        # After a SIGKILL the restarted broker must wait for its old registration's session
        # to expire before it is unfenced: 4 s instead of the default 9 s (heartbeats every
        # 1 s still tolerate multi-second pauses on a loaded CI runner).
        "broker.session.timeout.ms": "4000",
        "broker.heartbeat.interval.ms": "1000",
        # Fewer internal partitions than the default 50: the first group/transaction
        # coordinator lookup then takes well under a second on a small machine.
        "offsets.topic.num.partitions": "4",
        "transaction.state.log.num.partitions": "4",
        # Consumers join immediately instead of waiting 3 s for more members.
        "group.initial.rebalance.delay.ms": "0",
        # Tests create their topics explicitly, with the partition count they need.
        "auto.create.topics.enable": "false",
        "delete.topic.enable": "true",
        # Small files: test data is tiny; the cleaner's default 128 MiB buffer would take a
        # quarter of the heap.
        "log.segment.bytes": str(16 * 1024 * 1024),
        "log.index.size.max.bytes": str(1024 * 1024),
        "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
        "log.retention.hours": "24",
    }


def render_properties(props: Mapping[str, str], header: str = "") -> str:
    """Render a Java ``.properties`` file.

    Args:
        props: Keys and values (values must not contain newlines).
        header: Optional comment line written first.

    Returns:
        The file text, newline-terminated.
    """
    lines = [f"# {header}"] if header else []
    lines.extend(f"{key}={value}" for key, value in props.items())
    return "\n".join(lines) + "\n"


def parse_properties(text: str) -> dict[str, str]:
    """Parse the simple ``key=value`` ``.properties`` files this module writes.

    Args:
        text: File text.

    Returns:
        Key to value; comments and blank lines are skipped.
    """
    props: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", "!")) or "=" not in line:
            continue
        key, _, value = line.partition("=")
        props[key.strip()] = value.strip()
    return props


def render_log4j2_config() -> str:
    """Return a log4j2 configuration logging WARN and above to stdout (i.e. ``broker.log``).

    Returns:
        The ``log4j2.properties`` text; the startup/shutdown lines of the server stay at INFO.
    """
    return render_properties(
        {
            "status": "warn",
            "name": "stream-scorer-test-broker",
            # Console output needs no flush at exit; avoids a "JVM is shutting down" warning.
            "shutdownHook": "disable",
            "appender.out.type": "Console",
            "appender.out.name": "STDOUT",
            "appender.out.layout.type": "PatternLayout",
            "appender.out.layout.pattern": "[%d] %p %m (%c)%n",
            "rootLogger.level": "WARN",
            "rootLogger.appenderRef.out.ref": "STDOUT",
            "logger.server.name": "kafka.server.KafkaRaftServer",
            "logger.server.level": "INFO",
            "logger.kafka.name": "kafka.Kafka$",
            "logger.kafka.level": "INFO",
        },
        header="Written by scripts/kafka_broker.py; WARN+ only to keep test logs small.",
    )


def build_java_command(
    java: str,
    libs_dir: Path,
    main_class: str,
    args: list[str],
    *,
    log4j2_config: Path,
    heap_opts: tuple[str, ...] = BROKER_HEAP_OPTS,
) -> list[str]:
    """Return the ``java`` command line running ``main_class`` from the cached jars.

    Args:
        java: Path of the ``java`` executable.
        libs_dir: Directory holding the Kafka jars.
        main_class: Fully qualified main class.
        args: Arguments for the main class.
        log4j2_config: log4j2 configuration file.
        heap_opts: JVM heap flags.

    Returns:
        The argv list.
    """
    return [
        java,
        *heap_opts,
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={log4j2_config}",
        "-cp",
        f"{libs_dir}/*",
        main_class,
        *args,
    ]


def find_java() -> str:
    """Return the ``java`` executable: ``$JAVA_HOME/bin/java`` or the one on ``PATH``.

    Returns:
        Path of the executable.

    Raises:
        BrokerError: No Java is installed.
    """
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        msg = "java not found: install a JDK/JRE 17+ or set JAVA_HOME"
        raise BrokerError(msg)
    return java


# --------------------------------------------------------------------------- fetching


def libs_dir_for(version: str = KAFKA_VERSION, cache_dir: Path = DEFAULT_CACHE_DIR) -> Path:
    """Return where the jars of ``version`` are cached.

    Args:
        version: Kafka version.
        cache_dir: Cache root.

    Returns:
        ``<cache_dir>/<version>/libs``.
    """
    return Path(cache_dir) / version / "libs"


def fetch(
    version: str = KAFKA_VERSION,
    cache_dir: Path = DEFAULT_CACHE_DIR,
    *,
    timeout_s: float = FETCH_TIMEOUT_S,
) -> Path:
    """Fetch the Kafka broker jars from Maven Central unless already cached.

    Concurrent callers (e.g. pytest-xdist workers) serialise on a lock file; the cache is
    only trusted once the marker file written after a successful copy exists.

    Args:
        version: Kafka version (``org.apache.kafka:kafka_2.13``).
        cache_dir: Cache root.
        timeout_s: Limit for the Maven run.

    Returns:
        The directory holding the jars.

    Raises:
        BrokerError: Maven is missing or failed.
    """
    version_dir = Path(cache_dir) / version
    libs = libs_dir_for(version, cache_dir)
    marker = version_dir / FETCH_MARKER
    if marker.is_file():
        return libs
    version_dir.mkdir(parents=True, exist_ok=True)
    with (version_dir / ".fetch.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.is_file():  # another process fetched while we waited
            return libs
        mvn = shutil.which("mvn")
        if mvn is None:
            msg = "mvn not found: install Maven 3.6+ to fetch the Kafka broker jars"
            raise BrokerError(msg)
        shutil.rmtree(libs, ignore_errors=True)
        cmd = [
            mvn,
            "-B",
            "-q",
            "-f",
            str(POM_PATH),
            f"-Dkafka.version={version}",
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={libs}",
        ]
        try:
            result = subprocess.run(
                cmd, capture_output=True, text=True, timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired as exc:
            msg = f"mvn did not finish fetching Kafka {version} within {timeout_s:.0f} s"
            raise BrokerError(msg) from exc
        if result.returncode != 0 or not any(libs.glob(f"kafka_2.13-{version}.jar")):
            msg = (
                f"fetching Kafka {version} with Maven failed (exit {result.returncode}):\n"
                f"{result.stdout[-4000:]}{result.stderr[-4000:]}"
            )
            raise BrokerError(msg)
        marker.write_text(f"kafka_2.13 {version}\n")
    return libs


# --------------------------------------------------------------------------- readiness


def _api_versions_ok(host: str, port: int, timeout_s: float) -> bool:
    """Send a v0 ApiVersions request and return whether the broker answered without error.

    Args:
        host: Broker host.
        port: Broker port.
        timeout_s: Socket timeout.

    Returns:
        True on a well-formed, error-free response.
    """
    client_id = b"kafka_broker.py"
    correlation_id = 1
    body = struct.pack(">hhih", API_VERSIONS_KEY, 0, correlation_id, len(client_id)) + client_id
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(struct.pack(">i", len(body)) + body)
            header = b""
            while len(header) < 10:  # size(4) + correlation id(4) + error code(2)
                chunk = sock.recv(10 - len(header))
                if not chunk:
                    return False
                header += chunk
    except OSError:
        return False
    _size, got_correlation, error_code = struct.unpack(">iih", header)
    return bool(got_correlation == correlation_id and error_code == 0)


def broker_ready(bootstrap: str, timeout_s: float = 2.0) -> bool:
    """Return whether the broker at ``bootstrap`` answers a metadata request.

    Uses confluent_kafka's AdminClient when importable (metadata must list a broker),
    otherwise a raw ApiVersions request. A TCP connect is tried first so librdkafka does
    not log connection-refused noise while the JVM is still starting.

    Args:
        bootstrap: ``host:port``.
        timeout_s: Limit for one probe.

    Returns:
        True when the broker is serving requests.
    """
    host, _, port_text = bootstrap.rpartition(":")
    port = int(port_text)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError:
        return False
    try:
        from confluent_kafka.admin import AdminClient  # noqa: PLC0415 (optional dependency)
    except ImportError:
        return _api_versions_ok(host, port, timeout_s)
    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 2000})
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except Exception:  # KafkaException or transport error: not ready yet
        return False
    return bool(metadata.brokers)


def _process_alive(pid: int) -> bool:
    """Return whether ``pid`` is a live (non-zombie) Kafka server process.

    Args:
        pid: Process id.

    Returns:
        True when the process exists, is not a zombie and runs ``kafka.Kafka``.
    """
    proc = Path("/proc") / str(pid)
    try:
        cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        stat = (proc / "stat").read_text()
    except OSError:
        return False
    state = stat.rpartition(")")[2].split()[0]
    return state != "Z" and KAFKA_MAIN.encode() in cmdline


def _set_parent_death_signal() -> None:
    """Ask the kernel to SIGKILL this (child) process when its parent dies (Linux only)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


# --------------------------------------------------------------------------- the broker


class KafkaBroker:
    """One single-node KRaft Kafka broker+controller whose state lives in ``data_dir``.

    The broker runs detached in its own process group and outlives this object unless
    ``die_with_parent`` is set; ``stop()``/``kill()`` (or the CLI) end it, and another
    instance (or the CLI) on the same ``data_dir`` finds it through ``broker.pid``.
    """

    def __init__(
        self,
        data_dir: Path | str,
        port: int | None = None,
        controller_port: int | None = None,
        *,
        version: str = KAFKA_VERSION,
        cache_dir: Path | str = DEFAULT_CACHE_DIR,
        die_with_parent: bool = False,
    ) -> None:
        """Describe a broker; nothing is started or fetched yet.

        Args:
            data_dir: Directory for config, KRaft logs, ``broker.log`` and ``broker.pid``.
            port: Client port; a free port when None (fixed for this object's lifetime, so
                a restart keeps the same bootstrap address).
            controller_port: KRaft controller port; a free port when None.
            version: Kafka version to run.
            cache_dir: Jar cache root.
            die_with_parent: SIGKILL the broker if the starting process dies (test
                sessions set this so a crashed pytest leaves no JVM behind).
        """
        self.data_dir = Path(data_dir).resolve()
        free = iter(find_free_ports(2))
        self.port = port if port is not None else next(free)
        self.controller_port = controller_port if controller_port is not None else next(free)
        if self.port == self.controller_port:
            self.controller_port = next(free)
        self.version = version
        self.cache_dir = Path(cache_dir)
        self.die_with_parent = die_with_parent
        self._proc: subprocess.Popen[bytes] | None = None

    # -- paths and addresses

    @property
    def bootstrap_servers(self) -> str:
        """The client bootstrap address, ``127.0.0.1:<port>``."""
        return f"{HOST}:{self.port}"

    @property
    def libs_dir(self) -> Path:
        """Directory of the cached Kafka jars."""
        return libs_dir_for(self.version, self.cache_dir)

    @property
    def log_path(self) -> Path:
        """The broker's combined stdout/stderr log."""
        return self.data_dir / LOG_FILE

    @property
    def pid_path(self) -> Path:
        """The pid file of the running broker."""
        return self.data_dir / PID_FILE

    @property
    def pid(self) -> int | None:
        """Pid of the running broker, or None when it is not running."""
        if self._proc is not None:
            return self._proc.pid if self._proc.poll() is None else None
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _process_alive(pid) else None

    def is_running(self) -> bool:
        """Return whether the broker process is alive (not necessarily ready).

        Returns:
            True while the JVM runs.
        """
        return self.pid is not None

    def is_formatted(self) -> bool:
        """Return whether the KRaft storage in ``data_dir`` has been formatted.

        Returns:
            True when ``meta.properties`` exists.
        """
        return (self.data_dir / KRAFT_LOG_DIR / META_PROPERTIES).is_file()

    # -- lifecycle

    def fetch(self) -> Path:
        """Fetch the jars (cached after the first call).

        Returns:
            The jar directory.
        """
        return fetch(self.version, self.cache_dir)

    def _write_config(self) -> tuple[Path, Path]:
        """Write ``server.properties`` and ``log4j2.properties`` into the data dir.

        Returns:
            Paths of the two files.

        Raises:
            BrokerError: The storage was formatted for a different controller port.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        server_path = self.data_dir / SERVER_PROPERTIES
        log4j_path = self.data_dir / LOG4J2_CONFIG
        if self.is_formatted() and server_path.is_file():
            old = parse_properties(server_path.read_text())
            wanted = f"{HOST}:{self.controller_port}"
            if old.get("controller.quorum.bootstrap.servers", wanted) != wanted:
                msg = (
                    f"{self.data_dir} was formatted with controller "
                    f"{old['controller.quorum.bootstrap.servers']}; reuse that controller "
                    "port or use a fresh data dir"
                )
                raise BrokerError(msg)
        props = server_properties(self.port, self.controller_port, self.data_dir)
        server_path.write_text(
            render_properties(props, header="Written by scripts/kafka_broker.py")
        )
        log4j_path.write_text(render_log4j2_config())
        return server_path, log4j_path

    def _format_storage(self, java: str, server_path: Path, log4j_path: Path) -> None:
        """Format the KRaft storage unless already formatted (a restart reuses the data).

        Args:
            java: ``java`` executable.
            server_path: ``server.properties``.
            log4j_path: log4j2 configuration.

        Raises:
            BrokerError: StorageTool failed.
        """
        if self.is_formatted():
            return
        args = ["format", "-t", generate_cluster_id(), "-c", str(server_path), "--standalone"]
        cmd = build_java_command(
            java,
            self.libs_dir,
            STORAGE_TOOL_MAIN,
            args,
            log4j2_config=log4j_path,
            heap_opts=TOOL_HEAP_OPTS,
        )
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0 or not self.is_formatted():
            msg = f"formatting KRaft storage failed:\n{result.stdout}{result.stderr}"
            raise BrokerError(msg)

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start the broker (formatting storage on first use) and wait until it serves.

        Idempotent: returns once ready if the broker of this data dir already runs.

        Args:
            timeout_s: Deadline for the broker to answer a metadata request.

        Raises:
            BrokerError: Jars missing, port taken, JVM exited, or not ready in time.
        """
        if self.is_running():
            self.wait_ready(timeout_s)
            return
        if not (self.cache_dir / self.version / FETCH_MARKER).is_file():
            msg = f"Kafka {self.version} jars are not fetched: run `kafka_broker.py fetch`"
            raise BrokerError(msg)
        for port in (self.port, self.controller_port):
            if not port_is_free(port):
                msg = f"port {HOST}:{port} is already in use; pick another --port"
                raise BrokerError(msg)
        java = find_java()
        server_path, log4j_path = self._write_config()
        self._format_storage(java, server_path, log4j_path)
        cmd = build_java_command(
            java, self.libs_dir, KAFKA_MAIN, [str(server_path)], log4j2_config=log4j_path
        )
        with self.log_path.open("ab") as log:
            log.write(f"\n=== kafka_broker.py start {time.ctime()} ===\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,
                preexec_fn=_set_parent_death_signal if self.die_with_parent else None,  # noqa: PLW1509
            )
        self.pid_path.write_text(f"{self._proc.pid}\n")
        try:
            self.wait_ready(timeout_s)
        except BrokerError:
            self.kill()
            raise

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Wait until the broker answers a metadata request.

        Args:
            timeout_s: Deadline in seconds.

        Raises:
            BrokerError: The JVM exited or the deadline passed (the log tail is included).
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.is_running():
                msg = f"Kafka broker exited during startup; log tail:\n{self.log_tail()}"
                raise BrokerError(msg)
            if broker_ready(self.bootstrap_servers):
                return
            time.sleep(POLL_INTERVAL_S)
        msg = (
            f"Kafka broker not ready at {self.bootstrap_servers} within {timeout_s:.0f} s; "
            f"log tail:\n{self.log_tail()}"
        )
        raise BrokerError(msg)

    def _signal(self, sig: signal.Signals) -> int | None:
        """Send ``sig`` to the broker's process group.

        Args:
            sig: Signal to send.

        Returns:
            The pid signalled, or None when the broker was not running.
        """
        pid = self.pid
        if pid is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)  # the JVM leads its own group (start_new_session)
        return pid

    def _wait_exit(self, timeout_s: float) -> bool:
        """Wait until the broker process is gone (reaping it if we started it).

        Args:
            timeout_s: Deadline in seconds.

        Returns:
            True when it exited in time.
        """
        if self._proc is not None:
            try:
                self._proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + timeout_s
        while self.is_running():
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_INTERVAL_S)
        return True

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop the broker gracefully (SIGTERM), SIGKILL it after ``timeout_s``; keep data.

        Args:
            timeout_s: Grace period for the controlled shutdown.
        """
        if self._signal(signal.SIGTERM) is not None and not self._wait_exit(timeout_s):
            self.kill()
            return
        self._cleanup()

    def kill(self) -> None:
        """SIGKILL the broker at once (data is kept; the next start recovers the logs)."""
        if self._signal(signal.SIGKILL) is not None:
            self._wait_exit(STOP_TIMEOUT_S)
        self._cleanup()

    def _cleanup(self) -> None:
        """Forget the process and remove the pid file."""
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=0)
            self._proc = None
        self.pid_path.unlink(missing_ok=True)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """Return the last ``lines`` lines of ``broker.log``.

        Args:
            lines: How many lines.

        Returns:
            The text, or a placeholder when there is no log yet.
        """
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "<no broker.log>"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Self:
        """Fetch and start the broker.

        Returns:
            This broker, running.
        """
        self.fetch()
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the broker."""
        self.stop()

    @classmethod
    def from_data_dir(
        cls,
        data_dir: Path | str,
        *,
        version: str = KAFKA_VERSION,
        cache_dir: Path | str = DEFAULT_CACHE_DIR,
    ) -> KafkaBroker:
        """Describe the broker whose config is already in ``data_dir`` (for stop/status).

        Args:
            data_dir: A data dir written by an earlier start.
            version: Kafka version.
            cache_dir: Jar cache root.

        Returns:
            A broker with the ports recorded in ``server.properties``, or the default
            ports when there is none.
        """
        path = Path(data_dir) / SERVER_PROPERTIES
        props = parse_properties(path.read_text()) if path.is_file() else {}
        port = int(props.get("advertised.listeners", f":{DEFAULT_PORT}").rpartition(":")[2])
        controller = props.get("controller.quorum.bootstrap.servers", f":{DEFAULT_CONTROLLER_PORT}")
        return cls(
            data_dir,
            port=port,
            controller_port=int(controller.rpartition(":")[2]),
            version=version,
            cache_dir=cache_dir,
        )


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    """Build the command-line parser.

    Returns:
        The parser.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kafka-version", default=KAFKA_VERSION, help="default: %(default)s")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help="fetch the broker jars from Maven Central (cached)")
    for name, text in (
        ("start", "start detached and wait until ready"),
        ("run", "run in the foreground until Ctrl-C"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--port", type=int, default=DEFAULT_PORT)
        cmd.add_argument("--controller-port", type=int, default=DEFAULT_CONTROLLER_PORT)
        cmd.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
        cmd.add_argument("--timeout", type=float, default=START_TIMEOUT_S)
    for name, text in (
        ("stop", "SIGTERM, then SIGKILL after --timeout"),
        ("kill", "SIGKILL at once"),
        ("status", "exit 0 if running, 1 if not"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
        cmd.add_argument("--timeout", type=float, default=STOP_TIMEOUT_S)
    return parser


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C while running in the foreground."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: Arguments (default ``sys.argv[1:]``).

    Returns:
        Process exit status.
    """
    args = _parser().parse_args(argv)
    try:
        if args.command == "fetch":
            started = time.monotonic()
            libs = fetch(args.kafka_version, args.cache_dir)
            print(f"Kafka {args.kafka_version} jars in {libs} ({time.monotonic() - started:.1f} s)")
            return 0
        if args.command in ("start", "run"):
            broker = KafkaBroker(
                args.data_dir,
                port=args.port,
                controller_port=args.controller_port,
                version=args.kafka_version,
                cache_dir=args.cache_dir,
            )
            broker.fetch()
            started = time.monotonic()
            broker.start(args.timeout)
            print(broker.bootstrap_servers, flush=True)
            print(
                f"Kafka {broker.version} ready in {time.monotonic() - started:.1f} s "
                f"(pid {broker.pid}, log {broker.log_path})",
                file=sys.stderr,
            )
            if args.command == "run":
                with _terminate_as_interrupt():
                    try:
                        while broker.is_running():
                            time.sleep(1.0)
                    except KeyboardInterrupt:
                        print("stopping Kafka broker", file=sys.stderr)
                    finally:
                        broker.stop()
            return 0
        broker = KafkaBroker.from_data_dir(
            args.data_dir, version=args.kafka_version, cache_dir=args.cache_dir
        )
        if args.command == "status":
            running = broker.is_running()
            state = f"running (pid {broker.pid})" if running else "stopped"
            print(f"{broker.bootstrap_servers} {state}")
            return 0 if running else 1
        if args.command == "stop":
            broker.stop(args.timeout)
        else:
            broker.kill()
        return 0
    except BrokerError as exc:
        print(f"kafka_broker.py: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
