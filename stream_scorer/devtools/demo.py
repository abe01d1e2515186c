"""``stream-scorer demo``: the whole path on one machine, with a live view in the terminal.

Without ``--bootstrap-servers`` it starts an embedded broker: librdkafka's built-in MOCK
cluster (``test.mock.num.brokers``), which lives inside this process and is for the demo only;
it is announced as such. It also starts the in-process development Schema Registry. A producer
thread sends synthetic card transactions (Confluent wire format) at a steady rate, with a few
corrupt messages so the dead-letter path shows; the scorer runs with the shipped fraud model;
the terminal shows events/s, batch size, p50/p99 end-to-end latency, alerts and dead letters,
and the metrics URL. Ctrl-C stops it cleanly; ``--duration`` ends it by itself.

``--promote-after S`` shows a promotion live: the scorer follows ``fraud@champion`` in a
temporary state directory (``lifecycle.watch = "file"``), and after S seconds ``fraud/2`` is
promoted; the view shows the version serving and the history lines as the swap happens.
"""

from __future__ import annotations

import collections
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import IO, Any

import numpy as np
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from stream_scorer.app import build_runner
from stream_scorer.devtools.devregistry import DevSchemaRegistry
from stream_scorer.devtools.loadgen import produce_events
from stream_scorer.records import BatchResult
from stream_scorer.settings import Settings, load_settings

__all__ = ["run_demo"]

#: Partitions of the demo topics on a real cluster (the mock cluster always makes 4).
DEMO_PARTITIONS = 4
#: Seconds of batches the live percentiles are computed over.
WINDOW_S = 5.0
#: Share of corrupt messages the demo producer mixes in, so dead letters show.
DEMO_CORRUPT_RATE = 0.0005
#: The demo's metrics port when free (the service default); otherwise any free port.
DEMO_METRICS_PORT = 9400
#: Longest wait for the scorer to join its group before producing anyway.
JOIN_TIMEOUT_S = 30.0


def _metrics_port() -> int:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", DEMO_METRICS_PORT))
        except OSError:
            return 0
    return DEMO_METRICS_PORT


def _start_mock_cluster() -> tuple[Producer, str]:
    """Start librdkafka's mock cluster in this process and return (owner, bootstrap)."""
    owner = Producer({"test.mock.num.brokers": 1, "linger.ms": 5})
    metadata = owner.list_topics(timeout=10)
    bootstrap = ",".join(f"{b.host}:{b.port}" for b in metadata.brokers.values())
    return owner, bootstrap


def _create_topics(settings: Settings) -> None:
    admin = AdminClient(settings.kafka.client_config())
    topics = [settings.topics.input, settings.topics.alerts, settings.topics.dead_letter]
    futures = admin.create_topics([NewTopic(t, DEMO_PARTITIONS, 1) for t in topics])
    for future in futures.values():
        try:
            future.result(timeout=30)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise


class _LiveView:
    """Collects batch results from the runner thread; renders one status line."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.window: collections.deque[tuple[float, BatchResult]] = collections.deque()
        self.alerts = 0
        self.dead_letters = 0
        self.events = 0

    def on_batch(self, result: BatchResult) -> None:
        now = time.monotonic()
        with self.lock:
            self.window.append((now, result))
            self.alerts += result.flagged
            self.dead_letters += result.dead_lettered
            self.events += result.consumed
            while self.window and self.window[0][0] < now - WINDOW_S:
                self.window.popleft()

    def line(self, elapsed_s: float, produced: int, metrics_url: str, model: str = "") -> str:
        with self.lock:
            batches = [r for _, r in self.window]
            span = (self.window[-1][0] - self.window[0][0]) if len(self.window) > 1 else 0.0
            alerts, dead, events = self.alerts, self.dead_letters, self.events
        consumed = sum(r.consumed for r in batches)
        rate = consumed / span if span > 0 else 0.0
        size = consumed / len(batches) if batches else 0.0
        lat: Any = np.concatenate([r.latencies_s for r in batches]) if batches else np.empty(0)
        p50, p99 = (np.percentile(lat, [50, 99]) * 1000) if lat.size else (np.nan, np.nan)
        return (
            f"t={elapsed_s:5.0f}s  produced={produced:>8}  consumed={events:>8}  "
            f"events/s={rate:>7.0f}  batch={size:>6.1f}  p50={p50:5.1f}ms  p99={p99:5.1f}ms  "
            f"alerts={alerts:>6}  dead letters={dead:>4}  "
            + (f"model={model}  " if model else "")
            + f"metrics={metrics_url}/metrics"
        )


class _Promotion:
    """Promotes fraud/2 once, then prints each new history line of the model."""

    def __init__(self, settings: Settings, out: IO[str]) -> None:
        from stream_scorer.lifecycle.service import repository  # noqa: PLC0415

        self.repo = repository(settings)
        self.out = out
        self.done = False
        self.shown = 0

    def step(self, due: bool) -> None:
        from stream_scorer.lifecycle import promote  # noqa: PLC0415

        if due and not self.done:
            self.done = True
            why = "demo --promote-after (run `models validate` for the gates)"
            entry = promote(self.repo, "fraud", "2", by="demo", force=True, reason=why)
            self.out.write(f"Promoted fraud/2 to champion (was {entry.previous or 'fraud/1'})\n")
        history = self.repo.history("fraud")
        for entry in history[self.shown :]:
            self.out.write(
                f"  history: {entry.action} fraud/{entry.version} by {entry.by}"
                f"{f' on {entry.instance}' if entry.instance else ''}\n"
            )
        self.shown = len(history)


def run_demo(
    duration_s: float | None,
    bootstrap_servers: str | None,
    rate: float,
    config: Path | None,
    out: IO[str],
    promote_after_s: float | None = None,
) -> int:
    """Run the demo; returns the scorer's exit code.

    With ``promote_after_s``, fraud/2 is promoted that many seconds in (see the module doc).
    """
    owner = None
    if bootstrap_servers is None:
        owner, bootstrap_servers = _start_mock_cluster()
        out.write(
            f"Embedded broker: librdkafka's built-in MOCK cluster at {bootstrap_servers} "
            "(demo only, not a real Kafka; use --bootstrap-servers for a real cluster)\n"
        )
    registry = DevSchemaRegistry()
    out.write(f"Schema Registry: in-process development registry at {registry.url}\n")
    settings = load_settings(
        config,
        overrides={
            "kafka": {"bootstrap_servers": bootstrap_servers,
                      "group_id": f"stream-scorer-demo-{uuid.uuid4().hex[:8]}"},
            "schema": {"wire_format": "confluent", "registry_url": registry.url},
            "log": {"level": "error"},
            "metrics": {"port": _metrics_port()},
            **({} if promote_after_s is None else {"lifecycle": {
                "watch": "file", "poll_interval_s": 0.5,
                "state_dir": tempfile.mkdtemp(prefix="stream-scorer-demo-"),
            }}),
        },
    )  # fmt: skip
    if owner is None:
        _create_topics(settings)
    else:
        # The mock cluster has no admin API; it creates a topic when a producer asks for its
        # metadata (4 partitions). Doing it now spares the consumer a metadata refresh cycle.
        for topic in (settings.topics.input, settings.topics.alerts, settings.topics.dead_letter):
            owner.list_topics(topic, timeout=10)
    view = _LiveView()
    runner = build_runner(settings, on_batch=view.on_batch)
    stop = threading.Event()
    produced = [0]
    producer = threading.Thread(
        target=produce_events,
        kwargs={
            "settings": settings, "rate": rate, "count": None, "stop": stop,
            "corrupt_rate": DEMO_CORRUPT_RATE,
            "on_progress": lambda n: produced.__setitem__(0, n),
        },
        name="demo-producer", daemon=True,
    )  # fmt: skip
    code = [0]
    scorer = threading.Thread(
        target=lambda: code.__setitem__(0, runner.run()), name="scorer", daemon=True
    )
    scorer.start()
    # Produce once the scorer has joined its group, so the view shows steady state rather
    # than the backlog of the first seconds.
    runner.assigned.wait(JOIN_TIMEOUT_S)
    producer.start()
    start = time.monotonic()
    champion = runner.models.current.champion
    out.write(
        f"Scoring {settings.topics.input} -> {settings.topics.alerts} with model "
        f"{champion.label} (threshold {champion.threshold}); "
        f"producing {rate:.0f} events/s. Ctrl-C stops.\n"
    )
    promotion = _Promotion(settings, out) if promote_after_s is not None else None
    try:
        while scorer.is_alive():
            scorer.join(timeout=1.0)
            elapsed = time.monotonic() - start
            url = runner.metrics_server.url if runner.metrics_server else "(disabled)"
            model = runner.models.current.champion.label
            out.write(view.line(elapsed, produced[0], url, model) + "\n")
            if promotion is not None and promote_after_s is not None:
                promotion.step(elapsed >= promote_after_s)
            out.flush()
            if duration_s is not None and elapsed >= duration_s:
                break
    except KeyboardInterrupt:
        out.write("Ctrl-C: finishing the current batch, flushing, committing...\n")
    stop.set()
    producer.join(timeout=30)
    runner.stop()
    scorer.join(timeout=60)
    registry.close()
    out.write(
        f"Stopped: {view.events} events consumed, {view.alerts} alerts, "
        f"{view.dead_letters} dead letters, exit code {code[0]}.\n"
    )
    del owner  # the mock cluster goes away with its owner
    return code[0]
