"""Real ``stream-scorer run`` processes for the delivery tests, and the stream they consume.

:class:`ScorerProcess` starts the installed console script with a TOML config written to the
test's temporary directory, JSON logs to a file (unbuffered, so a ``kill -9`` loses no line),
and can ``kill -9`` it, ``SIGTERM`` it, read its RSS and find its metrics endpoint.
:class:`PacedProducer` streams pre-encoded events at a fixed rate from a thread, so scorers
can be killed and restarted while events arrive. :func:`offline_flagged` is the reference:
the same model scoring the same events offline.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import fastavro
import psutil
from confluent_kafka import Message, Producer

from stream_scorer.app import load_model, load_schema
from stream_scorer.devtools.generate import TransactionGenerator
from stream_scorer.offline import score_events
from stream_scorer.settings import load_settings

from .helpers import REPO, wait_until

__all__ = [
    "PacedProducer",
    "ScorerProcess",
    "base_config",
    "check_alerts",
    "decode_alert",
    "encode_events",
    "make_events",
    "offline_scores",
    "to_toml",
]

#: The console script under test (same interpreter as the tests).
SCORER_BIN = Path(sys.executable).with_name("stream-scorer")
#: Reader schema, also the writer for the plain wire format used by these tests.
READER = load_schema(REPO / "schemas/transaction.avsc", "reader")
ALERT_SCHEMA = fastavro.parse_schema(load_schema(REPO / "schemas/alert.avsc", "alert"))
#: Largest difference allowed between a stream score and the offline score (see check_alerts).
SCORE_TOLERANCE = 1e-6
#: How long a scorer may take to load its model and open its metrics endpoint.
START_TIMEOUT_S = 30.0

#: Model threshold of the delivery tests: ~12 % of events flagged, so most batches (and most
#: transactions a kill interrupts) carry alerts. The shipped model's threshold flags ~0.5 %.
THRESHOLD = 0.005


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    msg = f"cannot write {value!r} as TOML"
    raise TypeError(msg)


def to_toml(config: Mapping[str, Any]) -> str:
    """Render a two-level config (sections, optional sub-tables) as TOML."""
    lines: list[str] = []

    def table(name: str, values: Mapping[str, Any]) -> None:
        lines.append(f"[{name}]")
        nested = {k: v for k, v in values.items() if isinstance(v, Mapping)}
        for key, value in values.items():
            if not isinstance(value, Mapping) and value is not None:
                lines.append(f"{json.dumps(key)} = {_toml_value(value)}")
        for key, value in nested.items():
            table(f"{name}.{key}", value)

    for section, values in config.items():
        table(section, values)
    return "\n".join(lines) + "\n"


def base_config(bootstrap: str, topics: Mapping[str, str], **sections: Any) -> dict[str, Any]:
    """Config of a scorer under test: plain Avro, the shipped model, fast group moves."""
    config: dict[str, Any] = {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "group_id": f"it-{uuid.uuid4().hex[:10]}",
            # Tests: a killed member's partitions move after 6 s; production keeps defaults.
            "consumer": {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500},
        },
        "topics": dict(topics),
        "schema": {
            "wire_format": "plain",
            "reader": str(REPO / "schemas/transaction.avsc"),
            "alert": str(REPO / "schemas/alert.avsc"),
        },
        "model": {"path": str(REPO / "models/fraud/1")},
        "metrics": {"port": 0, "host": "127.0.0.1", "summary_interval_s": 2.0},
        "log": {"level": "debug", "format": "json"},
    }
    for name, values in sections.items():
        for key, value in values.items():
            if isinstance(value, Mapping) and isinstance(config[name].get(key), Mapping):
                config[name][key] = {**config[name][key], **value}
            else:
                config.setdefault(name, {})[key] = value
    return config


def encode_events(events: Sequence[Mapping[str, Any]]) -> list[tuple[bytes, bytes]]:
    """(key, plain Avro value) per event, keyed by card id like the real producers."""
    parsed = fastavro.parse_schema(READER)
    out = []
    for event in events:
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, parsed, event)
        out.append((event["card_id"].encode(), buffer.getvalue()))
    return out


def make_events(count: int, seed: int) -> list[dict[str, Any]]:
    """``count`` synthetic transactions (unique ids) from the seeded generator."""
    events, _ = TransactionGenerator(seed=seed).generate(count)
    return events


def offline_scores(events: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Score by event id of every event, scored offline with the shipped model."""
    settings = load_settings(None, {"model": {"path": str(REPO / "models/fraud/1")}}, environ={})
    model = load_model(settings, READER)
    return {r["event_id"]: r["score"] for r in score_events([dict(e) for e in events], model, 1000)}


def check_alerts(
    alerts: Sequence[Mapping[str, Any]], scores: Mapping[str, float], threshold: float
) -> None:
    """Every alert has its offline score and every event offline flags has an alert.

    onnxruntime sums tree outputs in float32 in an order that depends on the batch's size, so a
    stream score may differ from offline scoring of the same event by a float32 rounding
    (~1e-7); an event that close to the threshold may fall on either side of it.
    """
    alerted = {a["event_id"] for a in alerts}
    for alert in alerts:
        assert abs(alert["score"] - scores[alert["event_id"]]) <= SCORE_TOLERANCE, alert
    flagged = {i for i, s in scores.items() if s >= threshold}
    for event_id in alerted ^ flagged:
        assert abs(scores[event_id] - threshold) <= SCORE_TOLERANCE, (
            f"{event_id} (offline score {scores[event_id]}) alerted: {event_id in alerted}"
        )


