"""Performance after labels: outcomes from a labels topic joined against what was scored.

A label is a message "event id -> outcome" (a chargeback days later, a case closed by an
analyst), arriving late and out of order, possibly twice, possibly before the score it
belongs to (it may travel on another partition than the event). Three parts:

- :class:`LabelParser` reads one label message: a JSON object, or Confluent-framed Avro whose
  writer schema comes from the registry; the event id is a configured field, else the key.
  A label it cannot read is a :class:`LabelError` (counted, logged with its coordinates).
- :class:`LabelJoin` holds the bounded state. The monitor records, per batch and per model
  that decided (the champion, and the canary for its share), ``event id -> model version,
  flagged, score, time`` (:meth:`LabelJoin.record`: ids hashed to 64 bits straight from the
  decoded batch, sorted, ~14 bytes an event; no Python bytecode runs per event). A label
  finds its event there and counts into
  that version's confusion (TP/FP/FN/TN, so recall sees unflagged events too); a label for an
  event not seen yet is held. Both sides have two bounds, an age and a count: a scored event
  waits at most ``max_age_s`` (and at most ``max_pending`` are held), a held label at most
  ``held_max_age_s`` (at most ``max_held``). What passes a bound is counted and forgotten,
  never kept. A second label for an event already matched is counted as a duplicate while the
  event is still held; the first outcome stands.
- :class:`LabelsConsumer` reads the labels topic in a thread of its own, with a group of its
  own (``<group>-labels``): it never touches the main consumer, its group or its offsets.

Realized precision and recall are cumulative since the version joined the model set (or the
process started), per model version, from all labelled events: precision = TP / (TP + FP),
recall = TP / (TP + FN). Gauges carry bounded label sets (model name and version of the live
set); a version that leaves the set is forgotten, and labels of its events are counted as
``retired``.

Compare NannyML, which joins delayed targets onto its analysis data by an identifier column
offline and ignores rows whose target is missing, and Evidently, which takes a target column
in a batch: the same join here runs continuously, inside the stream, with its memory bounded.
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import fastavro
import numpy as np
import structlog
from numpy.typing import NDArray
from prometheus_client import CollectorRegistry, Counter, Gauge

from stream_scorer.decode.columnar import BytesColumn
from stream_scorer.errors import DecodeError, FatalError

if TYPE_CHECKING:  # the pipeline imports this package: no import cycle at run time
    from confluent_kafka import Message

    from stream_scorer.decode.framing import Framing
    from stream_scorer.records import DecodedBatch

__all__ = [
    "CONFUSION",
    "LabelError",
    "LabelJoin",
    "LabelMetrics",
    "LabelParser",
    "LabelsConsumer",
    "event_hashes",
    "event_ids",
    "id_hashes",
    "labels_consumer_config",
]

log = structlog.get_logger(__name__)

#: Confusion cells, in the order of each model's counts.
CONFUSION = ("tp", "fp", "fn", "tn")
#: FNV-1a's 64-bit offset basis and prime: the word fold of :func:`_hash_slices`.
_FNV_BASIS = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
#: Byte offsets 0..7 of one word, and the mask keeping a word's first k bytes (k = 0..8).
_BYTE_OFFSETS = np.arange(8, dtype=np.int64)
_BYTE_MASKS = np.array([(1 << (8 * k)) - 1 for k in range(8)] + [2**64 - 1], dtype=np.uint64)
#: Labels read per consumer call: a label is small and rare next to events.
_LABELS_PER_POLL = 500
#: Seconds the labels consumer waits for a message: short, so a stop is seen within it.
_POLL_S = 0.5
#: Most ``label_invalid`` log lines a minute (every invalid label is counted).
_INVALID_LOGS_PER_MINUTE = 10


class LabelError(ValueError):
    """A label message that cannot be read: no id, no outcome, not JSON or Avro."""


def _outcome_text(value: Any) -> str:
    """An outcome as the lower-case text ``labels.positive`` is compared with."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip().lower()


