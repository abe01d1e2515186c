"""Drift per input and of the score, in tumbling windows, against the model card's reference.

Each model version with a ``reference`` in its card keeps one open window: per input, counts
in the card's frozen bins plus a null count; counts of its scores in the score's bins; events,
scored and flagged rows. A batch adds to the counts with one ``searchsorted``/``bincount`` per
input (no Python per event). A window closes at the first batch boundary where it holds
``window_events`` events, or ``window_seconds`` have passed since it opened and it holds at
least ``min_window_events`` (a window of a handful of events says nothing; it keeps
collecting). On closing, per input: PSI and Jensen–Shannon distance against the reference,
null rate, unseen-category rate; for the score: PSI and JS distance; the alert rate. They go to
gauges labelled ``model_name``, ``model_version``, ``input`` (the card's fields and
``_score``: a bounded set), and one ``drift_alarm`` warning is logged for a window in which any
input crosses its threshold.

Thresholds: ``fixed`` (PSI 0.1 to watch, 0.25 to alarm, the industry rule of thumb) or
``learned``: ``mean + k·σ`` of the PSI over reference chunks recorded in the card (NannyML's
rule), scaled by ``chunk_size / window events`` because the PSI of a sample from an unchanged
distribution shrinks like ``1/n`` (it is a chi-square statistic over ``n``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
import structlog
from numpy.typing import NDArray
from prometheus_client import CollectorRegistry, Counter, Gauge

from stream_scorer.decode.columnar import BytesColumn
from stream_scorer.monitoring.codes import category_codes
from stream_scorer.monitoring.perf import PerformanceMetrics, expected_performance
from stream_scorer.monitoring.reference import SCORE, FeatureReference, Reference, js_distance, psi
from stream_scorer.records import DecodedBatch

if TYPE_CHECKING:  # the pipeline imports this package: no import cycle at run time
    from stream_scorer.model_set import LoadedModel
    from stream_scorer.pipeline import ModelDecision

__all__ = ["DriftConfig", "DriftMetrics", "DriftMonitor", "WindowReport"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class DriftConfig:
    """How windows are cut and when a PSI is an alarm."""

    #: Close a window once it holds this many events (0: no count limit).
    window_events: int = 50_000
    #: Close a window once this many seconds have passed (0: no time limit) ...
    window_seconds: float = 300.0
    #: ... provided it holds at least this many events.
    min_window_events: int = 1000
    thresholds: Literal["fixed", "learned"] = "fixed"
    #: Fixed thresholds: PSI to watch and PSI to alarm.
    psi_warn: float = 0.1
    psi_alert: float = 0.25
    #: Learned thresholds: standard deviations above the mean chunk PSI ...
    sigmas: float = 3.0
    #: ... and never below this PSI (an input that never varied in training has a spread of 0).
    learned_floor: float = 0.01

    def __post_init__(self) -> None:
        """A window must close somehow."""
        if self.window_events <= 0 and self.window_seconds <= 0:
            msg = "drift windows need window_events or window_seconds"
            raise ValueError(msg)


@dataclass(frozen=True, slots=True)
class WindowReport:
    """What one closed window says about one model version."""

    model_name: str
    model_version: str
    events: int
    scored: int
    psi: dict[str, float]
    js: dict[str, float]
    null_rate: dict[str, float]
    unseen_rate: dict[str, float]
    alert_rate: float
    #: The PSI alarm threshold each input was held to in this window.
    thresholds: dict[str, float]
    #: Inputs whose PSI reached the alarm threshold (``_score`` for the score).
    crossed: list[str]
    #: Inputs at or above the watch level but below the alarm.
    watch: list[str]
    #: CBPE-style estimates from the window's scores (:mod:`.perf`); None when undefined.
    expected_precision: float | None = None
    expected_recall: float | None = None


class DriftMetrics:
    """The drift gauges and counters, in an injected registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        """Create the metrics in ``registry``."""
        labels = ["model_name", "model_version", "input"]
        self.psi = Gauge(
            "stream_scorer_drift_psi",
            "PSI of the last closed window against the model card's reference.",
            labels, registry=registry,
        )  # fmt: skip
        self.js = Gauge(
            "stream_scorer_drift_js_distance",
            "Jensen-Shannon distance (base 2) of the last closed window against the reference.",
            labels, registry=registry,
        )  # fmt: skip
        self.threshold = Gauge(
            "stream_scorer_drift_psi_threshold",
            "PSI at which the input's drift alarms, for the last closed window.",
            labels, registry=registry,
        )  # fmt: skip
        self.null_ratio = Gauge(
            "stream_scorer_drift_null_ratio",
            "Share of nulls (and NaN) in the input in the last closed window.",
            labels, registry=registry,
        )  # fmt: skip
        self.unseen_ratio = Gauge(
            "stream_scorer_drift_unseen_category_ratio",
            "Share of a categorical input's values outside the card's categories.",
            labels, registry=registry,
        )  # fmt: skip
        self.alarms = Counter(
            "stream_scorer_drift_alarms",
            "Closed windows in which the input's PSI reached its alarm threshold.",
            labels, registry=registry,
        )  # fmt: skip
        model = ["model_name", "model_version"]
        self.alert_ratio = Gauge(
            "stream_scorer_drift_alert_ratio",
            "Share of scored events flagged in the last closed window.",
            model, registry=registry,
        )  # fmt: skip
        self.window_events = Gauge(
            "stream_scorer_drift_window_events",
            "Events in the last closed drift window.",
            model, registry=registry,
        )  # fmt: skip
        self.windows = Counter(
            "stream_scorer_drift_windows", "Drift windows closed.", model, registry=registry
        )
        self.performance = PerformanceMetrics(registry)

    def forget(self, name: str, version: str, inputs: Iterable[str]) -> None:
        """Drop a retired model version's series so the label set stays bounded."""
        for metric in (self.psi, self.js, self.threshold, self.null_ratio, self.unseen_ratio,
                       self.alarms):  # fmt: skip
            for name_ in inputs:
                with contextlib.suppress(KeyError):  # never observed for this input
                    metric.remove(name, version, name_)
        for metric in (self.alert_ratio, self.window_events, self.windows,
                       self.performance.precision, self.performance.recall):  # fmt: skip
            with contextlib.suppress(KeyError):
                metric.remove(name, version)


