"""Optional OpenTelemetry spans, one per batch; off by default and free when off.

With ``[tracing] enabled = true`` (and the ``tracing`` extra installed: ``opentelemetry-sdk``,
plus ``opentelemetry-exporter-otlp-proto-http`` for ``exporter = "otlp"``) each batch is one
span, ``stream_scorer.batch``, with its size, partitions, alerts and dead letters as attributes,
and links to the traces of its first events (their W3C ``traceparent`` headers, at most
:data:`MAX_LINKS`): a batch serves many traces at once, so it links to them rather than
pretending to be a child of one. The ``traceparent`` header itself travels onto each alert
(:mod:`stream_scorer.encode`) and dead letter whether tracing is on or not.

Off, the runner holds :data:`NO_TRACER`, whose ``batch()`` is a shared ``nullcontext``: no
OpenTelemetry import, no allocation per batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Protocol

from stream_scorer.errors import ConfigurationError
from stream_scorer.records import BatchResult

__all__ = ["MAX_LINKS", "NO_TRACER", "BatchTracer", "OtelBatchTracer", "build_tracer"]

#: Most events of a batch whose traces the batch's span links to.
MAX_LINKS = 32
_NULL = contextlib.nullcontext()


class BatchTracer(Protocol):
    """Opens one span per batch."""

    def batch(self, batch_id: int, batch: Any) -> contextlib.AbstractContextManager[Any]:
        """The span of one batch (entered around scoring and submitting it)."""
        ...

    def finish(self, span: Any, result: BatchResult) -> None:
        """Record what the batch came to on its span."""
        ...


class _NoTracer:
    """Tracing off: nothing at all happens."""

    def batch(self, batch_id: int, batch: Any) -> contextlib.AbstractContextManager[Any]:
        """The shared null context."""
        del batch_id, batch
        return _NULL

    def finish(self, span: Any, result: BatchResult) -> None:
        """Nothing to record."""


NO_TRACER: BatchTracer = _NoTracer()


def _parent(traceparent: bytes) -> Any:
    """The span context a W3C ``traceparent`` names, or None when it is malformed."""
    from opentelemetry.trace import SpanContext, TraceFlags  # noqa: PLC0415

    try:
        version, trace_id, span_id, flags = traceparent.decode("ascii").split("-")
        context = SpanContext(
            int(trace_id, 16),
            int(span_id, 16),
            is_remote=True,
            trace_flags=TraceFlags(int(flags, 16)),
        )
    except (UnicodeDecodeError, ValueError):
        return None
    return context if version == "00" and context.is_valid else None


class OtelBatchTracer:
    """A span per batch through an OpenTelemetry tracer."""

    def __init__(self, tracer: Any) -> None:
        """Use ``tracer`` (an ``opentelemetry.trace.Tracer``)."""
        self._tracer = tracer

    @contextlib.contextmanager
    def batch(self, batch_id: int, batch: Any) -> Iterator[Any]:
        """The batch's span, linked to the traces of its first events."""
        from opentelemetry.trace import Link  # noqa: PLC0415

        links: list[Link] = []
        for row in range(len(batch)):
            if len(links) >= MAX_LINKS:
                break
            for name, value in batch[row].headers:
                if name == "traceparent" and value is not None:
                    context = _parent(value)
                    if context is not None:
                        links.append(Link(context))
        attributes = {
            "stream_scorer.batch_id": batch_id,
            "stream_scorer.records": len(batch),
            "stream_scorer.partitions": sorted({int(p) for p in batch.partitions.tolist()}),
        }
        with self._tracer.start_as_current_span(
            "stream_scorer.batch", links=links, attributes=attributes
        ) as span:
            yield span

    def finish(self, span: Any, result: BatchResult) -> None:
        """Alerts, dead letters and stage times as attributes."""
        span.set_attribute("stream_scorer.alerts", result.flagged)
        span.set_attribute("stream_scorer.dead_letters", result.dead_lettered)
        for stage, seconds in result.stage_s.items():
            span.set_attribute(f"stream_scorer.stage.{stage}_s", seconds)


def build_tracer(enabled: bool, exporter: str, service_name: str) -> BatchTracer:
    """The tracer the settings ask for.

    Raises:
        ConfigurationError: Tracing is on but OpenTelemetry (or the OTLP exporter) is missing.
    """
    if not enabled:
        return NO_TRACER
    try:
        from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
        from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
        from opentelemetry.sdk.trace.export import (  # noqa: PLC0415
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SpanExporter,
        )
    except ImportError as exc:
        msg = "tracing.enabled: install the tracing extra (pip install 'stream-scorer[tracing]')"
        raise ConfigurationError(msg) from exc
    span_exporter: SpanExporter
    if exporter == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
                OTLPSpanExporter,
            )
        except ImportError as exc:
            msg = "tracing.exporter = 'otlp' needs opentelemetry-exporter-otlp-proto-http"
            raise ConfigurationError(msg) from exc
        span_exporter = OTLPSpanExporter()  # endpoint etc. from the standard OTEL_* variables
    else:
        span_exporter = ConsoleSpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(span_exporter))
    return OtelBatchTracer(provider.get_tracer("stream_scorer"))
