"""``stream-scorer replay``: score a historical range of a topic with two model versions.

Reads ``[from, to)`` of every chosen partition with a consumer that is only ever
``assign()``-ed (it never joins the service's group: a throwaway ``group.id``, auto-commit
off, no commit call), so a replay cannot move any group's offsets. The range comes from
offsets (``--from``/``--to``: one offset for every partition or ``P:N,P:N`` per partition;
defaults: the earliest offset and the high watermark when the replay starts) or from times
(``--since``/``--until``: ISO-8601 or epoch milliseconds, through ``offsets_for_times``). The
end is fixed when the replay starts, so it always ends; a partition that stops making
progress before its end is a clear error after ``--idle-timeout`` seconds, never a hang.

Each batch is decoded once by the service's own decoder (built from the same settings:
framing, registry, limits) and scored by both models through the stream's one scoring
policy, :func:`~stream_scorer.pipeline.score_and_flag` (bisection, bands, top-k,
regression). The comparison reuses the service's own code: the confusion, agreement, score
difference and correlation of :class:`~stream_scorer.monitoring.compare.Comparisons`, and one
drift window over the whole range against each card's reference
(:class:`~stream_scorer.monitoring.drift.DriftMonitor`). ``--out`` writes the model's
per-event results in ``score-file``'s format (:data:`~stream_scorer.offline.SCORE_SCHEMA`),
so both can be compared line by line.
"""

from __future__ import annotations

import argparse
import datetime as dt
import heapq
import json
import math
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import fastavro
import numpy as np
import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from numpy.typing import NDArray

from stream_scorer.consume import MessageBatch, consumer_config
from stream_scorer.errors import ConfigurationError, FatalError
from stream_scorer.model_set import LoadedModel
from stream_scorer.monitoring.compare import Comparison, Comparisons
from stream_scorer.monitoring.drift import DriftConfig, DriftMonitor, WindowReport
from stream_scorer.offline import SCORE_SCHEMA, OfflineResult, decision_results
from stream_scorer.pipeline import ModelDecision, score_and_flag
from stream_scorer.records import DecodedBatch, Rejected, SourceRecord

__all__ = [
    "MAX_PLOT_SCORES",
    "PLOT_HINT",
    "OffsetSpec",
    "RangeReader",
    "RangeSpec",
    "ReplayReport",
    "ReplayScorer",
    "parse_offsets",
    "parse_time",
    "resolve_range",
    "run_replay",
    "write_png",
]

log = structlog.get_logger(__name__)

#: One line for a missing matplotlib: the plot is an extra, not a dependency.
PLOT_HINT = "--png needs matplotlib: pip install 'stream-scorer[plot]'"
#: Scores kept per model for the picture (8 bytes each): memory stays bounded on any range.
MAX_PLOT_SCORES = 2_000_000
#: How long one ``consume`` call waits: short, so the idle deadline is checked often.
POLL_S = 0.5
#: Timeout of each metadata, watermark and time-lookup request.
METADATA_TIMEOUT_S = 10.0

#: ``N`` for every partition, or ``{partition: N}`` for the partitions named.
OffsetSpec = int | dict[int, int]

_PER_PARTITION = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_offsets(text: str, flag: str) -> OffsetSpec:
    """``N`` (every partition) or ``P:N,P:N`` (the partitions named).

    Raises:
        ConfigurationError: Not one of the two forms, a negative offset, a partition twice.
    """
    stripped = text.strip()
    if stripped.isdigit():
        return int(stripped)
    out: dict[int, int] = {}
    for part in stripped.split(","):
        match = _PER_PARTITION.match(part)
        if match is None:
            msg = f"{flag}: expected an offset N or P:N,P:N (partition:offset), got {text!r}"
            raise ConfigurationError(msg)
        partition, offset = int(match.group(1)), int(match.group(2))
        if partition in out:
            msg = f"{flag}: partition {partition} is given twice in {text!r}"
            raise ConfigurationError(msg)
        out[partition] = offset
    return out