class LabelParser:
    """Reads ``(event id, positive)`` from one label message."""

    def __init__(
        self,
        format_: Literal["json", "avro"],
        id_field: str | None,
        outcome_field: str,
        positive: Sequence[str],
        framing: Framing | None = None,
    ) -> None:
        """Parser for labels of ``format_``.

        Args:
            format_: ``json`` (an object) or ``avro`` (Confluent-framed, via ``framing``).
            id_field: Field naming the event; None, or absent from a label: the message key.
            outcome_field: Field holding the outcome.
            positive: Outcomes (lower-case text) that count as positive.
            framing: Confluent framing with the registry, for ``avro``.

        Raises:
            ValueError: ``avro`` without a framing.
        """
        if format_ == "avro" and framing is None:
            msg = "labels.format = 'avro' needs the Confluent framing (a schema registry)"
            raise ValueError(msg)
        self._format = format_
        self._id_field = id_field
        self._outcome_field = outcome_field
        self._positive = frozenset(p.strip().lower() for p in positive)
        self._framing = framing

    def parse(self, key: bytes | None, value: bytes | None) -> tuple[str, bool]:
        """``(event id, positive)`` of one label.

        Raises:
            LabelError: The label is not readable or has no id or outcome.
            FatalError: The registry is unreachable (from the framing).
        """
        if value is None:
            msg = "label has no value (tombstone)"
            raise LabelError(msg)
        record = self._json(value) if self._format == "json" else self._avro(value)
        if self._outcome_field not in record or record[self._outcome_field] is None:
            msg = f"label has no outcome field {self._outcome_field!r}"
            raise LabelError(msg)
        event_id = None if self._id_field is None else record.get(self._id_field)
        if event_id is None:
            if key is None:
                msg = (
                    f"label has no id field {self._id_field!r} and no key"
                    if self._id_field is not None
                    else "label has no key (labels.id_field is unset: the key is the id)"
                )
                raise LabelError(msg)
            try:
                event_id = key.decode()
            except UnicodeDecodeError as exc:
                msg = "label key is not UTF-8 text"
                raise LabelError(msg) from exc
        return str(event_id), _outcome_text(record[self._outcome_field]) in self._positive

    @staticmethod
    def _json(value: bytes) -> Mapping[str, Any]:
        try:
            record = json.loads(value)
        except (ValueError, RecursionError) as exc:
            msg = f"label is not JSON: {type(exc).__name__}"
            raise LabelError(msg) from exc
        if not isinstance(record, dict):
            msg = f"label is JSON {type(record).__name__}, not an object"
            raise LabelError(msg)
        return record

    def _avro(self, value: bytes) -> Mapping[str, Any]:
        assert self._framing is not None  # noqa: S101 - checked in __init__
        try:
            writer, start = self._framing.split(value)
            record = fastavro.schemaless_reader(io.BytesIO(value[start:]), writer.parsed, None)
        except DecodeError as exc:
            raise LabelError(str(exc)) from exc
        except (ValueError, EOFError, IndexError, TypeError) as exc:  # fastavro's body errors
            msg = f"label is not Avro of its writer schema: {type(exc).__name__}"
            raise LabelError(msg) from exc
        if not isinstance(record, dict):
            msg = "label's writer schema is not a record"
            raise LabelError(msg)
        return record


