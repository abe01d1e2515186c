"""``stream-scorer models ...``: list, show, card, validate, promote, rollback, history, compare.

Exit codes follow the CLI's: 0 done, 1 a validation that failed, 2 a request that is refused
or names nothing (unknown version, a promotion of an unvalidated version without --force).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO

from stream_scorer.lifecycle.card import render_card, summary
from stream_scorer.lifecycle.repository import (
    HistoryEntry,
    LifecycleError,
    ModelRef,
    ModelRepository,
    current_user,
    promote,
    rollback,
)
from stream_scorer.lifecycle.service import catch_up, repository
from stream_scorer.settings import Settings

__all__ = ["add_models_parser", "run_models"]

EXIT_OK, EXIT_FAILED, EXIT_REFUSED = 0, 1, 2


def add_models_parser(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]  # argparse's private generic
    add_config: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Add ``models`` and its subcommands to the CLI's subparsers."""
    models = sub.add_parser("models", help="model repository: list, validate, promote, roll back")
    msub = models.add_subparsers(dest="models_command", required=True)
    listing = msub.add_parser("list", help="models, versions, aliases, validation status")
    add_config(listing)
    show = msub.add_parser("show", help="one model or version: card summary, aliases, status")
    add_config(show)
    show.add_argument(
        "ref", metavar="NAME[/VERSION|@ALIAS]", help="a model, one version, or an alias"
    )
    card = msub.add_parser("card", help="render the Markdown model card from model.json")
    add_config(card)
    card.add_argument(
        "ref", metavar="NAME/VERSION|NAME@ALIAS", help="the version whose card to render"
    )
    card.add_argument("--output", "-o", type=Path, default=None, help="file (default: stdout)")
    validate = msub.add_parser("validate", help="run the validation gates; non-zero on a FAIL")
    add_config(validate)
    validate.add_argument("ref", metavar="NAME/VERSION", help="the version to validate")
    validate.add_argument("--against", default=None, metavar="NAME@ALIAS|NAME/VERSION",
                          help="compare with this version (e.g. fraud@champion)")  # fmt: skip
    validate.add_argument("--data", type=Path, default=None, help="Avro file of events")
    validate.add_argument("--json", action="store_true", help="JSON for CI")
    promote_p = msub.add_parser("promote", help="point an alias at a validated version")
    add_config(promote_p)
    promote_p.add_argument("ref", metavar="NAME/VERSION", help="the version to promote")
    promote_p.add_argument("--alias", default=None, help="default: lifecycle.alias")
    promote_p.add_argument("--force", action="store_true", help="promote although not passed")
    promote_p.add_argument("--reason", default="", help="kept in the history")
    back = msub.add_parser("rollback", help="point an alias back at its previous version")
    add_config(back)
    back.add_argument("name", metavar="NAME", help="the model whose alias goes back")
    back.add_argument("--alias", default=None, help="default: lifecycle.alias")
    back.add_argument("--reason", default="", help="kept in the history")
    history = msub.add_parser("history", help="every promotion, rollback, refusal, swap")
    add_config(history)
    history.add_argument("name", metavar="NAME", help="the model whose history to print")
    history.add_argument("--json", action="store_true", help="JSON lines")
    compare = msub.add_parser(
        "compare", help="live champion/challenger comparison of running instances (/metrics)"
    )
    add_config(compare)
    compare.add_argument("--url", action="append", required=True, metavar="URL",
                         help="an instance's metrics endpoint, http://HOST:PORT[/metrics]; "
                              "repeat for several")  # fmt: skip
    compare.add_argument("--json", action="store_true", help="JSON instead of the table")


def _aliases_of(repo: ModelRepository, name: str, version: str) -> str:
    names = [a for a, v in sorted(repo.aliases(name).items()) if v == version]
    return ",".join(names) or "-"


def _list(repo: ModelRepository, out: IO[str]) -> int:
    rows = [("model", "version", "aliases", "validation", "summary")]
    for name in repo.names():
        for version in repo.versions(name):
            card = repo.card(name, version)
            rows.append(
                (name, version, _aliases_of(repo, name, version),
                 repo.validation_status(name, version), summary(card)[:70])
            )  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        cells = [c.ljust(w) for c, w in zip(row[:4], widths, strict=True)]
        out.write("  ".join([*cells, row[4]]).rstrip() + "\n")
    return EXIT_OK