def decode_alert(message: Message) -> dict[str, Any]:
    """The alert record of a plain-Avro alert message."""
    value = message.value()
    assert value is not None
    return fastavro.schemaless_reader(io.BytesIO(value), ALERT_SCHEMA, None)  # type: ignore[return-value]


class PacedProducer:
    """Produces pre-encoded messages at ``rate`` per second from a background thread."""

    def __init__(
        self, bootstrap: str, topic: str, messages: Sequence[tuple[bytes, bytes]], rate: float
    ) -> None:
        """Start producing at once."""
        self._producer = Producer({
            "bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True,
            "partitioner": "murmur2_random", "message.timeout.ms": 300_000,
        })  # fmt: skip
        self._topic = topic
        self._messages = messages
        self._rate = rate
        self.produced = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="paced-producer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            start = time.monotonic()
            step = max(1, int(self._rate / 100))
            for i in range(0, len(self._messages), step):
                for key, value in self._messages[i : i + step]:
                    while True:
                        try:
                            self._producer.produce(self._topic, key=key, value=value)
                            break
                        except BufferError:
                            self._producer.poll(0.05)
                self.produced = min(i + step, len(self._messages))
                self._producer.poll(0)
                delay = start + self.produced / self._rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)  # pacing the offered load, not synchronisation
            remaining = self._producer.flush(120)
            assert remaining == 0, f"{remaining} input events not acknowledged"
        except BaseException as exc:
            self.error = exc
            raise

    @property
    def done(self) -> bool:
        """All messages produced and acknowledged (or the producer failed)."""
        return not self._thread.is_alive()

    def join(self, timeout_s: float = 180) -> None:
        """Wait for the last acknowledgement; re-raise a producer failure."""
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "input producer did not finish"
        if self.error is not None:
            raise self.error


class ScorerProcess:
    """One ``stream-scorer run --config <toml>`` subprocess."""

    def __init__(
        self,
        tmp_path: Path,
        config: Mapping[str, Any],
        name: str = "scorer",
        env: Mapping[str, str] | None = None,
    ) -> None:
        """Write the config and start the process; logs go to ``<tmp_path>/<name>-N.log``."""
        index = len(list(tmp_path.glob(f"{name}-*.toml")))
        self.name = f"{name}-{index}"
        self.config_path = tmp_path / f"{self.name}.toml"
        self.config_path.write_text(to_toml(config))
        self.log_path = tmp_path / f"{self.name}.log"
        environ = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_SCORER_")}
        # PYTHONPATH: the scorer under test is this tree's code, whatever the venv points at.
        environ.update({"PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO), **(env or {})})
        self._log = self.log_path.open("wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [str(SCORER_BIN), "run", "--config", str(self.config_path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=environ,
            cwd=REPO,
        )
        self._metrics_url: str | None = None

    @property
    def pid(self) -> int:
        """Process id."""
        return self.proc.pid

    def alive(self) -> bool:
        """Still running."""
        return self.proc.poll() is None

    def events(self) -> list[dict[str, Any]]:
        """Every JSON log line written so far (non-JSON lines are skipped)."""
        out = []
        for line in self.log_path.read_bytes().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                out.append(record)
        return out

    def logged(self, event: str) -> list[dict[str, Any]]:
        """Log lines whose ``event`` is ``event``."""
        return [r for r in self.events() if r.get("event") == event]

    def metrics_url(self, timeout_s: float = START_TIMEOUT_S) -> str:
        """Base URL of the process's metrics endpoint (waits for the start-up log line)."""
        if self._metrics_url is None:

            def found() -> bool:
                assert self.alive(), f"{self.name} exited early:\n{self.tail()}"
                return bool(self.logged("metrics_serving"))

            wait_until(found, timeout_s, f"{self.name} to serve metrics")
            url = self.logged("metrics_serving")[0]["url"]
            self._metrics_url = url.removesuffix("/metrics")
        return self._metrics_url

    def readyz(self) -> int:
        """HTTP status of ``/readyz`` (0 when the endpoint does not answer)."""
        try:
            with urllib.request.urlopen(f"{self.metrics_url()}/readyz", timeout=2) as response:  # noqa: S310 - a loopback URL the test built
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except OSError:
            return 0

    def wait_assigned(self, timeout_s: float = 60) -> None:
        """Wait until the process logs its first partition assignment."""

        def assigned() -> bool:
            assert self.alive(), f"{self.name} exited early:\n{self.tail()}"
            return any(r.get("partitions") for r in self.logged("partitions_assigned"))

        wait_until(assigned, timeout_s, f"{self.name} to be assigned partitions")

    def rss_bytes(self) -> int:
        """Resident set size now (0 once the process is gone)."""
        try:
            return int(psutil.Process(self.proc.pid).memory_info().rss)
        except psutil.Error:
            return 0

    def kill(self) -> None:
        """``kill -9``: no flush, no commit, no leave-group."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self._log.close()

    def terminate(self) -> float:
        """Send SIGTERM; returns the monotonic time it was sent."""
        sent = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        return sent

    def wait(self, timeout_s: float = 60) -> int:
        """Wait for the exit code."""
        code = self.proc.wait(timeout_s)
        self._log.close()
        return code

    def tail(self, lines: int = 30) -> str:
        """The last log lines, for failure messages."""
        text = self.log_path.read_bytes().decode(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def close(self) -> None:
        """Kill the process if a test left it running."""
        if self.alive():
            self.kill()
        self._log.close()