def id_hashes(ids: Sequence[bytes]) -> NDArray[np.uint64]:
    """The 64-bit hash of each id (UTF-8 bytes), as :func:`event_hashes` computes it."""
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    starts = np.zeros(len(ids), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    return _hash_slices(np.frombuffer(b"".join(ids), dtype=np.uint8), starts, lengths)


def _hash_slices(
    buffer: NDArray[np.uint8], starts: NDArray[np.int64], lengths: NDArray[np.int64]
) -> NDArray[np.uint64]:
    """Hash each ``buffer[start : start + length]``, all rows at once (no bytecode per row).

    Each row is read as little-endian 64-bit words (bytes past its length masked off), folded
    FNV-style with its length, then finished with splitmix64's mixer. Two ids collide with
    probability ~2^-64: at a million pending events, about one wrong match in 10^7 years of
    labels at 1,000 a second.
    """
    out = (lengths.astype(np.uint64) ^ _FNV_BASIS) * _FNV_PRIME
    if not len(starts) or not len(buffer):
        return _mix(out)
    words = -(-int(lengths.max()) // 8)
    # One gather of every row's first 8 * words bytes (past the buffer's end: its last byte,
    # masked off below), read as little-endian words.
    index = np.minimum(starts[:, None] + np.arange(8 * words), len(buffer) - 1)
    chunks = np.ascontiguousarray(buffer[index]).view("<u8")  # (rows, words)
    valid = np.clip(lengths[:, None] - 8 * np.arange(words), 0, 8)  # the row's bytes per word
    chunks &= _BYTE_MASKS[valid]
    for k in range(words):
        # Only a row's own words fold in: its hash must not depend on the batch's longest id.
        out = np.where(valid[:, k] > 0, (out ^ chunks[:, k]) * _FNV_PRIME, out)
    return _mix(out)


def _mix(x: NDArray[np.uint64]) -> NDArray[np.uint64]:
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def event_hashes(
    decoded: DecodedBatch, rows: NDArray[np.intp], id_field: str | None
) -> NDArray[np.uint64]:
    """The hashed event ids of ``rows``, the ids alerts and score records carry: the
    ``id_field`` value as text, else (no field, or a null) ``topic[partition]@offset``.

    A string id column from the columnar decoder is hashed straight from the batch buffer;
    other columns go through their text (Python per row: offline input, numeric ids).
    """
    column = decoded.columns.get(id_field) if id_field is not None else None
    if column is None:
        return id_hashes([i.encode() for i in event_ids(decoded, rows, id_field)])
    null = column.null
    if isinstance(column, BytesColumn) and column.is_string and type(column) is BytesColumn:
        out = _hash_slices(column.buffer, column.start[rows], column.length[rows])
    else:
        texts = column.to_objects()[rows].tolist()
        out = id_hashes([str(v).encode() for v in texts])
    if null is not None and null[rows].any():
        where = np.flatnonzero(null[rows])
        records = decoded.records
        out[where] = id_hashes([records[int(r)].coordinates.encode() for r in rows[where]])
    return out


def event_ids(decoded: DecodedBatch, rows: NDArray[np.intp], id_field: str | None) -> list[str]:
    """The event ids of ``rows`` as text (see :func:`event_hashes`)."""
    records = decoded.records
    if id_field is not None and id_field in decoded.columns:
        column = decoded.columns[id_field]
        values = column.to_objects()[rows].tolist()
        if column.null is None or not column.null[rows].any():
            return list(map(str, values))  # str of a str is the str itself: C speed
        return [
            records[r].coordinates if v is None else str(v)
            for v, r in zip(values, rows.tolist(), strict=True)
        ]
    return [records[r].coordinates for r in rows.tolist()]


def labels_consumer_config(
    client: Mapping[str, Any],
    group_id: str,
    extra: Mapping[str, Any],
    offset_reset: Literal["latest", "earliest"],
) -> dict[str, Any]:
    """librdkafka config of the labels consumer: connection → user extras → its own group.

    Unlike the main consumer it commits automatically: a label re-read after a crash can only
    count as a duplicate, and none is lost to a commit that never came.
    """
    return {
        **client,
        **extra,
        "group.id": group_id,
        "auto.offset.reset": offset_reset,
        "enable.auto.commit": True,
        "enable.auto.offset.store": True,
    }


@dataclass(slots=True)
class _Segment:
    """Scored events of one batch and one model, sorted by id hash (for binary search)."""

    hashes: NDArray[np.uint64]
    model: int
    flagged: NDArray[np.bool_]
    scores: NDArray[np.float32]
    #: True once a label matched the row.
    matched: NDArray[np.bool_]
    time_s: float

    def find(self, hashes: NDArray[np.uint64]) -> tuple[NDArray[np.bool_], NDArray[np.intp]]:
        """Which of ``hashes`` this segment holds, and at which row."""
        rows = np.searchsorted(self.hashes, hashes)
        rows = np.minimum(rows, len(self.hashes) - 1)
        return self.hashes[rows] == hashes, rows


@dataclass(slots=True)
class _Model:
    """One model version the join has seen, and its counts."""

    name: str
    version: str
    live: bool = True
    #: TP, FP, FN, TN.
    confusion: NDArray[np.int64] = field(default_factory=lambda: np.zeros(4, dtype=np.int64))
    matched: int = 0


class LabelMetrics:
    """Prometheus metrics of the join."""

    def __init__(self, registry: CollectorRegistry) -> None:
        """Create the metrics in ``registry``."""
        model = ["model_name", "model_version"]
        self.received = Counter(
            "stream_scorer_labels_received", "Label messages read from the labels topic.",
            registry=registry,
        )  # fmt: skip
        self.matched = Counter(
            "stream_scorer_labels_matched",
            "Labels joined to a scored event, per model version that decided it.",
            model, registry=registry,
        )  # fmt: skip
        self.outcomes = Counter(
            "stream_scorer_label_outcomes",
            "Labelled events by confusion cell (tp, fp, fn, tn) per model version; with "
            "labels.missing = negative, events unlabelled at max age count as negatives.",
            [*model, "confusion"], registry=registry,
        )  # fmt: skip
        self.dropped = Counter(
            "stream_scorer_labels_dropped",
            "Labels not matched: invalid, duplicate, expired or evicted while held, retired.",
            ["reason"], registry=registry,
        )  # fmt: skip
        self.unlabelled = Counter(
            "stream_scorer_scored_unlabelled",
            "Scored events forgotten without a label: expired (max age) or evicted (cap).",
            ["reason"], registry=registry,
        )  # fmt: skip
        self.precision = Gauge(
            "stream_scorer_realized_precision",
            "TP / (TP + FP) over labelled events since the version joined the set.",
            model, registry=registry,
        )  # fmt: skip
        self.recall = Gauge(
            "stream_scorer_realized_recall",
            "TP / (TP + FN) over labelled events since the version joined the set.",
            model, registry=registry,
        )  # fmt: skip
        self.pending = Gauge(
            "stream_scorer_label_pending_events", "Scored event rows held for their labels.",
            registry=registry,
        )  # fmt: skip
        self.held = Gauge(
            "stream_scorer_label_held_labels", "Labels held for events not scored (yet).",
            registry=registry,
        )  # fmt: skip
        for reason in ("invalid", "duplicate", "expired", "evicted", "retired"):
            self.dropped.labels(reason)
        for reason in ("expired", "evicted"):
            self.unlabelled.labels(reason)

    def add_model(self, name: str, version: str) -> None:
        """Initialise a live version's series (they read 0 before any label)."""
        self.matched.labels(name, version)
        for cell in CONFUSION:
            self.outcomes.labels(name, version, cell)

    def forget(self, name: str, version: str) -> None:
        """Remove a version's series: it left the model set."""
        for metric in (self.matched, self.precision, self.recall):
            with contextlib.suppress(KeyError):  # never exported (no label yet)
                metric.remove(name, version)
        for cell in CONFUSION:
            with contextlib.suppress(KeyError):
                self.outcomes.remove(name, version, cell)


class LabelJoin:
    """Scored events and labels, joined by event id, with both sides bounded.

    Events are held as 64-bit hashes of their ids, one array per batch and model, sorted, so
    recording a batch is a few numpy calls and ~14 bytes an event (hash, flag, score, matched).
    A poll of labels is looked up in every held segment, newest first, one ``searchsorted``
    per segment; the first hit decides (an event scored twice, a replay after a crash, is
    matched by its newest record), and a hit already matched is a duplicate.

    Thread-safe: the pipeline's monitor records from the loop's thread, the labels consumer
    adds labels from its own; one lock guards the state, and the loop's side holds it only
    to append a segment.
    """

    def __init__(
        self,
        max_age_s: float = 86_400.0,
        max_pending: int = 1_000_000,
        held_max_age_s: float = 600.0,
        max_held: int = 100_000,
        missing: Literal["ignore", "negative"] = "ignore",
        log_every: int = 1000,
        metrics: LabelMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """An empty join.

        Args:
            max_age_s: How long a scored event waits for its label.
            max_pending: Most scored event rows held.
            held_max_age_s: How long a label waits for its event.
            max_held: Most labels held.
            missing: What an event unlabelled at ``max_age_s`` counts as.
            log_every: One ``labels_matched`` line per this many matches.
            metrics: Where counts go (None: kept on the object only).
            clock: Seconds, monotonic (tests move it).
        """
        self._max_age_s = max_age_s
        self._max_pending = max_pending
        self._held_max_age_s = held_max_age_s
        self._max_held = max_held
        self._missing = missing
        self._log_every = log_every
        self._metrics = metrics
        self._clock = clock
        self._lock = threading.Lock()
        #: Held segments, oldest first; ``_appended`` counts every segment ever appended and
        #: ``_retried`` how many of them the held labels were last looked up in.
        self._segments: deque[_Segment] = deque()
        self._appended = 0
        self._retried = 0
        #: Rows held in segments (the memory bound counts these).
        self._rows = 0
        #: Labels whose event is not held: id hash -> (positive, arrival time), oldest first.
        self._held: OrderedDict[int, tuple[bool, float]] = OrderedDict()
        self._models: list[_Model] = []
        self._model_index: dict[tuple[str, str], int] = {}
        self._matched_since_log = 0
        #: Counts since start (also exported), for tests and the report.
        self.dropped: dict[str, int] = dict.fromkeys(
            ("invalid", "duplicate", "expired", "evicted", "retired"), 0
        )
        self.unlabelled: dict[str, int] = dict.fromkeys(("expired", "evicted"), 0)

    # -- the scored side -------------------------------------------------------------------

    def record(
        self,
        name: str,
        version: str,
        hashes: NDArray[np.uint64],
        flagged: NDArray[np.bool_],
        scores: NDArray[np.floating[Any]],
    ) -> None:
        """Hold the events one model decided in one batch until their labels come.

        Args:
            name: Model name.
            version: Model version.
            hashes: Hashed event id per row (:func:`event_hashes`, :func:`id_hashes`).
            flagged: Per row, whether the model flagged it (published an alert).
            scores: Per row, the decision score.
        """
        if not len(hashes):
            return
        order = np.argsort(hashes, kind="stable")  # sorting outside the lock
        now = self._clock()
        with self._lock:
            self._expire(now)
            model = self._model(name, version)
            if len(order) > self._max_pending:  # one batch over the cap: keep its newest rows
                self._count_unlabelled("evicted", len(order) - self._max_pending)
                keep = np.arange(len(order) - self._max_pending, len(order))
                order = keep[np.argsort(hashes[keep], kind="stable")]
            while self._segments and self._rows + len(order) > self._max_pending:
                self._drop_oldest("evicted")
            self._segments.append(
                _Segment(
                    hashes[order],
                    model,
                    np.asarray(flagged, dtype=np.bool_)[order],
                    np.asarray(scores, dtype=np.float32)[order],
                    np.zeros(len(order), dtype=np.bool_),
                    now,
                )
            )
            self._appended += 1
            self._rows += len(order)
            self._export_sizes()

    def _model(self, name: str, version: str) -> int:
        key = (name, version)
        index = self._model_index.get(key)
        if index is None:
            index = len(self._models)
            self._models.append(_Model(name, version))
            self._model_index[key] = index
            if self._metrics is not None:
                self._metrics.add_model(name, version)
        elif not self._models[index].live:  # back in the set: counted afresh
            self._models[index] = _Model(name, version)
            if self._metrics is not None:
                self._metrics.add_model(name, version)
        return index

    def retain(self, live: set[tuple[str, str]]) -> None:
        """Forget the versions not in ``live`` (``(name, version)`` of the deciding models)."""
        with self._lock:
            for model in self._models:
                if model.live and (model.name, model.version) not in live:
                    model.live = False
                    if self._metrics is not None:
                        self._metrics.forget(model.name, model.version)

    # -- the labels side -------------------------------------------------------------------

    def add_labels(self, labels: Sequence[tuple[str, bool]], invalid: int = 0) -> None:
        """Join ``(event id, positive)`` labels; hold those whose event is not held.

        Args:
            labels: The labels read.
            invalid: Labels of the same poll that could not be read (counted).
        """
        hashes = id_hashes([event_id.encode() for event_id, _ in labels])
        positive = np.fromiter((p for _, p in labels), dtype=np.bool_, count=len(labels))
        now = self._clock()
        with self._lock:
            if self._metrics is not None and len(labels) + invalid:
                self._metrics.received.inc(len(labels) + invalid)
            if invalid:
                self._drop("invalid", invalid)
            self._expire(now)
            self._retry_held()
            if len(hashes):
                # A second label for one id in the same poll is a duplicate: the first stands.
                _, first = np.unique(hashes, return_index=True)
                if len(first) < len(hashes):
                    self._drop("duplicate", len(hashes) - len(first))
                    first.sort()
                    hashes, positive = hashes[first], positive[first]
                unmatched = self._join(hashes, positive)
                for h, p in zip(
                    hashes[unmatched].tolist(), positive[unmatched].tolist(), strict=True
                ):
                    if h in self._held:
                        self._drop("duplicate")
                        continue
                    while len(self._held) >= self._max_held:
                        self._held.popitem(last=False)
                        self._drop("evicted")
                    self._held[h] = (p, now)
            self._export_sizes()

    def tick(self) -> None:
        """Apply the age bounds and match held labels to newly scored events (the labels
        consumer calls it after every poll, even an empty one)."""
        with self._lock:
            self._expire(self._clock())
            self._retry_held()
            self._export_sizes()

    def _retry_held(self) -> None:
        """Look the held labels up in the segments appended since the last look."""
        fresh = min(self._appended - self._retried, len(self._segments))
        self._retried = self._appended
        if not self._held or fresh == 0:
            return
        hashes = np.fromiter(self._held.keys(), dtype=np.uint64, count=len(self._held))
        positive = np.fromiter(
            (p for p, _ in self._held.values()), dtype=np.bool_, count=len(self._held)
        )
        unmatched = self._join(hashes, positive, newest=fresh)
        for h in hashes[~unmatched].tolist():
            del self._held[h]

    def _join(
        self, hashes: NDArray[np.uint64], positive: NDArray[np.bool_], newest: int | None = None
    ) -> NDArray[np.bool_]:
        """Match labels in the held segments (the ``newest`` only, if given), newest first;
        count matches and duplicates; return which labels found no event."""
        todo = np.ones(len(hashes), dtype=np.bool_)
        segments = reversed(self._segments)
        for k, segment in enumerate(segments):
            if newest is not None and k >= newest:
                break
            where = np.flatnonzero(todo)
            if not len(where):
                break
            found, rows = segment.find(hashes[where])
            if not found.any():
                continue
            hit, rows = where[found], rows[found]
            todo[hit] = False
            already = segment.matched[rows]
            if already.any():
                self._drop("duplicate", int(np.count_nonzero(already)))
                hit, rows = hit[~already], rows[~already]
            segment.matched[rows] = True
            self._count(segment.model, segment.flagged[rows], positive[hit])
        return todo

    def _count(
        self,
        index: int,
        flagged: NDArray[np.bool_],
        positive: NDArray[np.bool_],
        labelled: bool = True,
    ) -> None:
        """Add outcomes to the confusion of model ``index`` (``labelled``: from labels, not
        from ``missing = "negative"``)."""
        if not len(flagged):
            return
        model = self._models[index]
        if not model.live:
            self._drop("retired", len(flagged))
            return
        # Cell index: tp 0, fp 1, fn 2, tn 3.
        cells = np.bincount(2 * (~flagged).astype(np.intp) + ~positive, minlength=4)
        model.confusion += cells
        if labelled:
            model.matched += len(flagged)
        if self._metrics is not None:
            if labelled:
                self._metrics.matched.labels(model.name, model.version).inc(len(flagged))
            for cell, count in zip(CONFUSION, cells.tolist(), strict=True):
                if count:
                    self._metrics.outcomes.labels(model.name, model.version, cell).inc(count)
            self._export_performance(model)
        self._matched_since_log += len(flagged) if labelled else 0
        if self._matched_since_log >= self._log_every:
            self._matched_since_log %= self._log_every
            log.info("labels_matched", models=self._report())

    # -- bounds ----------------------------------------------------------------------------

    def _expire(self, now: float) -> None:
        oldest = now - self._max_age_s
        while self._segments and self._segments[0].time_s < oldest:
            self._drop_oldest("expired")
        held_oldest = now - self._held_max_age_s
        while self._held:
            event_hash, (_, arrived) = next(iter(self._held.items()))
            if arrived >= held_oldest:
                break
            del self._held[event_hash]
            self._drop("expired")

    def _drop_oldest(self, reason: Literal["expired", "evicted"]) -> None:
        """Forget the oldest segment: its unmatched rows are counted as unlabelled."""
        segment = self._segments.popleft()
        self._rows -= len(segment.hashes)
        unlabelled = ~segment.matched
        count = int(np.count_nonzero(unlabelled))
        if not count:
            return
        self._count_unlabelled(reason, count)
        model = self._models[segment.model]
        if reason == "expired" and self._missing == "negative" and model.live:
            # No label by max age: a negative (flagged -> FP, unflagged -> TN).
            negative = np.zeros(count, dtype=np.bool_)
            self._count(segment.model, segment.flagged[unlabelled], negative, labelled=False)

    def _count_unlabelled(self, reason: Literal["expired", "evicted"], count: int) -> None:
        self.unlabelled[reason] += count
        if self._metrics is not None:
            self._metrics.unlabelled.labels(reason).inc(count)

    def _drop(self, reason: str, count: int = 1) -> None:
        self.dropped[reason] += count
        if self._metrics is not None:
            self._metrics.dropped.labels(reason).inc(count)

    # -- reading ---------------------------------------------------------------------------

    def _export_sizes(self) -> None:
        if self._metrics is not None:
            self._metrics.pending.set(self._rows)
            self._metrics.held.set(len(self._held))

    def _export_performance(self, model: _Model) -> None:
        assert self._metrics is not None  # noqa: S101 - callers check
        precision, recall = _performance(model.confusion)
        if precision is not None:
            self._metrics.precision.labels(model.name, model.version).set(precision)
        if recall is not None:
            self._metrics.recall.labels(model.name, model.version).set(recall)

    def _report(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for model in self._models:
            if model.live:
                precision, recall = _performance(model.confusion)
                out[f"{model.name}/{model.version}"] = {
                    "matched": model.matched,
                    **dict(zip(CONFUSION, model.confusion.tolist(), strict=True)),
                    "precision": precision,
                    "recall": recall,
                }
        return out

    def report(self) -> dict[str, dict[str, Any]]:
        """Per live ``name/version``: matched labels, TP/FP/FN/TN, precision and recall."""
        with self._lock:
            return self._report()

    @property
    def pending_rows(self) -> int:
        """Scored event rows held now (at most ``max_pending``)."""
        return self._rows

    @property
    def held_labels(self) -> int:
        """Labels held now (at most ``max_held``)."""
        return len(self._held)


def _performance(confusion: NDArray[np.int64]) -> tuple[float | None, float | None]:
    """``(precision, recall)`` of TP, FP, FN, TN; None where undefined."""
    tp, fp, fn, _ = confusion.tolist()
    return (tp / (tp + fp) if tp + fp else None, tp / (tp + fn) if tp + fn else None)


class LabelsConsumer:
    """Reads the labels topic in its own thread and feeds the join.

    Its group is its own (``<group>-labels`` by default) and it commits automatically: labels
    are monitoring, so one re-read after a crash only counts duplicates, and the main
    consumer's group and offsets are never touched.
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        topic: str,
        parser: LabelParser,
        join: LabelJoin,
    ) -> None:
        """Prepare; nothing connects before :meth:`start`.

        Args:
            config: Complete librdkafka consumer config of the labels group.
            topic: The labels topic.
            parser: Reads each label.
            join: Where labels go.
        """
        self._config = dict(config)
        self._topic = topic
        self._parser = parser
        self._join = join
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._invalid_logged: list[float] = []
        #: Why the thread stopped, if it failed.
        self.error: BaseException | None = None

    def start(self) -> None:
        """Start the thread."""
        self._thread = threading.Thread(target=self._run, name="labels-consumer", daemon=True)
        self._thread.start()

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the thread and close the consumer (leaves the labels group)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        from confluent_kafka import Consumer  # noqa: PLC0415 - imported only where labels are on

        consumer = Consumer(self._config)
        try:
            consumer.subscribe([self._topic])
            log.info("labels_consumer_started", topic=self._topic, group=self._config["group.id"])
            while not self._stop.is_set():
                messages = consumer.consume(_LABELS_PER_POLL, _POLL_S)
                if messages:
                    self.handle(messages)
                else:
                    self._join.tick()
        except FatalError as exc:  # the registry is gone: monitoring stops, scoring goes on
            self.error = exc
            log.error("labels_consumer_failed", error=str(exc))
        except Exception as exc:  # a monitoring thread must not take the service down
            self.error = exc
            log.exception("labels_consumer_failed")
        finally:
            consumer.close()

    def handle(self, messages: Sequence[Message]) -> None:
        """Parse one poll's messages and join the good ones; count and log the bad."""
        labels: list[tuple[str, bool]] = []
        invalid = 0
        for message in messages:
            if message.error() is not None:
                log.warning("labels_consumer_error", error=str(message.error()))
                continue
            try:
                labels.append(self._parser.parse(message.key(), message.value()))
            except LabelError as exc:
                invalid += 1
                self._log_invalid(message, exc)
        self._join.add_labels(labels, invalid)

    def _log_invalid(self, message: Message, exc: LabelError) -> None:
        now = time.monotonic()
        self._invalid_logged = [t for t in self._invalid_logged if t > now - 60]
        if len(self._invalid_logged) < _INVALID_LOGS_PER_MINUTE:
            self._invalid_logged.append(now)
            log.warning(
                "label_invalid",
                partition=f"{message.topic()}[{message.partition()}]",
                offset=message.offset(),
                reason=str(exc)[:200],
            )
