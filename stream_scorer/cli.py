"""Command line: ``run``, ``config check|example``, ``produce``, ``score-file``, ``replay``
and ``demo``.

``main()`` returns the exit code (README "Exit codes"):

- 0: success or a clean stop (SIGTERM/SIGINT during ``run``; output closed early by its
  reader, e.g. ``score-file ... | head``);
- 1: a fatal error while running (broker, model or delivery failure; an input file that
  breaks off midway);
- 2: nothing was done because the command, its configuration or its input is wrong (argparse
  usage errors, bad settings, unreadable schema or model, missing or non-Avro input file);
- 130: interrupted by Ctrl-C outside ``run`` (which treats it as a clean stop).

Every error is one line on stderr, ``stream-scorer: <kind>: <what>``, never a traceback (with
``--log-level debug`` an unexpected error also logs its traceback). Flags cover per-invocation
choices only; everything else is settings (TOML file plus ``STREAM_SCORER_*`` environment
variables).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import structlog

from stream_scorer import __version__
from stream_scorer.errors import ConfigurationError, FatalError
from stream_scorer.logging import configure_logging, json_output
from stream_scorer.settings import ENV_PREFIX, Settings, load_settings, resource_root

__all__ = ["main"]

log = structlog.get_logger(__name__)

#: Exit codes (module docstring; README "Exit codes").
EXIT_OK, EXIT_FATAL, EXIT_CONFIG = 0, 1, 2
#: Ctrl-C outside ``run``: the shell's convention, 128 + SIGINT.
EXIT_INTERRUPTED = 130
#: First bytes of every Avro object container file.
AVRO_MAGIC = b"Obj\x01"
#: The example configuration shipped with the package (``config example`` prints it).
EXAMPLE_CONFIG = "scorer.example.toml"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the usage block would bury the one line that matters."""

    def error(self, message: str) -> NoReturn:
        """Print ``<prog>: error: <message> (see --help)`` and exit 2."""
        self.exit(EXIT_CONFIG, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0 or value == float("inf"):
        msg = f"expected a number >= 0, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    value = _non_negative_float(text)
    if value == 0:
        msg = f"expected a number > 0, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _fraction(text: str) -> float:
    """argparse type: a share between 0 and 1."""
    value = _non_negative_float(text)
    if value > 1:
        msg = f"expected a share between 0 and 1, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        msg = f"expected a whole number >= 1, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _add_config(parser: argparse.ArgumentParser, log_level: bool = True) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        help=f"TOML settings file (relative paths in it resolve against its folder); any key "
        f"can be overridden by {ENV_PREFIX}<SECTION>__<KEY>. Default: built-in defaults, with "
        "the schemas and model shipped in the package",
    )
    if log_level:
        parser.add_argument(
            "--log-level",
            choices=["debug", "info", "warning", "error"],
            help=f"lowest level logged; beats log.level and {ENV_PREFIX}LOG__LEVEL",
        )