def _show(repo: ModelRepository, ref: ModelRef, alias: str, out: IO[str]) -> int:
    if ref.version is None and ref.alias is None:
        out.write(f"model {ref.name}\n  aliases: {json.dumps(repo.aliases(ref.name))}\n")
        for version in repo.versions(ref.name):
            out.write(
                f"  {version}: {repo.validation_status(ref.name, version)}; aliases "
                f"{_aliases_of(repo, ref.name, version)}\n"
            )
        return EXIT_OK
    name, version = repo.resolve(ref, alias)
    card = repo.card(name, version)
    result = repo.validation(name, version)
    out.write(
        f"{name}/{version}  ({repo.folder(name, version)})\n"
        f"  aliases: {_aliases_of(repo, name, version)}\n"
        f"  {summary(card)}\n"
        f"  inputs: {', '.join(b.field for b in card.bindings)}\n"
        f"  sha256: {card.sha256}\n"
        f"  validation: {repo.validation_status(name, version)}"
        + (f" at {result['at']}" if result else "")
        + "\n"
    )
    return EXIT_OK


def _validate(
    repo: ModelRepository, settings: Settings, args: argparse.Namespace, out: IO[str]
) -> int:
    from stream_scorer.app import load_schema  # noqa: PLC0415 - keeps `models list` light
    from stream_scorer.lifecycle.validate import report_json, validate  # noqa: PLC0415

    ref = ModelRef.parse(args.ref)
    name, version = repo.resolve(ref, settings.lifecycle.alias)
    against = None
    if args.against is not None:
        against = repo.resolve(ModelRef.parse(args.against), settings.lifecycle.alias)
    reader = load_schema(settings.schema_.reader, "schema.reader")
    # A path: validate reads it once the card says what a label is.
    data = args.data
    report = validate(
        repo, name, version, reader, settings.lifecycle, settings.batch.max_size, against, data,
        settings.model.intra_op_threads,
    )  # fmt: skip
    repo.record_validation(name, version, report.to_dict())
    failed = [g.name for g in report.gates if g.status == "FAIL"]
    repo.record(
        HistoryEntry(
            "validate", name, version, None, None, current_user(),
            "passed" if report.passed else f"failed: {', '.join(failed)}",
            detail={"against": report.against, "data": report.data},
        )
    )  # fmt: skip
    out.write(report_json(report) + "\n" if args.json else report.table())
    return EXIT_OK if report.passed else EXIT_FAILED


def _history(repo: ModelRepository, name: str, as_json: bool, out: IO[str]) -> int:
    for entry in repo.history(name):
        if as_json:
            out.write(entry.to_json() + "\n")
            continue
        target = f"{entry.model}/{entry.version}"
        alias = f" {entry.alias}" if entry.alias else ""
        previous = f" (was {entry.previous})" if entry.previous else ""
        where = f" on {entry.instance}" if entry.instance else ""
        out.write(
            f"{entry.at}  {entry.action:<13} {target}{alias}{previous}  by {entry.by}{where}"
            f"{f': {entry.reason}' if entry.reason else ''}\n"
        )
    return EXIT_OK


def run_models(args: argparse.Namespace, settings: Settings, out: IO[str] = sys.stdout) -> int:
    """Run one ``models`` subcommand.

    Raises:
        ConfigurationError: Unknown model or version, bad reference, refused promotion.
    """
    if args.models_command == "compare":  # reads the instances' /metrics, not the repository
        from stream_scorer.monitoring.live_compare import run_compare  # noqa: PLC0415

        return run_compare(args.url, args.json, out)
    repo = repository(settings)
    # watch = kafka: the aliases and the history of every host are on the control topic.
    catch_up(settings, repo)
    alias = getattr(args, "alias", None) or settings.lifecycle.alias
    command = args.models_command
    if command == "list":
        return _list(repo, out)
    if command == "show":
        return _show(repo, ModelRef.parse(args.ref), alias, out)
    if command == "card":
        name, version = repo.resolve(ModelRef.parse(args.ref), alias)
        text = render_card(repo.card(name, version))
        if args.output is None:
            out.write(text)
        else:
            args.output.write_text(text, encoding="utf-8")
        return EXIT_OK
    if command == "validate":
        return _validate(repo, settings, args, out)
    if command == "promote":
        ref = ModelRef.parse(args.ref)
        if ref.version is None:
            msg = f"models promote needs NAME/VERSION, got {args.ref!r}"
            raise LifecycleError(msg)
        entry = promote(repo, ref.name, ref.version, alias, reason=args.reason, force=args.force)
        out.write(
            f"{entry.action}: {ref.name}@{alias} -> {ref.version} (was {entry.previous or '-'})\n"
        )
        return EXIT_OK
    if command == "rollback":
        back = rollback(repo, ModelRef.parse(args.name).name, alias, reason=args.reason)
        assert back is not None  # noqa: S101 - no `expect`, so a rollback always happens
        out.write(f"rollback: {back.model}@{alias} -> {back.version} (was {back.previous})\n")
        return EXIT_OK
    if command == "history":
        return _history(repo, ModelRef.parse(args.name).name, args.json, out)
    msg = f"unknown models command {command}"
    raise AssertionError(msg)
