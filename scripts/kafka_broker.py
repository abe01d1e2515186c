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

    # TLS and SASL: extra SSL and SASL_SSL (SCRAM-SHA-512) listeners beside PLAINTEXT.
    tls = generate_tls_files(tmp_dir / "tls")  # a CA and a broker keystore (needs cryptography)
    broker = KafkaBroker(tmp_dir / "data", tls=tls, scram_users={"scorer": "s3cret"})
    broker.bootstrap_ssl, broker.bootstrap_sasl_ssl

Every fetched jar is checked against the SHA-256 list committed beside this script
(``scripts/kafka-jars-<version>.sha256``); a jar that differs, is missing or is not listed
fails the fetch and nothing is cached. ``python scripts/kafka_broker.py checksums`` writes the
list for a new version (Maven's strict checksum mode checks each download against the
``.sha1`` Maven Central publishes beside it; review the diff before committing it).

Only the standard library is required for the PLAINTEXT broker (``cryptography`` for TLS
material); ``confluent_kafka`` is used for the readiness check when importable (a raw
ApiVersions request is the fallback).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import fcntl
import hashlib
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = [
    "DEFAULT_CACHE_DIR",
    "DEFAULT_CONTROLLER_PORT",
    "DEFAULT_DATA_DIR",
    "DEFAULT_PORT",
    "KAFKA_VERSION",
    "SCRAM_MECHANISM",
    "BrokerError",
    "KafkaBroker",
    "TlsFiles",
    "build_java_command",
    "checksum_path_for",
    "fetch",
    "find_free_ports",
    "generate_cluster_id",
    "generate_tls_files",
    "jar_checksums",
    "main",
    "parse_checksums",
    "parse_properties",
    "render_checksums",
    "render_log4j2_config",
    "render_properties",
    "scram_format_args",
    "server_properties",
    "verify_jars",
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
# Written into <cache>/<version>/ after a fetch whose jars matched the committed checksum list;
# it records that list's digest, so a cache verified against another list (or none) is checked
# again before it is trusted.
FETCH_MARKER = ".fetch-complete"
# SHA-256 of every broker jar, one `<hex>  <file name>` line each (sha256sum's format), per
# Kafka version; committed, so a tampered download or cache fails loudly.
CHECKSUM_TEMPLATE = "kafka-jars-{version}.sha256"
# The only SASL mechanism the secured listener enables: salted, iterated and never sending the
# password (PLAIN would send it, inside TLS, to whoever holds the broker's certificate).
SCRAM_MECHANISM = "SCRAM-SHA-512"
# Listener names of the optional secured listeners (listener name = security protocol).
SSL_LISTENER = "SSL"
SASL_SSL_LISTENER = "SASL_SSL"
# Test certificates live two days: long enough for any test session, short if one leaks.
CERT_VALIDITY_DAYS = 2
# RSA key size of the test CA and broker certificate (what Java and OpenSSL accept everywhere).
RSA_KEY_BITS = 2048
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


@dataclass(frozen=True)
class TlsFiles:
    """The TLS material of a secured test broker, as written by :func:`generate_tls_files`."""

    ca_pem: Path
    """The CA certificate (PEM) clients trust: ``ssl.ca.location``."""
    keystore: Path
    """PKCS#12 keystore with the broker's key and certificate chain."""
    keystore_password: str
    """Password of the keystore and of the key inside it."""


def server_properties(
    port: int,
    controller_port: int,
    data_dir: Path,
    *,
    secure_ports: tuple[int, int] | None = None,
    tls: TlsFiles | None = None,
) -> dict[str, str]:
    """Return the single-node KRaft broker+controller configuration.

    Args:
        port: Client (PLAINTEXT) port.
        controller_port: KRaft controller port.
        data_dir: Directory holding the KRaft log dir.
        secure_ports: ``(ssl_port, sasl_ssl_port)``: add an SSL listener and a SASL_SSL
            listener with SCRAM-SHA-512 beside PLAINTEXT (needs ``tls``).
        tls: The broker's keystore, for the secured listeners.

    Returns:
        Property name to value, in the order written to ``server.properties``.

    Raises:
        ValueError: Secured ports without TLS material, or the reverse.
    """
    if (secure_ports is None) != (tls is None):
        msg = "secure_ports and tls go together"
        raise ValueError(msg)
    log_dir = str(data_dir / KRAFT_LOG_DIR)
    client = {"PLAINTEXT": port}
    if secure_ports is not None:
        client[SSL_LISTENER], client[SASL_SSL_LISTENER] = secure_ports
    advertised = ",".join(f"{name}://{HOST}:{p}" for name, p in client.items())
    protocols = ",".join(f"{name}:{name}" for name in client)
    props = {
        # KRaft combined mode: this one process is the whole cluster.
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.bootstrap.servers": f"{HOST}:{controller_port}",
        "controller.listener.names": "CONTROLLER",
        "listeners": f"{advertised},CONTROLLER://{HOST}:{controller_port}",
        "advertised.listeners": advertised,
        # The broker talks to itself (and readiness probes talk to it) in PLAINTEXT, so
        # the secured listeners change nothing for the default start path.
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": f"{protocols},CONTROLLER:PLAINTEXT",
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
    if tls is not None:
        props.update({
            # PKCS#12: the store type every Java 17 reads, with an encrypted key.
            "ssl.keystore.type": "PKCS12",
            "ssl.keystore.location": str(tls.keystore),
            "ssl.keystore.password": tls.keystore_password,
            "ssl.key.password": tls.keystore_password,
            # Server authentication only: clients prove who they are with SCRAM, not certs.
            "ssl.client.auth": "none",
            "sasl.enabled.mechanisms": SCRAM_MECHANISM,
            # SCRAM credentials live in the KRaft metadata (added at format time).
            f"listener.name.{SASL_SSL_LISTENER.lower()}.{SCRAM_MECHANISM.lower()}"
            ".sasl.jaas.config": "org.apache.kafka.common.security.scram.ScramLoginModule "
            "required;",
        })  # fmt: skip
    return props


def scram_format_args(users: Mapping[str, str]) -> list[str]:
    """Return the ``kafka-storage format`` arguments that create SCRAM-SHA-512 users.

    Args:
        users: User name to password.

    Returns:
        ``--add-scram SCRAM-SHA-512=[name=...,password=...]`` pairs.

    Raises:
        ValueError: A name or password contains a character the tool's syntax reserves.
    """
    args: list[str] = []
    for name, password in users.items():
        # The tool splits on these; quoting rules differ between Kafka versions, so refuse.
        if any(c in value for value in (name, password) for c in ',=[]"'):
            msg = f'SCRAM user {name!r}: names and passwords must not contain , = [ ] or "'
            raise ValueError(msg)
        args += ["--add-scram", f"{SCRAM_MECHANISM}=[name={name},password={password}]"]
    return args


def generate_tls_files(
    directory: Path,
    hosts: tuple[str, ...] = (HOST, "localhost"),
    *,
    days: int = CERT_VALIDITY_DAYS,
) -> TlsFiles:
    """Create a fresh CA and a broker certificate it signs for ``hosts`` (needs cryptography).

    Args:
        directory: Where ``ca.pem`` and ``broker.p12`` are written (created if missing).
        hosts: Subject alternative names of the broker: IP addresses and DNS names.
        days: Validity of both certificates.

    Returns:
        The files and the keystore password (random, per call).
    """
    # Imported here: the PLAINTEXT broker needs only the standard library.
    import ipaddress  # noqa: PLC0415

    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: PLC0415
    from cryptography.hazmat.primitives.serialization import pkcs12  # noqa: PLC0415
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: PLC0415

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    # Backdated a little: the JVM and librdkafka must not see a certificate from the future.
    not_before, not_after = now - timedelta(minutes=5), now + timedelta(days=days)

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
    ca_name = name(f"stream-scorer test CA {secrets.token_hex(4)}")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
    alt_names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name(hosts[0]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    password = secrets.token_urlsafe(18)
    ca_pem = directory / "ca.pem"
    ca_pem.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    keystore = directory / "broker.p12"
    keystore.write_bytes(
        pkcs12.serialize_key_and_certificates(
            b"broker",
            key,
            cert,
            [ca_cert],
            serialization.BestAvailableEncryption(password.encode()),
        )
    )
    keystore.chmod(0o600)
    return TlsFiles(ca_pem=ca_pem, keystore=keystore, keystore_password=password)


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


def checksum_path_for(version: str = KAFKA_VERSION) -> Path:
    """Return the committed checksum list of ``version``'s jars.

    Args:
        version: Kafka version.

    Returns:
        ``scripts/kafka-jars-<version>.sha256`` (it may not exist for an unvetted version).
    """
    return REPO_ROOT / "scripts" / CHECKSUM_TEMPLATE.format(version=version)


def jar_checksums(libs: Path) -> dict[str, str]:
    """Return the SHA-256 of every jar in ``libs``.

    Args:
        libs: A jar directory.

    Returns:
        File name to lowercase hex digest, sorted by name.
    """
    sums: dict[str, str] = {}
    for jar in sorted(Path(libs).glob("*.jar")):
        digest = hashlib.sha256()
        with jar.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        sums[jar.name] = digest.hexdigest()
    return sums


def render_checksums(sums: Mapping[str, str], header: str = "") -> str:
    """Render a checksum list in ``sha256sum`` format (``sha256sum -c`` can check it too).

    Args:
        sums: File name to hex digest.
        header: Optional comment line written first.

    Returns:
        The text, one ``<hex>  <name>`` line per file, sorted by name.
    """
    lines = [f"# {header}"] if header else []
    lines.extend(f"{sums[name]}  {name}" for name in sorted(sums))
    return "\n".join(lines) + "\n"


def parse_checksums(text: str) -> dict[str, str]:
    """Parse a checksum list written by :func:`render_checksums`.

    Args:
        text: File text; ``#`` comments and blank lines are skipped.

    Returns:
        File name to lowercase hex digest.

    Raises:
        BrokerError: A line is not ``<64 hex digits>  <name>``, or a name repeats.
    """
    sums: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        digest, _, name = line.partition("  ")
        digest = digest.lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest) or not name:
            msg = f"checksum list line {number} is not '<sha256 hex>  <file name>'"
            raise BrokerError(msg)
        if name in sums:
            msg = f"checksum list line {number}: {name} is listed twice"
            raise BrokerError(msg)
        sums[name] = digest
    return sums


def verify_jars(libs: Path, expected: Mapping[str, str]) -> None:
    """Check that ``libs`` holds exactly the listed jars, each with its listed SHA-256.

    Args:
        libs: The jar directory.
        expected: File name to hex digest (from the committed list).

    Raises:
        BrokerError: A jar differs, is missing, or is not listed (every problem is named).
    """
    actual = jar_checksums(libs)
    problems = [
        f"{name}: sha256 {actual[name]}, expected {expected[name]}"
        for name in sorted(actual.keys() & expected.keys())
        if actual[name] != expected[name]
    ]
    problems += [f"{name}: missing" for name in sorted(expected.keys() - actual.keys())]
    problems += [f"{name}: not in the list" for name in sorted(actual.keys() - expected.keys())]
    if problems:
        msg = f"Kafka jars in {libs} fail checksum verification:\n  " + "\n  ".join(problems)
        raise BrokerError(msg)


def _marker_text(version: str, expected: Mapping[str, str]) -> str:
    # The digest of the list the jars were verified against: a changed list re-verifies.
    digest = hashlib.sha256(render_checksums(expected).encode()).hexdigest()
    return f"kafka_2.13 {version} verified sha256-list {digest}\n"


def _run_maven(version: str, libs: Path, timeout_s: float) -> None:
    """Copy the runtime jars of Kafka ``version`` into ``libs`` with Maven.

    Raises:
        BrokerError: Maven is missing, failed, or did not finish in time.
    """
    mvn = shutil.which("mvn")
    if mvn is None:
        msg = "mvn not found: install Maven 3.6+ to fetch the Kafka broker jars"
        raise BrokerError(msg)
    shutil.rmtree(libs, ignore_errors=True)
    cmd = [
        mvn,
        "-B",
        "-q",
        # Strict checksums: a download that does not match the .sha1/.md5 the repository
        # publishes beside it fails (Maven only warns by default).
        "-C",
        "-f",
        str(POM_PATH),
        f"-Dkafka.version={version}",
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={libs}",
    ]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        msg = f"mvn did not finish fetching Kafka {version} within {timeout_s:.0f} s"
        raise BrokerError(msg) from exc
    if result.returncode != 0 or not any(libs.glob(f"kafka_2.13-{version}.jar")):
        msg = (
            f"fetching Kafka {version} with Maven failed (exit {result.returncode}):\n"
            f"{result.stdout[-4000:]}{result.stderr[-4000:]}"
        )
        raise BrokerError(msg)


def fetch(
    version: str = KAFKA_VERSION,
    cache_dir: Path = DEFAULT_CACHE_DIR,
    *,
    timeout_s: float = FETCH_TIMEOUT_S,
    checksums: Path | None = None,
    verify: bool = True,
) -> Path:
    """Fetch the Kafka broker jars from Maven Central unless cached, and verify them.

    Concurrent callers (e.g. pytest-xdist workers) serialise on a lock file. The cache is
    trusted only while the marker written after a verified fetch names the current checksum
    list; otherwise jars already cached are verified again (no download), and a fresh download
    is verified before the marker is written. A jar that fails is never run: the jar directory
    is removed and the error names every jar that differs.

    Args:
        version: Kafka version (``org.apache.kafka:kafka_2.13``).
        cache_dir: Cache root.
        timeout_s: Limit for the Maven run.
        checksums: The checksum list; default :func:`checksum_path_for` ``(version)``.
        verify: False only to create a checksum list: jars are fetched, nothing is marked
            as verified (``start`` refuses them until a verified fetch).

    Returns:
        The directory holding the jars.

    Raises:
        BrokerError: The checksum list is missing or malformed, Maven is missing or failed,
            or a jar does not match the list.
    """
    version_dir = Path(cache_dir) / version
    libs = libs_dir_for(version, cache_dir)
    marker = version_dir / FETCH_MARKER
    if not verify:
        version_dir.mkdir(parents=True, exist_ok=True)
        marker.unlink(missing_ok=True)
        with (version_dir / ".fetch.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            _run_maven(version, libs, timeout_s)
        return libs
    list_path = checksums if checksums is not None else checksum_path_for(version)
    try:
        expected = parse_checksums(Path(list_path).read_text(encoding="utf-8"))
    except OSError as exc:
        msg = (
            f"no checksum list for Kafka {version} ({list_path}): write one with "
            f"`kafka_broker.py --kafka-version {version} checksums` and review it"
        )
        raise BrokerError(msg) from exc
    wanted = _marker_text(version, expected)

    def is_verified() -> bool:
        return marker.is_file() and marker.read_text() == wanted

    if is_verified():
        return libs
    version_dir.mkdir(parents=True, exist_ok=True)
    with (version_dir / ".fetch.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_verified():  # another process fetched while we waited
            return libs
        marker.unlink(missing_ok=True)
        if any(libs.glob("*.jar")):
            # Cached before verification existed, or against another list: check, no download.
            try:
                verify_jars(libs, expected)
            except BrokerError as exc:
                print(f"kafka_broker.py: {exc}\nfetching them again", file=sys.stderr)
                shutil.rmtree(libs, ignore_errors=True)  # fetched afresh and checked below
            else:
                marker.write_text(wanted)
                return libs
        _run_maven(version, libs, timeout_s)
        try:
            verify_jars(libs, expected)
        except BrokerError:
            shutil.rmtree(libs, ignore_errors=True)
            raise
        marker.write_text(wanted)
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
        tls: TlsFiles | None = None,
        scram_users: Mapping[str, str] | None = None,
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
            tls: When set, also serve an SSL listener and a SASL_SSL listener (SCRAM-SHA-512)
                on free ports, with this keystore; PLAINTEXT stays as it is.
            scram_users: SCRAM-SHA-512 users (name to password) created when the storage is
                formatted, i.e. on the first start of a fresh data dir.

        Raises:
            ValueError: ``scram_users`` without ``tls`` (SCRAM is served on SASL_SSL only).
        """
        if scram_users and tls is None:
            msg = "scram_users need tls: SCRAM is served on the SASL_SSL listener only"
            raise ValueError(msg)
        self.data_dir = Path(data_dir).resolve()
        free = iter(find_free_ports(5))
        self.port = port if port is not None else next(free)
        self.controller_port = controller_port if controller_port is not None else next(free)
        if self.port == self.controller_port:
            self.controller_port = next(free)
        taken = {self.port, self.controller_port}
        spare = (p for p in free if p not in taken)
        self.tls = tls
        self.scram_users = dict(scram_users or {})
        #: ``(ssl_port, sasl_ssl_port)`` of the secured listeners, or None without ``tls``.
        self.secure_ports = (next(spare), next(spare)) if tls is not None else None
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
    def bootstrap_ssl(self) -> str:
        """The SSL listener's address (``tls`` must be set)."""
        return f"{HOST}:{self._secure_ports[0]}"

    @property
    def bootstrap_sasl_ssl(self) -> str:
        """The SASL_SSL (SCRAM-SHA-512) listener's address (``tls`` must be set)."""
        return f"{HOST}:{self._secure_ports[1]}"

    @property
    def _secure_ports(self) -> tuple[int, int]:
        if self.secure_ports is None:
            msg = "this broker has no secured listeners: pass tls=generate_tls_files(...)"
            raise BrokerError(msg)
        return self.secure_ports

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
        props = server_properties(
            self.port,
            self.controller_port,
            self.data_dir,
            secure_ports=self.secure_ports,
            tls=self.tls,
        )
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
        args += scram_format_args(self.scram_users)
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
        for port in (self.port, self.controller_port, *(self.secure_ports or ())):
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
        # The PLAINTEXT entry: a secured broker advertises more listeners after it.
        advertised = props.get("advertised.listeners", f"PLAINTEXT://:{DEFAULT_PORT}")
        plaintext = next(
            (entry for entry in advertised.split(",") if entry.startswith("PLAINTEXT://")),
            f":{DEFAULT_PORT}",
        )
        port = int(plaintext.rpartition(":")[2])
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
    sub.add_parser("fetch", help="fetch the broker jars from Maven Central (cached, verified)")
    sub.add_parser(
        "checksums",
        help="fetch afresh and write scripts/kafka-jars-<version>.sha256 (review before commit)",
    )
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
        if args.command == "checksums":
            libs = fetch(args.kafka_version, args.cache_dir, verify=False)
            sums = jar_checksums(libs)
            path = checksum_path_for(args.kafka_version)
            path.write_text(
                render_checksums(
                    sums,
                    header=f"SHA-256 of the Kafka {args.kafka_version} broker jars "
                    "(scripts/kafka_broker.py checksums)",
                )
            )
            fetch(args.kafka_version, args.cache_dir)  # verifies what was just listed
            print(f"{len(sums)} jars listed in {path}")
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