def parse_time(text: str, flag: str) -> int:
    """Epoch milliseconds from epoch-ms digits or an ISO-8601 time (no zone: UTC).

    Raises:
        ConfigurationError: Neither form.
    """
    stripped = text.strip()
    if stripped.isdigit():
        return int(stripped)
    try:
        moment = dt.datetime.fromisoformat(stripped)
    except ValueError:
        msg = (
            f"{flag}: expected an ISO-8601 time (2026-12-01T09:00:00Z) or epoch milliseconds, "
            f"got {text!r}"
        )
        raise ConfigurationError(msg) from None
    if moment.tzinfo is None:  # a time without a zone is read as UTC, as brokers stamp
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class RangeSpec:
    """What the command line asked for: offsets or times, each end optional."""

    start: OffsetSpec | None = None
    end: OffsetSpec | None = None
    since_ms: int | None = None
    until_ms: int | None = None

    def __post_init__(self) -> None:
        """Offsets and times do not mix."""
        if (self.start is not None or self.end is not None) and (
            self.since_ms is not None or self.until_ms is not None
        ):
            msg = "replay: give --from/--to (offsets) or --since/--until (times), not both"
            raise ConfigurationError(msg)
        since, until = self.since_ms, self.until_ms
        if since is not None and until is not None and until < since:
            msg = f"replay: --until ({until}) is before --since ({since})"
            raise ConfigurationError(msg)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RangeSpec:
        """From ``--from``/``--to``/``--since``/``--until``."""
        return cls(
            None if args.from_ is None else parse_offsets(args.from_, "--from"),
            None if args.to is None else parse_offsets(args.to, "--to"),
            None if args.since is None else parse_time(args.since, "--since"),
            None if args.until is None else parse_time(args.until, "--until"),
        )


#: ``{partition: timestamp_ms}`` → ``{partition: offset}``, -1 where no message is that late.
TimeLookup = Callable[[Mapping[int, int]], dict[int, int]]


def resolve_range(
    spec: RangeSpec,
    watermarks: Mapping[int, tuple[int, int]],
    offsets_for_times: TimeLookup,
) -> dict[int, tuple[int, int]]:
    """``{partition: (first offset, end offset)}`` to read, the end exclusive.

    Offsets are clamped into ``[low, high]`` (what the partition still holds, up to its
    high watermark now: a replay never waits for the future); a start past the end reads
    nothing. A per-partition ``P:N`` form selects the partitions named (in ``--from``,
    ``--to`` or both); ``N`` applies to every partition.

    Raises:
        ConfigurationError: A partition named that the topic does not have.
    """
    chosen = sorted(watermarks)
    named = {p for side in (spec.start, spec.end) if isinstance(side, dict) for p in side}
    unknown = sorted(named - set(watermarks))
    if unknown:
        msg = f"replay: the topic has no partition {unknown} (partitions: {chosen})"
        raise ConfigurationError(msg)
    if named:
        chosen = sorted(named)

    def pick(side: OffsetSpec | None, partition: int, default: int) -> int:
        if side is None:
            return default
        if isinstance(side, int):
            return side
        return side.get(partition, default)

    starts = {p: pick(spec.start, p, watermarks[p][0]) for p in chosen}
    ends = {p: pick(spec.end, p, watermarks[p][1]) for p in chosen}
    for when_ms, target in ((spec.since_ms, starts), (spec.until_ms, ends)):
        if when_ms is None:
            continue
        found = offsets_for_times(dict.fromkeys(chosen, when_ms))
        for p in chosen:
            offset = found.get(p, -1)
            target[p] = watermarks[p][1] if offset < 0 else offset  # none that late: the end
    out: dict[int, tuple[int, int]] = {}
    for p in chosen:
        low, high = watermarks[p]
        end = min(max(ends[p], low), high)
        start = min(max(starts[p], low), end)
        out[p] = (start, end)
    return out


