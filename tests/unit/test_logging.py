"""Logging: librdkafka's lines routed into structlog, repeats rate-limited, every line JSON."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import structlog
from confluent_kafka import Producer
from structlog.testing import capture_logs

from stream_scorer.logging import (
    LIBRDKAFKA_EVENT,
    REPEAT_INTERVAL_S,
    LineLogger,
    RepeatLimiter,
    configure_logging,
    librdkafka_logger,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Longest a test waits for librdkafka to report a refused connection.
CONNECT_DEADLINE_S = 15.0
#: Longest the scorer may take to stop after SIGTERM (it finishes a batch; there is none).
STOP_DEADLINE_S = 30.0


class FakeClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _limit(limiter: RepeatLimiter, event: str, method: str = "warning", **fields: Any) -> Any:
    """Run one event through the limiter: the event dict, or None when dropped."""
    try:
        return limiter(None, method, {"event": event, **fields})
    except structlog.DropEvent:
        return None


def test_repeats_of_one_kind_pass_once_per_interval_with_a_count() -> None:
    """Within an interval only the first line of a kind passes; the next carries the count."""
    clock = FakeClock()
    limiter = RepeatLimiter(10.0, {"kafka_error": ("code",)}, clock)

    first = _limit(limiter, "kafka_error", code="_TRANSPORT")
    dropped = [_limit(limiter, "kafka_error", code="_TRANSPORT") for _ in range(5)]
    clock.now += 9.9
    still = _limit(limiter, "kafka_error", code="_TRANSPORT")
    clock.now += 0.1
    next_line = _limit(limiter, "kafka_error", code="_TRANSPORT")
    clock.now += 10.0
    after_quiet = _limit(limiter, "kafka_error", code="_TRANSPORT")

    assert first == {"event": "kafka_error", "code": "_TRANSPORT"}
    assert dropped == [None] * 5
    assert still is None
    assert next_line == {"event": "kafka_error", "code": "_TRANSPORT", "suppressed": 6,
                         "suppressed_window_s": 10.0}  # fmt: skip
    assert after_quiet == {"event": "kafka_error", "code": "_TRANSPORT"}


def test_kinds_are_limited_separately_and_other_events_pass() -> None:
    """Another code, another level or an unlisted event is not held back by a limited kind."""
    limiter = RepeatLimiter(10.0, {"kafka_error": ("code",)}, FakeClock())

    assert _limit(limiter, "kafka_error", code="_TRANSPORT") is not None
    assert _limit(limiter, "kafka_error", code="_ALL_BROKERS_DOWN") is not None
    assert _limit(limiter, "kafka_error", "error", code="_TRANSPORT") is not None
    assert [_limit(limiter, "batch_processed", n=i) for i in range(3)] == [
        {"event": "batch_processed", "n": i} for i in range(3)
    ]
    assert _limit(limiter, "kafka_error", code="_TRANSPORT") is None


class ReenteringFile(io.StringIO):
    """A file whose first write logs again first, as a signal handler does mid-write."""

    def __init__(self) -> None:
        super().__init__()
        self.logger: LineLogger | None = None
        self.reentered = False

    def write(self, text: str) -> int:
        if not self.reentered and self.logger is not None:
            self.reentered = True
            self.logger.msg('{"event": "stop_requested"}')
        return super().write(text)


def test_a_line_logged_while_a_line_is_written_does_not_deadlock() -> None:
    """A log call re-entering the writer (a signal handler) completes, and both lines are whole."""
    file = ReenteringFile()
    file.logger = LineLogger(file)
    writer = threading.Thread(
        target=file.logger.msg, args=('{"event": "kafka_error"}',), daemon=True
    )

    writer.start()
    writer.join(timeout=5)

    assert not writer.is_alive(), "the nested log call deadlocked"
    assert file.getvalue().splitlines() == [
        '{"event": "stop_requested"}',
        '{"event": "kafka_error"}',
    ]


def test_limiter_can_be_reentered() -> None:
    """The limiter's lock is re-entrant: a handler logging while it is held does not hang."""
    limiter = RepeatLimiter(10.0, {"kafka_error": ("code",)}, FakeClock())
    outcome: list[Any] = []

    def nested() -> None:
        with limiter._lock:  # what an interrupted thread holds when its signal handler logs
            outcome.append(_limit(limiter, "kafka_error", code="_TRANSPORT"))

    thread = threading.Thread(target=nested, daemon=True)
    thread.start()
    thread.join(timeout=5)

    assert not thread.is_alive()
    assert outcome == [{"event": "kafka_error", "code": "_TRANSPORT"}]