def _add_replay(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``replay``: its flags (per-invocation choices; the rest is settings)."""
    history_replay = sub.add_parser(
        "replay",
        help="score a historical range of a topic with a model (and another to compare), "
        "without joining the group or committing",
    )
    _add_config(history_replay)
    r = history_replay.add_argument
    r("--topic", default=None, help="topic to read (default: topics.input)")
    r("--from", dest="from_", metavar="N|P:N,..", help="first offset (default: earliest)")
    r("--to", default=None, metavar="N|P:N,..", help="end offset, not read (default: the end)")
    r("--since", default=None, metavar="TIME", help="ISO-8601 or epoch ms (offsets_for_times)")
    r("--until", default=None, metavar="TIME", help="ISO-8601 or epoch ms: the end, not read")
    r("--model", required=True, metavar="NAME/VERSION|NAME@ALIAS", help="the version replayed")
    r("--against", default=None, metavar="NAME@ALIAS|NAME/VERSION", help="compare with it")
    r("--json", action="store_true", help="the report as JSON")
    r("--png", type=Path, default=None, help="both score distributions as a PNG (plot extra)")
    r("--out", type=Path, default=None, help="per-event results as score-file writes them")
    r("--top", type=int, default=10, help="most disagreements listed (default 10)")
    r("--idle-timeout", type=_positive_float, default=30.0, metavar="S",
      help="seconds without progress before the end is an error (default 30)")  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="stream-scorer",
        description="Score Avro events from Kafka with an ONNX model; publish the flagged ones.",
        epilog="Exit codes: 0 success or clean stop, 1 fatal error while running, 2 bad "
        "command, configuration or input (nothing done), 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"stream-scorer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the scoring service")
    _add_config(run)

    # `config check` is the one way to check: a short `check` duplicate was removed, so the
    # `config` group stays the home of everything about configuration (check, example).
    config = sub.add_parser("config", help="configuration commands: check, example")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    config_check = config_sub.add_parser(
        "check", help="validate config, schemas and model binding without touching Kafka"
    )
    _add_config(config_check)
    config_sub.add_parser(
        "example", help="print the example configuration (every key, with its default)"
    )

    produce = sub.add_parser("produce", help="produce synthetic transactions to topics.input")
    _add_config(produce)
    produce.add_argument(
        "--rate",
        type=_non_negative_float,
        default=2000.0,
        help="events/s (default 2000); 0 = as fast as possible",
    )
    produce.add_argument(
        "--count", type=_positive_int, default=None, help="how many events (default: until Ctrl-C)"
    )
    produce.add_argument(
        "--seed",
        type=int,
        default=7,
        help="generator seed: the same seed gives the same events (default 7)",
    )
    produce.add_argument(
        "--fraud-rate",
        type=_fraction,
        default=0.01,
        help="share of fraudulent events, 0-1 (default 0.01)",
    )
    produce.add_argument(
        "--corrupt-rate",
        type=_fraction,
        default=0.0,
        help="share of deliberately undecodable messages, 0-1 (default 0)",
    )

    score_file = sub.add_parser("score-file", help="score an Avro container file offline")
    _add_config(score_file)
    score_file.add_argument("input", type=Path, help="Avro object container file of events")
    score_file.add_argument(
        "--output",
        "-o",
        type=Path,
        default=None,
        help=".avro (Avro container) or .jsonl file (default: JSON lines on stdout)",
    )

    top = sub.add_parser(
        "top", help="live view of running instances from their /metrics (rates, lag, latency)"
    )
    top.add_argument(
        "urls", nargs="+", metavar="URL", help="base URL of an instance, e.g. http://host:9400"
    )
    top.add_argument(
        "--interval", type=float, default=2.0, help="seconds between refreshes (default 2)"
    )
    top.add_argument("--once", action="store_true", help="print one table and exit")

    dead_letters = sub.add_parser("dead-letters", help="dead-letter topic commands")
    dead_sub = dead_letters.add_subparsers(dest="dead_letters_command", required=True)
    replay = dead_sub.add_parser(
        "replay",
        help="re-inject dead letters (decrypted when encrypted) into the input topic after a fix",
    )
    _add_config(replay)
    replay.add_argument("--to", default=None, help="topic to replay into (default: topics.input)")
    replay.add_argument(
        "--limit", type=_positive_int, default=None, help="most dead letters to replay"
    )

    _add_replay(sub)

    from stream_scorer.lifecycle.commands import add_models_parser  # noqa: PLC0415 - lifecycle

    add_models_parser(sub, _add_config)

    demo = sub.add_parser("demo", help="run producer, broker and scorer on this machine")
    _add_config(demo, log_level=False)
    demo.add_argument(
        "--duration",
        type=_positive_float,
        default=None,
        help="seconds, then stop (default: until Ctrl-C)",
    )
    demo.add_argument(
        "--bootstrap-servers",
        default=None,
        help="use this real cluster instead of the embedded mock cluster",
    )
    demo.add_argument(
        "--rate",
        type=_non_negative_float,
        default=2000.0,
        help="events/s produced (default 2000); 0 = as fast as possible",
    )
    demo.add_argument(
        "--promote-after",
        type=_positive_float,
        default=None,
        metavar="S",
        help="promote fraud/2 live after S seconds (the model lifecycle, shown live)",
    )
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    if getattr(args, "log_level", None):
        overrides["log"] = {"level": args.log_level}
    return load_settings(args.config, overrides)


def _check(settings: Settings) -> int:
    from stream_scorer.app import (  # noqa: PLC0415 - keep CLI start-up light
        build_decoder,
        event_fields,
        load_model,
        load_schema,
    )

    reader = load_schema(settings.schema_.reader, "schema.reader")
    load_schema(settings.schema_.alert, "schema.alert")
    # The registry is not contacted: check must work without any network.
    if settings.schema_.wire_format != "confluent":
        build_decoder(settings, reader, None)
    model = load_model(settings, reader)
    card = model.card
    fields = event_fields(settings, card, reader)
    nulls = card.null_policies()
    sys.stdout.write(
        f"ok: config valid; reader schema {reader.get('name')}; model {card.name}/"
        f"{card.version} binds {len(card.bindings)} fields "
        f"({', '.join(b.field for b in card.bindings)}); threshold {model.threshold}; "
        f"wire format {settings.schema_.wire_format}\n"
        f"  event id: {fields.id_field or '(coordinates)'}; event time: "
        f"{fields.time_field or '(broker timestamp)'}; key: {fields.key_field or '(source key)'}"
        f"; projection: {', '.join(fields.projection) or '(none)'}\n"
        "  null policy per input: "
        + ", ".join(f"{name}={policy}" for name, policy in nulls.items())
        + "\n"
    )
    sys.stdout.write(f"  decision: {model.card.policy.at_threshold(model.threshold).describe()}\n")
    return EXIT_OK


def _top(args: argparse.Namespace) -> int:
    from stream_scorer.top import run_top  # noqa: PLC0415

    if args.interval <= 0:
        msg = f"--interval must be above 0, got {args.interval}"
        raise ConfigurationError(msg)
    try:
        return run_top(args.urls, args.interval, sys.stdout, args.once)
    except KeyboardInterrupt:
        return EXIT_OK


def _replay_dead_letters(settings: Settings, args: argparse.Namespace) -> int:
    from stream_scorer.app import build_privacy  # noqa: PLC0415
    from stream_scorer.dlq_replay import replay_dead_letters  # noqa: PLC0415

    _, cipher = build_privacy(settings)
    replay = replay_dead_letters(
        settings.kafka.client_config(),
        settings.topics.dead_letter,
        args.to or settings.topics.input,
        {} if cipher is None else {cipher.key_id: cipher},
        args.limit,
    )
    sys.stdout.write(
        f"replayed {replay.replayed} of {replay.read} dead letters from "
        f"{settings.topics.dead_letter} to {args.to or settings.topics.input}"
        f"{f'; {replay.refused} not decryptable, left in place' if replay.refused else ''}\n"
    )
    return EXIT_FATAL if replay.refused else EXIT_OK


def _without_settings(args: argparse.Namespace) -> int | None:
    """The commands that load no settings file of the user's: their exit code, else None."""
    command = args.command
    if command == "config" and args.config_command == "example":
        sys.stdout.write((resource_root() / EXAMPLE_CONFIG).read_text(encoding="utf-8"))
        return EXIT_OK
    if command == "demo":
        from stream_scorer.devtools.demo import run_demo  # noqa: PLC0415 - keep CLI start-up light

        configure_logging("error", "auto", cache=False)
        return run_demo(
            args.duration,
            args.bootstrap_servers,
            args.rate,
            args.config,
            sys.stdout,
            args.promote_after,
        )
    if command == "top":
        return _top(args)
    return None


def _log_level(args: argparse.Namespace, settings: Settings) -> str:
    """``log.level``, but ``warning`` for ``config check`` unless ``--log-level`` asks.

    A check prints its report on stdout; the service's info lines (``model_loaded``, ...) would
    only be noise around it.
    """
    level = settings.log.level
    if args.command == "config" and not getattr(args, "log_level", None) and level == "info":
        return "warning"
    return level


def _dispatch(args: argparse.Namespace) -> int:
    command = args.command
    early = _without_settings(args)
    if early is not None:
        return early
    settings = _settings(args)
    configure_logging(_log_level(args, settings), settings.log.format)
    args.log_json = json_output()  # this command's stderr is JSON lines from here on
    if command == "config":
        return _check(settings)
    if command == "models":
        from stream_scorer.lifecycle.commands import run_models  # noqa: PLC0415

        return run_models(args, settings, sys.stdout)
    if command == "run":
        return _run(settings)
    if command == "produce":
        from stream_scorer.devtools.loadgen import produce_events  # noqa: PLC0415

        count = produce_events(
            settings, args.rate, args.count, args.seed, args.fraud_rate, args.corrupt_rate
        )
        log.info("produced", events=count, topic=settings.topics.input)
        return EXIT_OK
    if command == "score-file":
        return _score_file(settings, args)
    if command == "dead-letters":
        return _replay_dead_letters(settings, args)
    if command == "replay":
        from stream_scorer.replay import run_replay  # noqa: PLC0415

        return run_replay(args, settings, sys.stdout)
    msg = f"unknown command {command}"
    raise AssertionError(msg)


def _run(settings: Settings) -> int:
    """``run``: build the service from the settings and run it until stopped."""
    from stream_scorer.app import build_runner  # noqa: PLC0415

    # Loading the model takes a moment; a SIGTERM meanwhile (an orchestrator scaling
    # down) must still end in a clean stop with exit code 0, not death by signal.
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
    log.info("starting", version=__version__, model=str(settings.model.path))
    return build_runner(settings, stop=stop).run()


def _score_file(settings: Settings, args: argparse.Namespace) -> int:
    """``score-file``: the stream's scoring policy over an Avro container file."""
    from stream_scorer.app import event_fields, load_model, load_schema  # noqa: PLC0415
    from stream_scorer.offline import score_file  # noqa: PLC0415

    _check_avro_file(args.input)
    if args.output is not None:
        _check_output_file(args.output)
    reader = load_schema(settings.schema_.reader, "schema.reader")
    model = load_model(settings, reader)
    fields = event_fields(settings, model.card, reader)
    try:
        counts = score_file(
            args.input, model, settings.batch.max_size, args.output or sys.stdout, fields
        )
    except (OSError, EOFError, ValueError) as exc:
        if isinstance(exc, BrokenPipeError):
            raise
        msg = f"score-file: {args.input}: {exc}"
        raise FatalError(msg) from exc
    log.info("scored_file", **counts)
    return EXIT_OK


def _check_avro_file(path: Path) -> None:
    """Refuse a missing, unreadable or non-Avro input before loading the model.

    Raises:
        ConfigurationError: The file cannot be read or is not an Avro object container.
    """
    try:
        with path.open("rb") as fh:
            magic = fh.read(len(AVRO_MAGIC))
    except OSError as exc:
        msg = f"score-file: cannot read {path}: {exc.strerror or exc}"
        raise InputError(msg) from exc
    if magic != AVRO_MAGIC:
        msg = f"score-file: {path} is not an Avro object container file (no 'Obj\\x01' header)"
        raise InputError(msg)


#: Suffixes ``score-file --output`` writes: an Avro container, or JSON lines.
OUTPUT_SUFFIXES = (".avro", ".jsonl", ".ndjson", ".json")


def _check_output_file(path: Path) -> None:
    """Refuse an output ``score-file`` could not write, before scoring anything.

    A device or pipe (``/dev/null``, ``/dev/stdout``, a FIFO) takes JSON lines whatever its name.

    Raises:
        InputError: Its suffix names no format it writes, or its folder is missing or not
            writable.
    """
    if path.exists() and not path.is_file() and not path.is_dir():
        if not os.access(path, os.W_OK):
            msg = f"score-file: --output {path}: not writable"
            raise InputError(msg)
        return
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        msg = (
            f"score-file: --output {path}: unknown format {path.suffix or '(no suffix)'}; "
            f"use one of {', '.join(OUTPUT_SUFFIXES)} (.avro writes an Avro container, the "
            "others JSON lines)"
        )
        raise InputError(msg)
    folder = path.parent
    if not folder.is_dir():
        msg = f"score-file: --output {path}: folder {folder} does not exist"
        raise InputError(msg)
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        msg = f"score-file: --output {path}: not writable"
        raise InputError(msg)


class InputError(ConfigurationError):
    """An input file named on the command line is missing or not what the command reads."""


def _quiet_broken_pipe() -> int:
    # The reader went away (`| head`): what was wanted was written. Point stdout at devnull so
    # the interpreter's final flush does not raise again, and stop quietly (Python docs,
    # "Note on SIGPIPE").
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return EXIT_OK


#: Commands whose stderr is the service's log stream: their last error line follows its format.
_LOG_STREAM_COMMANDS = frozenset({"run"})


def _fail(kind: str, error: object, code: int, args: argparse.Namespace) -> int:
    """Write the one line a failed command ends with, and return its exit code.

    Plain text (``stream-scorer: <kind>: <error>``); for the service (``run``) logging JSON
    lines, a JSON object with the same content, so a log shipper parses the last line like
    every other. Interactive commands keep the plain line for the person reading it, and so
    does an error found before logging was configured (a bad configuration).
    """
    if args.command in _LOG_STREAM_COMMANDS and getattr(args, "log_json", False):
        line = {
            "event": "command_failed",
            "level": "error",
            "timestamp": dt.datetime.now(dt.UTC).isoformat(),
            "kind": kind,
            "exit_code": code,
        }
        if error is not None:
            line["error"] = str(error)
        sys.stderr.write(json.dumps(line) + "\n")
    else:
        sys.stderr.write(f"stream-scorer: {kind}" + ("" if error is None else f": {error}") + "\n")
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run the command, and map errors to exit codes (module docstring)."""
    args = _parser().parse_args(argv)
    try:
        code = _dispatch(args)
        # Flush here, not at interpreter exit, so a closed pipe is caught below.
        sys.stdout.flush()
    except InputError as exc:
        return _fail("input error", exc, EXIT_CONFIG, args)
    except ConfigurationError as exc:
        return _fail("configuration error", exc, EXIT_CONFIG, args)
    except FatalError as exc:
        return _fail("fatal", exc, EXIT_FATAL, args)
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except KeyboardInterrupt:
        return _fail("interrupted", None, EXIT_INTERRUPTED, args)
    except Exception as exc:  # the last resort: one line, never a traceback
        log.debug("unexpected_error", exc_info=True)
        return _fail(
            "unexpected error",
            f"{type(exc).__name__}: {exc} (--log-level debug logs the traceback)",
            EXIT_FATAL,
            args,
        )
    return code