class RangeReader:
    """Reads a fixed offset range with an assigned (never subscribed) consumer."""

    def __init__(
        self,
        config: Mapping[str, Any],
        topic: str,
        batch_size: int,
        idle_timeout_s: float,
        consumer_factory: Callable[[dict[str, Any]], Any] = Consumer,
    ) -> None:
        """Create the consumer; nothing is read until :meth:`resolve` and :meth:`batches`.

        Args:
            config: Consumer settings (``group.id`` is replaced by a throwaway one, commits
                and group membership are switched off).
            topic: The topic to read.
            batch_size: Most messages per batch.
            idle_timeout_s: How long the range may make no progress before it is an error.
            consumer_factory: ``confluent_kafka.Consumer`` (tests pass a fake).
        """
        conf = dict(config)
        conf.pop("group.instance.id", None)  # a static member id would claim a group slot
        conf.update({
            # Never the service's group: assign() does not join a group, and a fresh id makes
            # sure no stored offset of anyone is read or written.
            "group.id": f"stream-scorer-replay-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "statistics.interval.ms": 0,
        })  # fmt: skip
        self.topic = topic
        self._batch_size = batch_size
        self._idle_s = idle_timeout_s
        self._consumer = consumer_factory(conf)
        self.ranges: dict[int, tuple[int, int]] = {}

    def resolve(self, spec: RangeSpec) -> dict[int, tuple[int, int]]:
        """Look up the topic's partitions and watermarks, and fix the range to read.

        Raises:
            ConfigurationError: The topic does not exist, or the spec names a partition it
                does not have.
            FatalError: The cluster does not answer.
        """
        consumer = self._consumer
        try:
            metadata = consumer.list_topics(self.topic, timeout=METADATA_TIMEOUT_S)
        except KafkaException as exc:
            msg = f"replay: cannot read the metadata of {self.topic}: {exc}"
            raise FatalError(msg) from exc
        topic = metadata.topics.get(self.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            why = "" if topic is None or topic.error is None else f" ({topic.error})"
            msg = f"replay: topic {self.topic!r} does not exist{why}"
            raise ConfigurationError(msg)
        try:
            watermarks = {
                p: tuple(
                    consumer.get_watermark_offsets(
                        TopicPartition(self.topic, p), timeout=METADATA_TIMEOUT_S
                    )
                )
                for p in sorted(topic.partitions)
            }
        except KafkaException as exc:
            msg = f"replay: cannot read the offsets of {self.topic}: {exc}"
            raise FatalError(msg) from exc

        def lookup(times: Mapping[int, int]) -> dict[int, int]:
            asked = [TopicPartition(self.topic, p, t) for p, t in times.items()]
            try:
                found = consumer.offsets_for_times(asked, timeout=METADATA_TIMEOUT_S)
            except KafkaException as exc:
                msg = f"replay: cannot look up offsets by time in {self.topic}: {exc}"
                raise FatalError(msg) from exc
            return {tp.partition: tp.offset for tp in found}

        self.ranges = resolve_range(spec, watermarks, lookup)
        return self.ranges

    def batches(self) -> Iterator[MessageBatch]:
        """The range's messages, in batches of at most ``batch_size``; stops at its end.

        Raises:
            FatalError: A fatal consumer error, or no progress for ``idle_timeout_s`` while
                some partition has not reached its end.
        """
        consumer = self._consumer
        pending = {p: (s, e) for p, (s, e) in self.ranges.items() if s < e}
        if not pending:
            return
        consumer.assign([TopicPartition(self.topic, p, s) for p, (s, _) in pending.items()])
        position = {p: s for p, (s, _) in pending.items()}
        last_progress = time.monotonic()
        while pending:
            messages = consumer.consume(self._batch_size, POLL_S)
            data: list[Message] = []
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.fatal():
                        msg = f"replay: fatal consumer error: {error}"
                        raise FatalError(msg)
                    if error.code() != KafkaError._PARTITION_EOF:
                        log.warning("replay_consumer_error", error=str(error))
                    continue
                partition, offset = message.partition(), message.offset()
                if partition in pending and offset < pending[partition][1]:
                    data.append(message)
                    position[partition] = max(position[partition], offset + 1)
            progressed = bool(data) | self._advance(pending, position)
            if progressed:
                last_progress = time.monotonic()
            if data:
                yield MessageBatch(data)
            if pending and time.monotonic() - last_progress > self._idle_s:
                stuck = ", ".join(
                    f"{p} at {position[p]} of [{s}, {e})" for p, (s, e) in sorted(pending.items())
                )
                msg = (
                    f"replay: no progress for {self._idle_s:g} s before the end of the range "
                    f"(partitions {stuck}); raise --idle-timeout or check the cluster"
                )
                raise FatalError(msg)

    def _advance(self, pending: dict[int, tuple[int, int]], position: dict[int, int]) -> bool:
        """Drop the partitions whose position reached their end; True when one moved.

        The consumer's own position counts too: it steps over transaction markers and
        compacted-away offsets, which no message ever reports.
        """
        moved = False
        tps = [TopicPartition(self.topic, p) for p in pending]
        for tp in self._consumer.position(tps):
            if tp.offset >= 0 and tp.offset > position[tp.partition]:
                position[tp.partition] = tp.offset
                moved = True
        done = [p for p, (_, end) in pending.items() if position[p] >= end]
        if done:
            self._consumer.pause([TopicPartition(self.topic, p) for p in done])
            for p in done:
                del pending[p]
        return moved or bool(done)

    def close(self) -> None:
        """Close the consumer (it holds no group membership and commits nothing)."""
        self._consumer.close()


@dataclass(slots=True)
class _ModelStats:
    """What one model made of the range."""

    model: LoadedModel
    scored: int = 0
    flagged: int = 0
    bands: Counter[str] = field(default_factory=Counter)
    dead_letters: Counter[str] = field(default_factory=Counter)
    score_ms: list[float] = field(default_factory=list)
    plot_scores: list[NDArray[np.float64]] = field(default_factory=list)
    plot_kept: int = 0

    def add(self, decision: ModelDecision, elapsed_ms: float) -> None:
        policy = decision.policy
        assert policy is not None and decision.bands is not None  # noqa: S101 - score_and_flag
        self.scored += len(decision.rows)
        self.flagged += len(decision.flagged)
        names = policy.names
        for band, count in enumerate(np.bincount(decision.bands, minlength=len(names)).tolist()):
            if count:
                self.bands[names[band]] += count
        self.dead_letters.update(_reason(r) for r in decision.rejected)
        self.score_ms.append(elapsed_ms)
        room = MAX_PLOT_SCORES - self.plot_kept
        if room > 0 and len(decision.scores):
            kept = decision.scores[:room].copy()
            self.plot_scores.append(kept)
            self.plot_kept += len(kept)

    def summary(self) -> dict[str, Any]:
        scored = self.scored
        policy = self.model.card.policy
        return {
            "model": self.model.label,
            "scored": scored,
            "flagged": self.flagged,
            "alert_rate": self.flagged / scored if scored else 0.0,
            "band_rates": {
                name: (self.bands[name] / scored if scored else 0.0) for name in policy.names
            },
            "band_counts": {name: self.bands[name] for name in policy.names},
            "dead_letters": dict(sorted(self.dead_letters.items())),
            "score_ms": _percentiles(self.score_ms),
        }


def _reason(reject: Rejected) -> str:
    """A dead letter's reason as counted: its stage and error type (the message holds the
    event's own values, which would make every reason unique)."""
    return f"{reject.stage}/{reject.error_type}"


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p99": 0.0}
    p50, p99 = np.percentile(np.asarray(values, dtype=np.float64), [50, 99]).tolist()
    return {"p50": round(p50, 3), "p99": round(p99, 3)}


@dataclass(frozen=True, slots=True)
class ReplayReport:
    """Everything the replay measured, as plain values (``--json`` prints :attr:`data`)."""

    data: dict[str, Any]

    def table(self) -> str:
        """The report for people: a few aligned blocks."""
        d = self.data
        lines = [
            f"replay {d['topic']}: {d['events']} events, {d['decoded']} decoded, "
            f"{d['dead_letters']['decode']} undecodable"
        ]
        lines.append(
            "  range: " + ", ".join(f"{p}:[{r['from']}, {r['to']})" for p, r in d["range"].items())
        )
        for name, reason_counts in d["dead_letters"]["by_reason"].items():
            lines.append(f"  dead letters {name}: {reason_counts}")
        models = [d["model"], *([d["against"]] if d.get("against") else [])]
        width = max(len(m["model"]) for m in models)
        lines.append("")
        lines.append(f"{'model'.ljust(width)}  {'scored':>8}  {'flagged':>8}  {'alert rate':>10}"
                     "  score p50/p99 ms  bands")  # fmt: skip
        for m in models:
            bands = ", ".join(f"{b} {r:.4f}" for b, r in m["band_rates"].items())
            lines.append(
                f"{m['model'].ljust(width)}  {m['scored']:>8}  {m['flagged']:>8}  "
                f"{m['alert_rate']:>10.5f}  {m['score_ms']['p50']:>7.2f}/"
                f"{m['score_ms']['p99']:<8.2f}  {bands}"
            )
        comparison = d.get("comparison")
        if comparison:
            c = comparison
            corr = c["score_correlation"]
            lines += [
                "",
                f"comparison {c['model']} vs {c['against']} on {c['events']} events: "
                f"agreement {c['agreement']:.5f}, mean |score diff| "
                f"{c['mean_abs_score_diff']:.6f}, correlation "
                f"{'n/a' if corr is None else f'{corr:.5f}'}",
                "  decisions: " + ", ".join(f"{k} {v}" for k, v in c["confusion"].items()),
            ]
            if c.get("band_confusion"):
                lines.append(f"  bands ({c['model']} rows, {c['against']} columns):")
                for a, row in c["band_confusion"].items():
                    lines.append(f"    {a}: " + ", ".join(f"{b} {n}" for b, n in row.items()))
            if d["top_disagreements"]:
                lines.append(f"  top disagreements (of {c['disagreements']}):")
                for t in d["top_disagreements"]:
                    lines.append(
                        f"    {t['record']}  id {t['event_id']}  {t['model_score']:.6f} "
                        f"({t['model_band']}) vs {t['against_score']:.6f} ({t['against_band']})"
                    )
        for label, drift in d["drift"].items():
            lines.append("")
            if drift is None:
                lines.append(f"drift {label}: no reference in the card")
                continue
            crossed = ", ".join(drift["crossed"]) or "none"
            lines.append(
                f"drift {label} vs its card's reference over {drift['events']} events: "
                f"crossed {crossed}"
            )
            top = sorted(drift["psi"].items(), key=lambda kv: -kv[1])[:8]
            lines.append(
                "  psi: " + ", ".join(f"{k} {v:.4f}/{drift['thresholds'][k]:.2f}" for k, v in top)
            )
        latency = d["latency_ms"]
        lines += [
            "",
            f"batch latency ms over {d['batches']} batches: decode p50 "
            f"{latency['decode']['p50']:.2f} p99 {latency['decode']['p99']:.2f}; whole batch "
            f"p50 {latency['batch']['p50']:.2f} p99 {latency['batch']['p99']:.2f}",
        ]
        return "\n".join(lines) + "\n"


class _ResultWriter:
    """Per-event results of one model, in ``score-file``'s format (JSON lines or Avro)."""

    def __init__(self, path: Path) -> None:
        self._index = 0
        self._avro = path.suffix == ".avro"
        try:
            self._fh: IO[Any] = path.open(
                "wb" if self._avro else "w", encoding=None if self._avro else "utf-8"
            )
        except OSError as exc:
            msg = f"--out: cannot write {path}: {exc.strerror or exc}"
            raise ConfigurationError(msg) from exc
        self._writer = (
            fastavro.write.Writer(self._fh, fastavro.parse_schema(SCORE_SCHEMA))
            if self._avro
            else None
        )

    def write(self, results: Sequence[OfflineResult]) -> None:
        for result in results:
            result["index"] = self._index  # position in the replay, as score-file's in the file
            self._index += 1
            if self._writer is not None:
                self._writer.write(result)
            else:
                self._fh.write(json.dumps(result) + "\n")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
        self._fh.close()


class ReplayScorer:
    """Scores decoded batches with a model and, optionally, the one it is held against."""

    def __init__(
        self,
        model: LoadedModel,
        against: LoadedModel | None,
        drift: DriftConfig,
        id_field: str | None,
        top: int = 10,
    ) -> None:
        """Compare ``model`` with ``against`` (the confusion is read as model vs against).

        Args:
            model: The version replayed (``--model``).
            against: The version it is compared with (``--against``), if any.
            drift: Thresholds for the drift against each card's reference (the window is
                the whole range).
            id_field: The event-id field, for ``--out`` and the disagreements.
            top: Most disagreements kept.
        """
        self.model = _ModelStats(model)
        self.against = None if against is None else _ModelStats(against)
        self._id_field = id_field
        self._top = top
        self._heap: list[tuple[float, int, dict[str, Any]]] = []
        self._seq = 0
        self.disagreements = 0
        self._comparisons = Comparisons(None, disagreements_per_minute=0)
        self.comparison: Comparison | None = None
        self.band_confusion: Counter[tuple[str, str]] = Counter()
        # One window over the whole range: it never closes by itself (no count limit, a
        # clock that stands still) and is closed by finish().
        self._now = 0.0
        self._drift = DriftMonitor(
            DriftConfig(
                window_events=0,
                window_seconds=1.0,
                min_window_events=1,
                thresholds=drift.thresholds,
                psi_warn=drift.psi_warn,
                psi_alert=drift.psi_alert,
                sigmas=drift.sigmas,
            ),
            None,
            lambda: self._now,
        )
        self._drift_reports: dict[str, Any] | None = None
        self.decode_rejects: Counter[str] = Counter()
        self.events = 0
        self.decoded = 0
        self.decode_ms: list[float] = []
        self.batch_ms: list[float] = []

    @property
    def fields(self) -> tuple[str, ...]:
        """The fields to decode: both models' and the event id."""
        names = [*self.model.model.features.fields]
        if self.against is not None:
            names += self.against.model.features.fields
        if self._id_field is not None:
            names.append(self._id_field)
        return tuple(dict.fromkeys(names))

    def decode_and_score(
        self, decode: Callable[[Sequence[SourceRecord], Sequence[str]], DecodedBatch],
        batch: Sequence[SourceRecord],
    ) -> list[OfflineResult]:  # fmt: skip
        """Decode one batch once, score it with both models; the model's per-event results.

        Raises:
            FatalError: A model is down (it fails on its known-good canary rows too).
        """
        tick = time.perf_counter()
        decoded = decode(batch, self.fields)
        decode_ms = (time.perf_counter() - tick) * 1000.0
        decisions: list[ModelDecision] = []
        for stats in (self.model, self.against):
            if stats is None:
                continue
            start = time.perf_counter()
            try:
                decision = score_and_flag(stats.model, decoded)
            except Exception as exc:  # ModelError from the canary rows: the model is down
                msg = f"replay: model {stats.model.label} failed: {exc}"
                raise FatalError(msg) from exc
            stats.add(decision, (time.perf_counter() - start) * 1000.0)
            decisions.append(decision)
        self.batch_ms.append((time.perf_counter() - tick) * 1000.0)
        self.decode_ms.append(decode_ms)
        self.events += len(batch)
        self.decoded += len(decoded.records)
        self.decode_rejects.update(_reason(r) for r in decoded.rejected)
        ids = self._ids(decoded)
        self._drift.observe(self.model.model, decoded, decisions[0])
        if self.against is not None:
            self._drift.observe(self.against.model, decoded, decisions[1])
            self._compare(decoded, decisions[0], decisions[1], ids)
        return _results(self.model.model, decoded, decisions[0], ids)

    def _ids(self, decoded: DecodedBatch) -> list[str | None]:
        if self._id_field is None or self._id_field not in decoded.columns:
            return [None] * len(decoded.records)
        return [None if v is None else str(v) for v in
                decoded.columns[self._id_field].to_objects().tolist()]  # fmt: skip

    def _compare(
        self, decoded: DecodedBatch, a: ModelDecision, b: ModelDecision, ids: list[str | None]
    ) -> None:
        assert self.against is not None  # noqa: S101 - only called with a second model
        model, against = self.model.model, self.against.model
        self.comparison = self._comparisons.observe(model, a, against, b, decoded)
        rows, ia, ib = np.intersect1d(a.rows, b.rows, assume_unique=True, return_indices=True)
        assert a.bands is not None and b.bands is not None and a.policy and b.policy  # noqa: S101
        names_a, names_b = a.policy.names, b.policy.names
        band_a, band_b = a.bands[ia], b.bands[ib]
        pairs = band_a.astype(np.int64) * len(names_b) + band_b
        for code, count in zip(*np.unique(pairs, return_counts=True), strict=True):
            self.band_confusion[(names_a[code // len(names_b)], names_b[code % len(names_b)])] += (
                int(count)
            )
        fa = np.zeros(len(a.rows), dtype=bool)
        fa[a.flagged] = True
        fb = np.zeros(len(b.rows), dtype=bool)
        fb[b.flagged] = True
        label_a = np.asarray(names_a, dtype=object)[band_a]
        label_b = np.asarray(names_b, dtype=object)[band_b]
        differ = np.flatnonzero((fa[ia] != fb[ib]) | (label_a != label_b))
        self.disagreements += int(differ.size)
        if not differ.size or self._top <= 0:
            return
        diff = np.abs(a.scores[ia] - b.scores[ib])
        # Only this batch's largest can enter the bounded heap: O(top) Python work per batch.
        best = differ[np.argsort(-diff[differ], kind="stable")[: self._top]]
        for i in best.tolist():
            row = int(rows[i])
            source = decoded.records[row]
            entry = {
                "record": source.coordinates,
                "event_id": ids[row],
                "model_score": float(a.scores[ia[i]]),
                "against_score": float(b.scores[ib[i]]),
                "abs_diff": float(diff[i]),
                "model_band": str(label_a[i]),
                "against_band": str(label_b[i]),
            }
            self._seq += 1
            item = (float(diff[i]), -self._seq, entry)
            if len(self._heap) < self._top:
                heapq.heappush(self._heap, item)
            elif item > self._heap[0]:
                heapq.heapreplace(self._heap, item)

    def finish(self, topic: str, ranges: Mapping[int, tuple[int, int]]) -> ReplayReport:
        """Close the drift window over the whole range and gather the report."""
        if self._drift_reports is None:  # closed once: finish() may be asked again
            self._drift_reports = {}
            for stats in (self.model, self.against):
                if stats is not None:
                    report = self._close_drift(stats.model)
                    self._drift_reports[stats.model.label] = (
                        None if report is None else _drift_dict(report)
                    )
        drift = self._drift_reports
        data: dict[str, Any] = {
            "topic": topic,
            "range": {str(p): {"from": s, "to": e} for p, (s, e) in sorted(ranges.items())},
            "events": self.events,
            "decoded": self.decoded,
            "batches": len(self.batch_ms),
            "dead_letters": {
                "decode": sum(self.decode_rejects.values()),
                "by_reason": {
                    "decode": dict(sorted(self.decode_rejects.items())),
                    **{
                        s.model.label: dict(sorted(s.dead_letters.items()))
                        for s in (self.model, self.against)
                        if s is not None
                    },
                },
            },
            "model": self.model.summary(),
            "against": None if self.against is None else self.against.summary(),
            "comparison": None,
            "top_disagreements": [e for _, _, e in sorted(self._heap, reverse=True)],
            "drift": drift,
            "latency_ms": {
                "decode": _percentiles(self.decode_ms),
                "batch": _percentiles(self.batch_ms),
            },
        }
        if self.against is not None:
            comparison = self.comparison or Comparison(
                self.model.model.label, self.against.model.label
            )
            raw = comparison.summary()
            confusion, rates = raw["confusion"], raw["alert_rate"]
            # Named by the command's roles: the comparison code calls them champion and
            # challenger, and here --against is usually the champion.
            summary: dict[str, Any] = {
                "model": raw["champion"],
                "against": raw["challenger"],
                "events": raw["events"],
                "agreement": raw["agreement"],
                "confusion": {
                    "both": confusion["both"],
                    "only_model": confusion["champion_only"],
                    "only_against": confusion["challenger_only"],
                    "neither": confusion["neither"],
                },
                "mean_abs_score_diff": raw["mean_abs_score_diff"],
                "score_correlation": raw["score_correlation"],
                "alert_rate": {"model": rates["champion"], "against": rates["challenger"]},
                "disagreements": self.disagreements,
            }
            policies = (self.model.model.card.policy, self.against.model.card.policy)
            if any(not p.from_threshold for p in policies):  # a card declares bands
                summary["band_confusion"] = {
                    a: {b: self.band_confusion[(a, b)] for b in policies[1].names}
                    for a in policies[0].names
                }
            data["comparison"] = summary
        return ReplayReport(data)

    def _close_drift(self, model: LoadedModel) -> WindowReport | None:
        """Close ``model``'s window: the clock moves past the window's time and an empty batch
        is counted, so the service's own code closes and judges it."""
        self._now += 2.0
        empty = DecodedBatch([], {}, [], lambda i: None)  # type: ignore[arg-type,return-value]
        nothing = np.empty(0, dtype=np.intp)
        decision = ModelDecision(nothing, np.empty(0), nothing, 0, [], False)
        return self._drift.observe(model, empty, decision)


def _drift_dict(report: WindowReport) -> dict[str, Any]:
    return {
        "events": report.events,
        "scored": report.scored,
        "psi": {k: round(v, 6) for k, v in report.psi.items()},
        "js_distance": {k: round(v, 6) for k, v in report.js.items()},
        "null_rate": {k: round(v, 6) for k, v in report.null_rate.items()},
        "unseen_category_rate": {k: round(v, 6) for k, v in report.unseen_rate.items()},
        "thresholds": {k: round(v, 6) for k, v in report.thresholds.items()},
        "crossed": list(report.crossed),
        "watch": list(report.watch),
        "alert_rate": report.alert_rate,
    }


def _results(
    model: LoadedModel, decoded: DecodedBatch, decision: ModelDecision, ids: list[str | None]
) -> list[OfflineResult]:
    """``score-file``'s result per event of the batch (decoded rows, then undecodable ones),
    from the same decision ``score-file`` takes (:mod:`stream_scorer.offline`)."""
    policy = decision.policy
    assert policy is not None  # noqa: S101 - score_and_flag
    position = {record: i for i, record in enumerate(decoded.records)}
    reasons = {position[r.source]: r.message for r in decision.rejected if r.source in position}
    out = decision_results(model, decision, range(len(decoded.records)), ids, reasons)
    for reject in decoded.rejected:
        out.append({
            "index": 0, "event_id": None, "score": None, "flagged": False,
            "threshold": policy.threshold, "band": None, "classes": [],
            "model_name": model.name, "model_version": model.version,
            "error": reject.message,
        })  # fmt: skip
    return out


def write_png(path: Path, scorer: ReplayScorer) -> None:
    """Both models' score distributions, overlaid, log-scaled counts.

    Raises:
        ConfigurationError: matplotlib is not installed (:data:`PLOT_HINT`).
    """
    try:
        import matplotlib as mpl  # noqa: PLC0415 - an optional extra

        mpl.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError as exc:
        raise ConfigurationError(PLOT_HINT) from exc
    models = [s for s in (scorer.model, scorer.against) if s is not None]
    samples = [np.concatenate(s.plot_scores) if s.plot_scores else np.empty(0) for s in models]
    probability = all(s.model.card.policy.is_probability for s in models)
    values = np.concatenate(samples) if samples else np.empty(0)
    if probability or not values.size:
        edges = np.linspace(0.0, 1.0, 101)
    else:
        edges = np.linspace(float(values.min()), float(values.max()) or 1.0, 101)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for stats, sample, color in zip(models, samples, ("tab:blue", "tab:orange"), strict=False):
        rate = stats.flagged / max(1, stats.scored)
        ax.hist(sample, bins=edges.tolist(), histtype="step", linewidth=1.6, color=color,
                label=f"{stats.model.label} (alert rate {rate:.4f})")  # fmt: skip
        ax.axvline(stats.model.card.policy.threshold, color=color, linestyle="--", linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("score")
    ax.set_ylabel("events (log)")
    ax.set_title(f"replay: score distributions on {scorer.events} events")
    ax.legend(loc="upper center")
    fig.tight_layout()
    try:
        fig.savefig(path, format="png")
    except OSError as exc:
        msg = f"--png: cannot write {path}: {exc.strerror or exc}"
        raise FatalError(msg) from exc
    finally:
        plt.close(fig)


def _check_plot_available() -> None:
    try:
        import matplotlib  # noqa: F401, PLC0415 - checked before any work is done
    except ImportError as exc:
        raise ConfigurationError(PLOT_HINT) from exc


def _load_models(
    settings: Any, reader: Mapping[str, Any], model_ref: str, against_ref: str | None
) -> tuple[LoadedModel, LoadedModel | None]:
    """Resolve ``NAME/VERSION`` and ``NAME@ALIAS`` through the model repository and load both.

    Raises:
        ConfigurationError: Unknown model, version or alias; a model that fails to load; the
            same version twice.
    """
    from stream_scorer.lifecycle.repository import ModelRef  # noqa: PLC0415
    from stream_scorer.lifecycle.service import catch_up, repository  # noqa: PLC0415
    from stream_scorer.model_set import load_model  # noqa: PLC0415

    repo = repository(settings)
    catch_up(settings, repo)  # watch = kafka: the aliases live on the control topic
    alias = settings.lifecycle.alias

    def load(text: str) -> LoadedModel:
        name, version = repo.resolve(ModelRef.parse(text), alias)
        folder = repo.folder(name, version)
        # model.threshold overrides only model.path's own model, as in the service.
        same = folder.resolve() == Path(settings.model.path).resolve()
        threshold = settings.model.threshold if same else None
        return load_model(
            folder, reader, settings.model.intra_op_threads, settings.model.verify_sha256,
            threshold,
        )  # fmt: skip

    model = load(model_ref)
    against = None if against_ref is None else load(against_ref)
    if against is not None and against.label == model.label:
        msg = f"replay: --model and --against are the same version ({model.label})"
        raise ConfigurationError(msg)
    return model, against


def run_replay(args: argparse.Namespace, settings: Any, out: IO[str]) -> int:
    """``stream-scorer replay``: resolve, read, score, report. Returns the exit code.

    Raises:
        ConfigurationError: Bad range, unknown model or topic, missing plot extra (exit 2).
        FatalError: The cluster, the registry or a model fails midway (exit 1).
    """
    from stream_scorer.app import (  # noqa: PLC0415 - the composition root's own builders
        build_decoder,
        build_registry,
        event_fields,
        load_schema,
    )
    from stream_scorer.logging import librdkafka_logger  # noqa: PLC0415

    spec = RangeSpec.from_args(args)
    if args.png is not None:
        _check_plot_available()
    if args.idle_timeout <= 0:
        msg = f"--idle-timeout must be above 0, got {args.idle_timeout}"
        raise ConfigurationError(msg)
    reader = load_schema(settings.schema_.reader, "schema.reader")
    model, against = _load_models(settings, reader, args.model, args.against)
    fields = event_fields(settings, model.card, reader)
    monitoring = settings.monitoring
    scorer = ReplayScorer(
        model,
        against,
        DriftConfig(
            thresholds=monitoring.thresholds,
            psi_warn=monitoring.psi_warn,
            psi_alert=monitoring.psi_alert,
            sigmas=monitoring.sigmas,
        ),
        fields.id_field,
        args.top,
    )
    decoder = build_decoder(settings, reader, build_registry(settings))
    exactly_once = settings.delivery.mode == "exactly-once"
    config = consumer_config(
        settings.kafka.client_config(),
        settings.kafka.group_id,
        settings.kafka.consumer,
        isolation_level="read_committed" if exactly_once else None,
    )
    config["logger"] = librdkafka_logger()
    topic = args.topic or settings.topics.input
    writer = None if args.out is None else _ResultWriter(args.out)
    range_reader = RangeReader(config, topic, settings.batch.max_size, args.idle_timeout)
    try:
        ranges = range_reader.resolve(spec)
        log.info("replay_range", topic=topic, ranges={str(p): r for p, r in ranges.items()})
        for batch in range_reader.batches():
            results = scorer.decode_and_score(decoder.decode, batch)
            if writer is not None:
                writer.write(results)
    finally:
        range_reader.close()
        if writer is not None:
            writer.close()
    report = scorer.finish(topic, ranges)
    if args.png is not None:
        write_png(args.png, scorer)
    out.write(json.dumps(report.data, indent=2, default=_plain) + "\n" if args.json
              else report.table())  # fmt: skip
    return 0


def _plain(value: Any) -> Any:
    """JSON for numpy scalars; NaN never reaches here (the summaries map it to None)."""
    if isinstance(value, np.generic):
        item = value.item()
        return None if isinstance(item, float) and math.isnan(item) else item
    msg = f"not JSON serialisable: {type(value).__name__}"
    raise TypeError(msg)
