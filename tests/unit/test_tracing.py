"""Tracing: off is a shared null context; on, one span per batch linked to its events' traces."""

from __future__ import annotations

import contextlib

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from stream_scorer.consume import MessageBatch
from stream_scorer.records import BatchResult, SourceRecord
from stream_scorer.tracing import NO_TRACER, OtelBatchTracer, build_tracer

PARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_off_is_free() -> None:
    """Tracing off: the same null context every batch, nothing recorded."""
    batch = MessageBatch.from_records([SourceRecord("in", 0, 1, None, b"v")])

    assert build_tracer(False, "otlp", "x") is NO_TRACER
    assert NO_TRACER.batch(1, batch) is NO_TRACER.batch(2, batch)
    assert isinstance(NO_TRACER.batch(1, batch), contextlib.nullcontext)


def test_a_span_per_batch_linked_to_event_traces() -> None:
    """A batch's span carries its size, partitions, outcome and stage times, and links to the
    traces named by its events' traceparent headers (malformed ones are skipped)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = OtelBatchTracer(provider.get_tracer("test"))
    batch = MessageBatch.from_records(
        [
            SourceRecord("in", 0, 1, None, b"v", (("traceparent", PARENT),)),
            SourceRecord("in", 2, 7, None, b"v", (("traceparent", b"not-a-trace"),)),
            SourceRecord("in", 2, 8, None, b"v"),
        ]
    )

    with tracer.batch(5, batch) as span:
        tracer.finish(
            span, BatchResult(consumed=3, flagged=1, dead_lettered=1, stage_s={"score": 0.5})
        )

    (recorded,) = exporter.get_finished_spans()
    assert recorded.name == "stream_scorer.batch"
    attributes = dict(recorded.attributes or {})
    assert attributes["stream_scorer.batch_id"] == 5
    assert attributes["stream_scorer.records"] == 3
    assert tuple(attributes["stream_scorer.partitions"]) == (0, 2)
    assert (attributes["stream_scorer.alerts"], attributes["stream_scorer.dead_letters"]) == (1, 1)
    assert attributes["stream_scorer.stage.score_s"] == 0.5
    (link,) = recorded.links
    assert f"{link.context.trace_id:032x}" == "4bf92f3577b34da6a3ce929d0e0e4736"


def test_console_exporter_builds_and_otlp_without_its_package_is_named() -> None:
    """The console exporter needs only the SDK; OTLP without its exporter package is a
    configuration error naming what to install."""
    assert isinstance(build_tracer(True, "console", "svc"), OtelBatchTracer)
    try:
        import opentelemetry.exporter.otlp.proto.http  # noqa: F401, PLC0415
    except ImportError:
        with pytest.raises(Exception, match="opentelemetry-exporter-otlp-proto-http"):
            build_tracer(True, "otlp", "svc")
    else:
        assert isinstance(build_tracer(True, "otlp", "svc"), OtelBatchTracer)