@dataclass(slots=True)
class _Window:
    reference: Reference
    opened_s: float
    counts: dict[str, NDArray[np.int64]] = field(default_factory=dict)
    score: NDArray[np.int64] | None = None
    events: int = 0
    scored: int = 0
    flagged: int = 0
    score_sum: float = 0.0
    flagged_score_sum: float = 0.0

    def reset(self, now_s: float) -> None:
        self.opened_s = now_s
        self.counts = {
            name: np.zeros(ref.n_bins + 1, dtype=np.int64)
            for name, ref in self.reference.inputs.items()
        }
        ref = self.reference.score
        self.score = None if ref is None else np.zeros(ref.n_bins + 1, dtype=np.int64)
        self.events = self.scored = self.flagged = 0
        self.score_sum = self.flagged_score_sum = 0.0


class DriftMonitor:
    """Window histograms per model version; PSI, JS distance, null and unseen rates."""

    def __init__(
        self,
        config: DriftConfig | None = None,
        metrics: DriftMetrics | None = None,
        clock_s: Callable[[], float] = time.monotonic,
    ) -> None:
        """Watch with ``config``; export to ``metrics`` when given; ``clock_s`` for time
        windows (tests pass a fake one)."""
        self.config = config or DriftConfig()
        self._metrics = metrics
        self._clock_s = clock_s
        self._windows: dict[tuple[str, str], _Window | None] = {}
        #: Closed windows, newest last (the last few, for ``models compare`` and tests).
        self.reports: list[WindowReport] = []

    def observe(
        self, model: LoadedModel, decoded: DecodedBatch, decision: ModelDecision
    ) -> WindowReport | None:
        """Count one batch as ``model`` saw it; returns the report of a window it closed."""
        key = (model.name, model.version)
        window = self._windows[key] if key in self._windows else self._open(model)
        if window is None:
            return None  # the card has no reference: nothing to compare against
        for name, ref in window.reference.inputs.items():
            column = decoded.columns.get(name)
            if column is None:
                continue  # a field the decoder does not deliver (not bound by this set)
            if ref.kind == "numeric":
                window.counts[name] += ref.counts(column.to_numpy(np.float32), column.null)
            elif type(column) is BytesColumn and column.is_string:
                window.counts[name] += ref.counts_binned(ref.by_bytes.bins(column), column.null)
            else:
                window.counts[name] += ref.counts_coded(*category_codes(column), column.null)
        if window.reference.score is not None and window.score is not None:
            window.score += window.reference.score.counts(decision.scores, None)
        window.events += len(decoded.records)
        window.scored += len(decision.rows)
        window.flagged += len(decision.flagged)
        window.score_sum += float(decision.scores.sum())
        window.flagged_score_sum += float(decision.scores[decision.flagged].sum())
        if self._due(window):
            return self._close(model, window)
        return None

    def retain(self, models: Iterable[LoadedModel]) -> None:
        """Forget every model version not in ``models`` (after a swap), and its series."""
        keep = {(m.name, m.version) for m in models}
        for key in [k for k in self._windows if k not in keep]:
            window = self._windows.pop(key)
            if window is not None and self._metrics is not None:
                self._metrics.forget(*key, [*window.reference.inputs, SCORE])

    def _open(self, model: LoadedModel) -> _Window | None:
        reference = Reference.from_card(model.card.raw)
        if reference is None:
            log.info("drift_off_no_reference", model=model.label)
            self._windows[(model.name, model.version)] = None
            return None
        window = _Window(reference, 0.0)
        window.reset(self._clock_s())
        self._windows[(model.name, model.version)] = window
        return window

    def _due(self, window: _Window) -> bool:
        config = self.config
        if config.window_events > 0 and window.events >= config.window_events:
            return True
        return (
            config.window_seconds > 0
            and window.events >= config.min_window_events
            and self._clock_s() - window.opened_s >= config.window_seconds
        )

    def _threshold(self, ref: FeatureReference, events: int) -> tuple[float, float]:
        config = self.config
        if config.thresholds == "learned" and ref.chunk_psi is not None and events > 0:
            mean, std = ref.chunk_psi
            alarm = max(
                config.learned_floor, (mean + config.sigmas * std) * ref.chunk_size / events
            )
            return alarm, alarm
        return config.psi_warn, config.psi_alert

    def _close(self, model: LoadedModel, window: _Window) -> WindowReport:
        psis: dict[str, float] = {}
        jss: dict[str, float] = {}
        nulls: dict[str, float] = {}
        unseen: dict[str, float] = {}
        thresholds: dict[str, float] = {}
        crossed: list[str] = []
        watch: list[str] = []

        def judge(name: str, ref: FeatureReference, counts: NDArray[np.int64], n: int) -> None:
            actual = counts.astype(np.float64)
            expected = ref.expected()
            psis[name] = psi(expected, actual)
            jss[name] = js_distance(expected, actual)
            warn, alarm = self._threshold(ref, n)
            thresholds[name] = alarm
            if psis[name] >= alarm:
                crossed.append(name)
            elif psis[name] >= warn:
                watch.append(name)

        for name, ref in window.reference.inputs.items():
            counts = window.counts[name]
            total = int(counts.sum())
            if not total:
                continue
            judge(name, ref, counts, total)
            nulls[name] = float(counts[-1] / total)
            present = total - int(counts[-1])
            if ref.kind == "categorical" and present:
                unseen[name] = float(counts[-2] / present)  # the ``other`` bucket
        score_ref = window.reference.score
        if score_ref is not None and window.score is not None and window.scored:
            judge(SCORE, score_ref, window.score, window.scored)
        report = WindowReport(
            model.name,
            model.version,
            window.events,
            window.scored,
            psis,
            jss,
            nulls,
            unseen,
            window.flagged / window.scored if window.scored else 0.0,
            thresholds,
            crossed,
            watch,
            *expected_performance(window.flagged, window.flagged_score_sum, window.score_sum),
        )
        self._export(report)
        self.reports = [*self.reports[-63:], report]
        window.reset(self._clock_s())
        return report

    def _export(self, report: WindowReport) -> None:
        labels = (report.model_name, report.model_version)
        if self._metrics is not None:
            m = self._metrics
            for name, value in report.psi.items():
                m.psi.labels(*labels, name).set(value)
                m.js.labels(*labels, name).set(report.js[name])
                m.threshold.labels(*labels, name).set(report.thresholds[name])
            for name, value in report.null_rate.items():
                m.null_ratio.labels(*labels, name).set(value)
            for name, value in report.unseen_rate.items():
                m.unseen_ratio.labels(*labels, name).set(value)
            for name in report.crossed:
                m.alarms.labels(*labels, name).inc()
            m.alert_ratio.labels(*labels).set(report.alert_rate)
            m.window_events.labels(*labels).set(report.events)
            m.windows.labels(*labels).inc()
            m.performance.set(*labels, report.expected_precision, report.expected_recall)
        if report.crossed:
            log.warning(
                "drift_alarm",
                model=f"{report.model_name}/{report.model_version}",
                window_events=report.events,
                crossed={n: round(report.psi[n], 4) for n in report.crossed},
                thresholds={n: round(report.thresholds[n], 4) for n in report.crossed},
                watch={n: round(report.psi[n], 4) for n in report.watch},
            )
        else:
            log.info(
                "drift_window",
                model=f"{report.model_name}/{report.model_version}",
                window_events=report.events,
                max_psi=round(max(report.psi.values(), default=0.0), 4),
                watch={n: round(report.psi[n], 4) for n in report.watch},
            )
