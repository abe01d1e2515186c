"""structlog configuration, done once from the CLI; librdkafka's own log lines routed into it.

JSON lines when stderr is not a terminal (containers, CI), the console renderer on a terminal;
UTC ISO timestamps; a filtering bound logger so disabled levels cost nothing. Standard-library
log records from libraries (and Python warnings) go through the same renderer, so with JSON on
every line on stderr is one JSON object.

librdkafka writes its own log lines (``%3|1700000000.123|FAIL|...``) straight to stderr unless a
``logging.Logger`` is given as the ``logger`` client setting: :func:`librdkafka_logger` returns
that logger, whose records become structlog events named ``librdkafka`` (``facility``,
``client``, ``message``; syslog levels mapped by confluent-kafka to ERROR, WARNING, INFO, DEBUG).

A broker that is down makes every client report the same failure many times a second (seen:
257 raw lines and 220 warnings in 11 s). :class:`RepeatLimiter` lets one line per kind through
per interval and adds ``suppressed``, the number of lines of that kind dropped since the last
one shown. The kinds limited are :data:`RATE_LIMITED_EVENTS`; every other event passes as is.

Lines are written by :class:`LineLogger`: one ``write`` per line under a re-entrant lock. The
stop-signal handler logs, and a signal runs its handler on the main thread between two
bytecodes, possibly while that thread is inside a log write: structlog's ``PrintLogger`` holds a
plain lock there, so the handler waited for itself forever (seen: ``run`` hanging after SIGTERM
with the broker down). Re-entrant, the handler's line goes out whole before or after the
interrupted one.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TextIO

import structlog

__all__ = [
    "LIBRDKAFKA_EVENT",
    "LIBRDKAFKA_LOGGER",
    "RATE_LIMITED_EVENTS",
    "REPEAT_INTERVAL_S",
    "LineLogger",
    "RepeatLimiter",
    "configure_logging",
    "json_output",
    "librdkafka_logger",
]

#: structlog level names to stdlib numbers.
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}  # fmt: skip
#: Name of the stdlib logger handed to librdkafka (confluent-kafka's ``logger`` setting).
LIBRDKAFKA_LOGGER = "stream_scorer.librdkafka"
#: Event name of a librdkafka log line in structlog.
LIBRDKAFKA_EVENT = "librdkafka"
#: One line per kind per this many seconds: often enough to see an outage persist, rare
#: enough that a broker down for an hour writes hundreds of lines, not hundreds of thousands.
REPEAT_INTERVAL_S = 10.0
#: Events that repeat while a client retries, and the fields that make up their kind:
#: librdkafka lines by facility (FAIL, REQTMOUT...), client errors (from the consumer's
#: ``error_cb``) by error code, per-message consumer errors by their text; each also by level.
RATE_LIMITED_EVENTS: Mapping[str, tuple[str, ...]] = {
    LIBRDKAFKA_EVENT: ("facility",),
    "kafka_error": ("code",),
    "consumer_message_error": ("error",),
}


#: One re-entrant lock per output file, shared by every LineLogger writing to it.
_FILE_LOCKS: dict[int, threading.RLock] = {}
_FILE_LOCKS_GUARD = threading.Lock()


def _file_lock(file: TextIO) -> threading.RLock:
    with _FILE_LOCKS_GUARD:
        return _FILE_LOCKS.setdefault(id(file), threading.RLock())


class LineLogger:
    """A structlog logger writing each rendered line with one ``write``, safe in signal handlers."""

    def __init__(self, file: TextIO) -> None:
        """Write to ``file`` (stderr in the service)."""
        self._file = file
        self._lock = _file_lock(file)

    def msg(self, message: str) -> None:
        """Write ``message`` and a newline as one write, then flush."""
        with self._lock:
            self._file.write(message + "\n")
            self._file.flush()

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


class LineLoggerFactory:
    """structlog logger factory for :class:`LineLogger`."""

    def __init__(self, file: TextIO) -> None:
        """Every logger writes to ``file``."""
        self._file = file

    def __call__(self, *args: Any) -> LineLogger:
        """A logger for ``file`` (structlog passes the logger name; it is not needed)."""
        del args
        return LineLogger(self._file)


@dataclass(slots=True)
class _Seen:
    #: Monotonic time from which the next line of this kind is shown.
    next_at: float
    #: Lines of this kind dropped since the last one shown.
    suppressed: int = 0


class RepeatLimiter:
    """structlog processor: one line per kind per interval, with a count of those dropped.

    Thread-safe: librdkafka callbacks, the loop and the watchdog log from different threads.
    """

    def __init__(
        self,
        interval_s: float = REPEAT_INTERVAL_S,
        kinds: Mapping[str, tuple[str, ...]] = RATE_LIMITED_EVENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Limit the events named in ``kinds``, keyed by the listed fields.

        Args:
            interval_s: At most one line per kind per this many seconds.
            kinds: Event name → fields whose values make up the kind.
            clock: Monotonic seconds (a fake one in tests).
        """
        self._interval_s = interval_s
        self._kinds = kinds
        self._clock = clock
        self._seen: dict[tuple[Any, ...], _Seen] = {}
        # Re-entrant: a signal handler may log while this thread is inside the lock.
        self._lock = threading.RLock()

    def __call__(
        self, logger: Any, method_name: str, event_dict: structlog.typing.EventDict
    ) -> structlog.typing.EventDict:
        """Pass the event, adding ``suppressed`` when some were dropped; or drop it.

        Raises:
            structlog.DropEvent: A line of this kind was shown less than an interval ago.
        """
        del logger
        fields = self._kinds.get(event_dict.get("event"))  # type: ignore[arg-type]  # event may be any object
        if fields is None:
            return event_dict
        kind = (event_dict.get("event"), method_name, *(str(event_dict.get(f)) for f in fields))
        now = self._clock()
        with self._lock:
            seen = self._seen.get(kind)
            if seen is not None and now < seen.next_at:
                seen.suppressed += 1
                raise structlog.DropEvent
            suppressed = seen.suppressed if seen is not None else 0
            self._seen[kind] = _Seen(now + self._interval_s)
        if suppressed:
            event_dict["suppressed"] = suppressed
            event_dict["suppressed_window_s"] = self._interval_s
        return event_dict


