"""Measure the figures docs/capacity.md plans with: CPU per million events, scorer and broker.

``python deploy/measure_capacity.py [--events 300000] [--partitions 4]`` starts the repository's
Apache Kafka broker (``scripts/kafka_broker.py``) in a temporary directory, writes ``--events``
synthetic transactions (plain Avro, keyed by card) into a fresh input topic, then runs one
``stream-scorer run`` over them until its committed offsets reach the end. It prints one JSON
object:

- ``broker_ingest_cpu_s_per_million``: the broker JVM's CPU while the events are produced;
- ``broker_serve_cpu_s_per_million``: the broker's CPU while the scorer reads them, writes its
  alerts and commits (the broker's share of scoring);
- ``scorer_cpu_s_per_million``, ``scorer_events_per_s``, ``scorer_peak_rss_mb``: the scorer over
  the same window (start-up and model load excluded: the window opens at its first commit).

The broker, the producer and the scorer share the machine, so read the figures as costs, not
as the speed of a dedicated node.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import fastavro
import psutil
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scripts.kafka_broker import KafkaBroker  # noqa: E402 - needs the repository on sys.path
from stream_scorer.devtools.generate import TransactionGenerator  # noqa: E402

__all__ = ["main", "measure"]

#: The console script next to this interpreter.
SCORER_BIN = Path(sys.executable).with_name("stream-scorer")
#: How often the scorer's RSS and committed offsets are sampled.
SAMPLE_INTERVAL_S = 0.1
#: Deadline for the scorer to commit the whole topic.
RUN_TIMEOUT_S = 600.0


def _cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _encoded(count: int) -> list[tuple[bytes, bytes]]:
    schema = json.loads((REPO / "schemas" / "transaction.avsc").read_text(encoding="utf-8"))
    parsed = fastavro.parse_schema(schema)
    events, _ = TransactionGenerator(seed=20261201).generate(count)
    out = []
    for event in events:
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, parsed, event)
        out.append((event["card_id"].encode(), buffer.getvalue()))
    return out


def _produce(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    producer = Producer({
        "bootstrap.servers": bootstrap, "linger.ms": 5, "compression.type": "lz4",
        "enable.idempotence": True, "partitioner": "murmur2_random",
    })  # fmt: skip
    for key, value in messages:
        while True:
            try:
                producer.produce(topic, key=key, value=value)
                break
            except BufferError:
                producer.poll(0.05)
    remaining = producer.flush(120)
    if remaining:
        msg = f"{remaining} events not acknowledged"
        raise RuntimeError(msg)


def _scorer_config(bootstrap: str, topics: dict[str, str], group: str) -> str:
    return f"""