def _dead_address() -> str:
    """127.0.0.1:<port> where nothing listens (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def test_librdkafka_lines_become_structlog_events() -> None:
    """A real client's connection failure arrives as a `librdkafka` event at level error."""
    configure_logging("debug", "json", cache=False)
    producer = Producer({"bootstrap.servers": _dead_address(), "logger": librdkafka_logger()})
    with capture_logs() as logs:
        deadline = time.monotonic() + CONNECT_DEADLINE_S
        while time.monotonic() < deadline and not any(e["event"] == LIBRDKAFKA_EVENT for e in logs):
            producer.poll(0.1)  # logs are served from the client's queue by poll()

    failures = [e for e in logs if e["event"] == LIBRDKAFKA_EVENT and e["facility"] == "FAIL"]
    assert failures, logs
    assert failures[0]["log_level"] == "error"  # syslog LOG_ERR (3) mapped to error
    assert failures[0]["client"].startswith("rdkafka#producer-")
    assert "Connection refused" in failures[0]["message"]


def test_librdkafka_logger_levels_follow_the_configured_level(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A librdkafka debug line is dropped at level info; warnings are rendered as JSON."""
    configure_logging("info", "json", cache=False)
    logger = librdkafka_logger()

    logger.log(logging.DEBUG, "%s [%s] %s", "BROKER", "c#consumer-1", "noise")
    logger.log(logging.WARNING, "%s [%s] %s", "CONFWARN", "c#consumer-1", "ignored property")

    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(e["event"], e["level"], e["facility"]) for e in lines] == [
        (LIBRDKAFKA_EVENT, "warning", "CONFWARN")
    ]
    assert logging.getLogger("stream_scorer.librdkafka").propagate is False  # rendered once


def test_python_warnings_are_log_lines(capsys: pytest.CaptureFixture[str]) -> None:
    """A Python warning from a library becomes one JSON log line, not raw stderr text."""
    import warnings  # noqa: PLC0415 - only this test warns

    configure_logging("info", "json", cache=False)
    try:
        warnings.warn("old thing", DeprecationWarning, stacklevel=1)
    finally:
        logging.captureWarnings(False)

    (line,) = capsys.readouterr().err.splitlines()
    assert json.loads(line)["logger"] == "py.warnings"


@pytest.mark.slow
def test_run_with_the_broker_down_logs_json_at_a_bounded_rate(tmp_path: Path) -> None:
    """`run` against a dead broker: every line is JSON, and repeats are one per kind per interval.

    The run is stopped (SIGTERM) once a line reports suppressed repeats, i.e. one interval has
    passed with the broker down, or at a deadline.
    """
    planted = "Sekrit-log-4711"
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("STREAM_SCORER_")}
    env |= {
        "STREAM_SCORER_KAFKA__BOOTSTRAP_SERVERS": _dead_address(),
        "STREAM_SCORER_KAFKA__SASL_PASSWORD": planted,
        "STREAM_SCORER_SCHEMA__WIRE_FORMAT": "plain",
        "STREAM_SCORER_METRICS__ENABLED": "false",
        "STREAM_SCORER_LOG__FORMAT": "json",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "stream_scorer", "run"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    assert process.stdout is not None
    stderr_lines: list[str] = []
    reported = threading.Event()

    def read_stderr() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            stderr_lines.append(line)
            if '"suppressed"' in line:
                reported.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    started = time.monotonic()
    reported.wait(timeout=3 * REPEAT_INTERVAL_S + 10)
    elapsed_s = time.monotonic() - started
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=STOP_DEADLINE_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"no exit {STOP_DEADLINE_S} s after SIGTERM; stderr: {stderr_lines[-5:]}")
    stdout = process.stdout.read()
    reader.join(timeout=10)

    events = [json.loads(line) for line in [*stderr_lines, *stdout.splitlines()]]
    assert all(isinstance(e, dict) for e in events)
    assert code == 0, events[-3:]
    assert reported.is_set(), "no line reported suppressed repeats"
    kinds = Counter(
        (e["event"], e["level"], e.get("code", e.get("facility")))
        for e in events
        if e["event"] in {LIBRDKAFKA_EVENT, "kafka_error"}
    )
    allowed = int(elapsed_s // REPEAT_INTERVAL_S) + 1
    assert kinds, "the dead broker was never reported"
    assert all(count <= allowed for count in kinds.values()), (kinds, elapsed_s)
    assert (LIBRDKAFKA_EVENT, "error", "FAIL") in kinds  # librdkafka's own line, routed
    assert sum(e.get("suppressed", 0) for e in events) > 10  # many repeats, held back
    assert len(events) < 40, f"{len(events)} lines in {elapsed_s:.0f} s"
    assert planted not in "".join(stderr_lines) + stdout