class _LibrdkafkaHandler(logging.Handler):
    """Turns confluent-kafka's ``logger.log(level, "%s [%s] %s", fac, name, buf)`` into events."""

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args
        if isinstance(args, tuple) and len(args) == 3:
            facility, client, message = (str(a) for a in args)
        else:  # not the call shape confluent-kafka uses: keep the text whole
            facility, client, message = "", "", record.getMessage()
        structlog.get_logger(LIBRDKAFKA_LOGGER).log(
            record.levelno, LIBRDKAFKA_EVENT, facility=facility, client=client, message=message
        )


def librdkafka_logger() -> logging.Logger:
    """The logger to pass as confluent-kafka's ``logger`` client setting.

    Its records go to structlog (and so through :class:`RepeatLimiter` and the renderer) as
    ``librdkafka`` events; level filtering is structlog's, so ``log.level`` applies.
    """
    logger = logging.getLogger(LIBRDKAFKA_LOGGER)
    if not any(isinstance(h, _LibrdkafkaHandler) for h in logger.handlers):
        logger.addHandler(_LibrdkafkaHandler())
    logger.setLevel(logging.DEBUG)
    logger.propagate = False  # rendered once, by structlog, not again by the root handler
    return logger


#: Whether the last :func:`configure_logging` chose JSON lines (read by :func:`json_output`).
_json_output = False


def json_output() -> bool:
    """Whether log lines are JSON: then the CLI's last error line is JSON too."""
    return _json_output


def configure_logging(
    level: str = "info",
    fmt: Literal["auto", "json", "console"] = "auto",
    cache: bool = True,
    repeat_interval_s: float = REPEAT_INTERVAL_S,
) -> None:
    """Configure structlog and route stdlib logging and warnings through it.

    Args:
        level: Lowest level to log.
        fmt: ``auto`` picks console on a TTY, JSON otherwise.
        cache: Cache loggers on first use (off in tests, so reconfiguring works).
        repeat_interval_s: One line per kind of repeated client error per this many seconds.
    """
    global _json_output  # noqa: PLW0603 - one process, one log format
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    _json_output = use_json
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            RepeatLimiter(repeat_interval_s),
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=LineLoggerFactory(sys.stderr),
        cache_logger_on_first_use=cache,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level])
    # warnings.warn(...) from libraries becomes a log record, not a raw two-line stderr text.
    # Off then on: a second configure (tests, the demo) re-installs over whatever came since.
    logging.captureWarnings(False)
    logging.captureWarnings(True)
