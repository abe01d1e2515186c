"""Command line: ``run``, ``config check``, ``produce``, ``score-file`` and ``demo``.

``main()`` returns the exit code: 0 for a clean stop, 1 for a fatal error, 2 for bad
configuration. Flags cover per-invocation choices only; everything else is settings (TOML file
plus ``STREAM_SCORER_*`` environment variables).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

from stream_scorer import __version__
from stream_scorer.errors import ConfigurationError, FatalError
from stream_scorer.logging import configure_logging
from stream_scorer.settings import ENV_PREFIX, Settings, load_settings

__all__ = ["main"]

log = structlog.get_logger(__name__)

#: Exit codes.
EXIT_OK, EXIT_FATAL, EXIT_CONFIG = 0, 1, 2


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        help=f"TOML settings file; any key can be overridden by {ENV_PREFIX}<SECTION>__<KEY>",
    )
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])


def _positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        msg = f"not an integer: {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if value < 1:
        msg = f"must be at least 1, got {value}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stream-scorer",
        description="Score Avro events from Kafka with an ONNX model; publish the flagged ones.",
    )
    parser.add_argument("--version", action="version", version=f"stream-scorer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the scoring service")
    _add_config(run)

    check = sub.add_parser("check", help="validate config, schemas and model binding")
    _add_config(check)
    config = sub.add_parser("config", help="configuration commands")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    config_check = config_sub.add_parser(
        "check", help="validate config, schemas and model binding without touching Kafka"
    )
    _add_config(config_check)

    produce = sub.add_parser("produce", help="produce synthetic transactions to topics.input")
    _add_config(produce)
    produce.add_argument("--rate", type=float, default=2000.0, help="events/s; 0 = max speed")
    produce.add_argument("--count", type=int, default=None, help="how many (default: forever)")
    produce.add_argument("--seed", type=int, default=7, help="generator seed")
    produce.add_argument("--fraud-rate", type=float, default=0.01)
    produce.add_argument("--corrupt-rate", type=float, default=0.0,
                         help="share of deliberately undecodable messages")  # fmt: skip

    score_file = sub.add_parser("score-file", help="score an Avro container file offline")
    _add_config(score_file)
    score_file.add_argument("input", type=Path, help="Avro object container file of events")
    score_file.add_argument(
        "--output", "-o", type=Path, default=None,
        help=".avro or .jsonl file (default: JSON lines on stdout)",
    )  # fmt: skip

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

    from stream_scorer.lifecycle.commands import add_models_parser  # noqa: PLC0415 - lifecycle

    add_models_parser(sub, _add_config)

    demo = sub.add_parser("demo", help="run producer, broker and scorer on this machine")
    demo.add_argument("--config", type=Path)
    demo.add_argument("--duration", type=float, default=None, help="seconds, then stop")
    demo.add_argument(
        "--bootstrap-servers", default=None,
        help="use this real cluster instead of the embedded mock cluster",
    )  # fmt: skip
    demo.add_argument("--rate", type=float, default=2000.0, help="events/s produced")
    demo.add_argument("--promote-after", type=float, default=None, metavar="S",
                      help="promote fraud/2 live after S seconds (model lifecycle)")  # fmt: skip
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
    return EXIT_OK


def _dispatch(args: argparse.Namespace) -> int:
    command = args.command
    if command == "demo":
        from stream_scorer.devtools.demo import run_demo  # noqa: PLC0415 - keep CLI start-up light

        configure_logging("error", "auto", cache=False)
        return run_demo(args.duration, args.bootstrap_servers, args.rate, args.config, sys.stdout,
                        args.promote_after)  # fmt: skip
    if command == "top":
        from stream_scorer.top import run_top  # noqa: PLC0415

        if args.interval <= 0:
            msg = f"--interval must be above 0, got {args.interval}"
            raise ConfigurationError(msg)
        try:
            return run_top(args.urls, args.interval, sys.stdout, args.once)
        except KeyboardInterrupt:
            return EXIT_OK
    settings = _settings(args)
    configure_logging(settings.log.level, settings.log.format)
    if command in {"check", "config"}:
        return _check(settings)
    if command == "models":
        from stream_scorer.lifecycle.commands import run_models  # noqa: PLC0415

        return run_models(args, settings, sys.stdout)
    if command == "run":
        from stream_scorer.app import build_runner  # noqa: PLC0415

        # Loading the model takes a moment; a SIGTERM meanwhile (an orchestrator scaling
        # down) must still end in a clean stop with exit code 0, not death by signal.
        stop = threading.Event()
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: stop.set())
        log.info("starting", version=__version__, model=str(settings.model.path))
        return build_runner(settings, stop=stop).run()
    if command == "produce":
        from stream_scorer.devtools.loadgen import produce_events  # noqa: PLC0415

        count = produce_events(
            settings, args.rate, args.count, args.seed, args.fraud_rate, args.corrupt_rate
        )
        log.info("produced", events=count, topic=settings.topics.input)
        return EXIT_OK
    if command == "score-file":
        from stream_scorer.app import event_fields, load_model, load_schema  # noqa: PLC0415
        from stream_scorer.offline import score_file  # noqa: PLC0415

        reader = load_schema(settings.schema_.reader, "schema.reader")
        model = load_model(settings, reader)
        fields = event_fields(settings, model.card, reader)
        counts = score_file(
            args.input, model, settings.batch.max_size, args.output or sys.stdout, fields
        )
        log.info("scored_file", **counts)
        return EXIT_OK
    if command == "dead-letters":
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
    msg = f"unknown command {command}"
    raise AssertionError(msg)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run the command, and map errors to exit codes."""
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigurationError as exc:
        sys.stderr.write(f"stream-scorer: configuration error: {exc}\n")
        return EXIT_CONFIG
    except FatalError as exc:
        sys.stderr.write(f"stream-scorer: fatal: {exc}\n")
        return EXIT_FATAL