[kafka]
bootstrap_servers = "{bootstrap}"
group_id = "{group}"
[topics]
input = "{topics["input"]}"
alerts = "{topics["alerts"]}"
dead_letter = "{topics["dead_letter"]}"
[schema]
wire_format = "plain"
reader = "{REPO / "schemas/transaction.avsc"}"
alert = "{REPO / "schemas/alert.avsc"}"
[model]
path = "{REPO / "models/fraud/1"}"
[metrics]
host = "127.0.0.1"
port = 0
[log]
level = "warning"
format = "json"
"""


def _create_topics(bootstrap: str, partitions: int) -> dict[str, str]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    run = uuid.uuid4().hex[:8]
    topics = {"input": f"in-{run}", "alerts": f"alerts-{run}", "dead_letter": f"dlq-{run}"}
    shapes = {"input": partitions, "alerts": partitions, "dead_letter": 1}
    new = [NewTopic(topics[k], num_partitions=n, replication_factor=1) for k, n in shapes.items()]
    for future in admin.create_topics(new).values():
        future.result(60)
    return topics


class _RssSampler:
    """Peak RSS of a process, sampled from a thread."""

    def __init__(self, process: psutil.Process) -> None:
        self.peak = 0
        self._process = process
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self._process.memory_info().rss)
            except psutil.Error:
                return
            self._stop.wait(SAMPLE_INTERVAL_S)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def _score(
    bootstrap: str,
    topics: dict[str, str],
    events: int,
    partitions: int,
    jvm: psutil.Process,
    workdir: Path,
) -> dict[str, float]:
    """Run one scorer over the topic; CPU of it and of the broker from its first commit."""
    group = f"capacity-{uuid.uuid4().hex[:8]}"
    config = workdir / "scorer.toml"
    config.write_text(_scorer_config(bootstrap, topics, group), encoding="utf-8")
    watcher = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    parts = [TopicPartition(topics["input"], p) for p in range(partitions)]

    def committed() -> int:
        return sum(max(tp.offset, 0) for tp in watcher.committed(parts, timeout=10))

    def wait_for(target: int, deadline: float) -> int:
        while (done := committed()) < target:
            if proc.poll() is not None or time.monotonic() > deadline:
                msg = f"the scorer stopped at {done} of {target} (exit {proc.poll()})"
                raise RuntimeError(msg)
            time.sleep(SAMPLE_INTERVAL_S)  # polling a condition with a deadline
        return done

    log = (workdir / "scorer.log").open("wb")
    proc = subprocess.Popen(  # noqa: S603 - this interpreter's console script, our own config
        [str(SCORER_BIN), "run", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT
    )
    scorer = psutil.Process(proc.pid)
    rss = _RssSampler(scorer)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        first = wait_for(1, deadline)
        t0, scorer0, broker0 = time.monotonic(), _cpu_s(scorer), _cpu_s(jvm)
        done = wait_for(events, deadline)
        window_s = time.monotonic() - t0
        scorer_cpu, broker_cpu = _cpu_s(scorer) - scorer0, _cpu_s(jvm) - broker0
    finally:
        rss.stop()
        proc.terminate()
        proc.wait(60)
        log.close()
        watcher.close()
    scored = done - first
    return {
        "window_events": scored,
        "broker_serve_cpu_s_per_million": round(broker_cpu / scored * 1e6, 2),
        "scorer_cpu_s_per_million": round(scorer_cpu / scored * 1e6, 2),
        "scorer_events_per_s": round(scored / window_s),
        "scorer_peak_rss_mb": round(rss.peak / 2**20, 1),
    }


def measure(events: int, partitions: int, workdir: Path) -> dict[str, Any]:
    """Run the measurement in ``workdir`` and return the figures."""
    broker = KafkaBroker(workdir / "kafka", die_with_parent=True)
    broker.fetch()
    broker.start()
    try:
        bootstrap = broker.bootstrap_servers
        if broker.pid is None:
            msg = "the broker reports no process id"
            raise RuntimeError(msg)
        jvm = psutil.Process(broker.pid)
        topics = _create_topics(bootstrap, partitions)
        messages = _encoded(events)
        cpu0, started = _cpu_s(jvm), time.monotonic()
        _produce(bootstrap, topics["input"], messages)
        produce_s = time.monotonic() - started
        broker_ingest = _cpu_s(jvm) - cpu0
        scored = _score(bootstrap, topics, events, partitions, jvm, workdir)
    finally:
        broker.stop()
    return {
        "events": events,
        "partitions": partitions,
        "produce_events_per_s": round(events / produce_s),
        "broker_ingest_cpu_s_per_million": round(broker_ingest / events * 1e6, 2),
        **scored,
        "logical_cores": psutil.cpu_count(),
        "load_average_end": [round(x, 2) for x in psutil.getloadavg()],
    }


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, measure, print the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=300_000, help="events to produce and score")
    parser.add_argument("--partitions", type=int, default=4, help="input topic partitions")
    args = parser.parse_args(argv)
    if args.events < 10_000 or args.partitions < 1:
        parser.error("--events must be at least 10000 and --partitions at least 1")
    with tempfile.TemporaryDirectory(prefix="capacity-") as tmp:
        result = measure(args.events, args.partitions, Path(tmp))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
