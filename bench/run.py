"""Benchmark harness: stream-scorer against three alternatives, same broker, same data, one run.

``make bench`` (or ``python -m bench.run``) starts the repo's Apache Kafka broker and the dev
Schema Registry, pre-produces a fixed data set of synthetic transactions, then measures in turn:

* the physical limits: a bare ``consume(1000)`` loop and the model's own inference rate;
* throughput (events/s over the whole data set), CPU seconds per million events and peak RSS of
  stream-scorer as shipped, a fastavro-dict batched scorer, a naive one-message loop and a Quix
  Streams app, each from the beginning of the topic with its own group and output topic;
* stream-scorer's time per stage, its throughput against ``batch.max_size`` and with 1 and 2
  group members (a group's rate from its first consumed event to its last commit);
* end-to-end latency (alert ``LogAppendTime`` minus source ``event_time``) of every contender
  at fixed offered loads from a separate producer process (``stream-scorer produce``);
* pipelined against barrier delivery: both configurations in alternating rounds, for throughput
  and for latency at each offered load, as medians with their spread and ratios;
* p99 latency in the minute around a live promotion (fraud/1 -> fraud/2 with ``stream-scorer
  models promote``) against the minute before, at each offered load (issue 10);
* throughput plain, with drift, with one same-size shadow and with a canary, in alternating
  rounds (issue 11);
* throughput with the scores topic on beside alerts-only (``bench/scores_topic.py``, issue 14).

It writes ``bench/results/results.json`` and PNG plots, and prints a table with ratios to
stream-scorer and the issue's targets marked PASS or MISS. ``--quick`` shrinks everything for a
smoke run. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import psutil
from prometheus_client.parser import text_string_to_metric_families

from bench import monitoring_cost, promotion, scores_topic
from bench.alternate import compare, run_order
from bench.infra import REPO, Cluster, spawn, terminate, write_scorer_config
from bench.monitor import RunMeasurement, TreeSampler, measure_run
from bench.report import evaluate_targets, format_tables, machine_info, plot_results
from scripts.kafka_broker import find_free_ports
from stream_scorer.lifecycle import promote
from stream_scorer.lifecycle.repository import ModelRepository
from stream_scorer.model_card import ModelCard
from stream_scorer.score import default_intra_op_threads

__all__ = ["main"]

#: Where results, logs, configs and the broker's data go (git-ignored).
RESULTS_DIR = REPO / "bench" / "results"
#: The Quix Streams virtual environment and what is installed in it (quixstreams 3.28.1 needs
#: confluent-kafka < 2.13, so it cannot share the service's environment).
QUIX_VENV = REPO / ".cache" / "bench-quix-venv"
QUIX_REQUIREMENTS = ("quixstreams==3.28.1", "onnxruntime", "numpy", "fastavro")
#: Marker file in the Quix venv recording the requirements it was built with.
QUIX_MARKER = ".bench-requirements"
#: Data set generator seed and fraud rate (issue 4: about 1 % fraud).
DATASET_SEED = 20260404
FRAUD_RATE = 0.01
#: Input topic partitions (issue 4: 4 or more).
PARTITIONS = 4
#: stream-scorer's shipped batch size, used for the limits and the baselines too.
BATCH_SIZE = 1000
#: Batch sizes of the sweep (brief).
SWEEP_SIZES = (100, 250, 500, 1000, 2000, 5000)
#: Seconds of each latency run whose events are discarded as warm-up.
WARMUP_S = 2.0
#: Offered loads of the latency runs, events/s.
DEFAULT_LOADS = (5000, 20000)
#: Extra time a latency run may take to drain its backlog after the producer stops.
DRAIN_TIMEOUT_S = 120.0
#: Longest time to wait for a contender's group to become stable before producing.
JOIN_TIMEOUT_S = 60.0
#: Contenders in run order.
CONTENDERS = ("stream-scorer", "fastavro-batch", "naive", "quix")
#: The two delivery configurations the pipelining phase alternates, set explicitly (not left
#: to the defaults) so the comparison means the same whichever one the service ships as default:
#: up to 4 batches awaiting acknowledgement with offsets committed every 100 ms, against a
#: barrier (every batch acknowledged and committed before the next is consumed).
PIPELINED_VARIANT = "stream-scorer-pipelined"
BARRIER_VARIANT = "stream-scorer-barrier"
VARIANT_OVERRIDES: dict[str, dict[str, dict[str, Any]]] = {
    PIPELINED_VARIANT: {"delivery": {"max_in_flight_batches": 4, "commit_interval_ms": 100}},
    BARRIER_VARIANT: {"delivery": {"max_in_flight_batches": 1, "commit_interval_ms": 0}},
}
#: Rounds of the pipelining phase (each round one run of each variant, order swapped).
DEFAULT_AB_ROUNDS = 3
#: Offered load (events/s) of the memory soak, and how often its RSS is sampled.
SOAK_LOAD = 20_000
SOAK_SAMPLE_S = 1.0
#: Length of each window of the promotion phase: the issue's minute (quick: 10 s).
DEFAULT_PROMOTION_WINDOW_S = 60.0
#: Seconds of the promotion phase's producer before its "before" window opens: the scorer's
#: first seconds under load (a backlog from the join, first batches of each size) are not
#: the steady state a promotion interrupts (2 s left a p99 of 800 ms in a 10 s window).
PROMOTION_WARMUP_S = 5.0
#: Rounds of the monitoring phase (each round one run of each of its four variants).
DEFAULT_MONITORING_ROUNDS = 3
#: Metric families the monitoring and promotion phases read from the scorer's /metrics.
WATCHED_METRICS = (
    "stream_scorer_shadow_seconds",
    "stream_scorer_shadow_records_scored",
    "stream_scorer_shadow_dropped",
    "stream_scorer_drift_windows",
    "stream_scorer_drift_records_skipped",
    "stream_scorer_model_swaps",
)


@dataclass(frozen=True, slots=True)
class Plan:
    """Sizes and durations of one benchmark run."""

    events: int
    sweep_events: int
    latency_duration_s: float
    latency_min_alerts: int
    loads: tuple[int, ...]
    run_timeout_s: float
    model_min_seconds: float
    contenders: tuple[str, ...]
    sweep: bool
    scaling: bool
    latency: bool
    soak_s: float
    limits: bool = True
    throughput: bool = True
    ab_rounds: int = 0
    promotion_window_s: float = 0.0
    monitoring_rounds: int = 0
    scores_topic: bool = False


@dataclass(frozen=True, slots=True)
class Launch:
    """How to start one contender process."""

    argv: list[str]
    metrics_url: str | None = None


class Harness:
    """Runs the phases of one benchmark and collects the results dict."""

    def __init__(self, cluster: Cluster, plan: Plan, run_id: str, quix_python: Path | None):
        """Remember the cluster and the plan; nothing runs yet."""
        self.cluster = cluster
        self.plan = plan
        self.run_id = run_id
        self.quix_python = quix_python
        self.threads = default_intra_op_threads()
        card = ModelCard.load(REPO / "models" / "fraud" / "1")
        self.flagged_rate = float(card.raw.get("metrics", {}).get("flagged_rate", 0.01))
        self.logs = RESULTS_DIR / "logs"
        self.configs = RESULTS_DIR / "configs"
        self.running: list[subprocess.Popen[bytes]] = []
        self.results: dict[str, Any] = {}

    # -- helpers

    def _name(self, *parts: str) -> str:
        return "-".join(["bench", self.run_id, *parts])

    def _output_topics(self, tag: str) -> dict[str, str]:
        alerts = self.cluster.create_topic(self._name(tag, "alerts"), PARTITIONS, True)
        dlq = self.cluster.create_topic(self._name(tag, "dlq"), PARTITIONS, True)
        return {"alerts": alerts, "dead_letter": dlq}

    def _launch(
        self,
        contender: str,
        group: str,
        topics: dict[str, str],
        batch_size: int,
        tag: str,
        overrides: dict[str, dict[str, Any]] | None = None,
    ) -> Launch:
        """The command line of ``contender`` reading ``topics['input']``; ``overrides`` sets
        stream-scorer config sections (default: the variant's, if ``contender`` is one)."""
        python = sys.executable
        if contender == "stream-scorer" or contender in VARIANT_OVERRIDES:
            port = find_free_ports(1)[0]
            config = write_scorer_config(
                self.configs / f"{tag}.toml",
                self.cluster.bootstrap,
                group,
                topics,
                self.cluster.registry_url,
                batch_size,
                port,
                overrides if overrides is not None else VARIANT_OVERRIDES.get(contender),
            )
            script = Path(python).parent / "stream-scorer"
            argv = [str(script)] if script.exists() else [python, "-m", "stream_scorer"]
            return Launch([*argv, "run", "--config", str(config)], f"http://127.0.0.1:{port}")
        common = [
            "--bootstrap-servers", self.cluster.bootstrap,
            "--input-topic", topics["input"],
            "--output-topic", topics["alerts"],
            "--group", group,
            "--registry-url", self.cluster.registry_url,
        ]  # fmt: skip
        if contender == "fastavro-batch":
            return Launch(
                [python, "-m", "bench.baselines.fastavro_batch", *common,
                 "--threads", str(self.threads), "--batch-size", str(batch_size)]
            )  # fmt: skip
        # One-row runs: one onnxruntime thread is faster than two (thread hand-off per call).
        if contender == "naive":
            return Launch([python, "-m", "bench.baselines.naive", *common, "--threads", "1"])
        if contender == "quix":
            if self.quix_python is None:
                msg = "the Quix Streams venv is not set up"
                raise RuntimeError(msg)
            return Launch(
                [str(self.quix_python), "-m", "bench.baselines.quix_app", *common, "--threads", "1"]
            )
        msg = f"unknown contender {contender}"
        raise ValueError(msg)

    @contextlib.contextmanager
    def _started(self, launches: list[Launch], tag: str) -> Iterator[list[subprocess.Popen[bytes]]]:
        """Start the processes; always stop them, even when the measurement fails."""
        processes = []
        try:
            for i, launch in enumerate(launches):
                log = self.logs / f"{tag}-{i}.log"
                process = spawn(launch.argv, log)
                processes.append(process)
                self.running.append(process)
            yield processes
        finally:
            for process in processes:
                terminate(process)
                self.running.remove(process)

    def stop_all(self) -> None:
        """Stop every process still running (called on exit and on signals)."""
        for process in list(self.running):
            terminate(process, grace_s=5.0)
        self.running.clear()

    def _log_paths(self, tag: str, n: int) -> list[Path]:
        return [self.logs / f"{tag}-{i}.log" for i in range(n)]

    @staticmethod
    def _say(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    # -- phases

    def dataset(self) -> None:
        """Pre-produce the fixed data set."""
        self._say(f"producing {self.plan.events:,} events to {PARTITIONS} partitions")
        data = self.cluster.produce_dataset(
            self._name("input"), self.plan.events, PARTITIONS, DATASET_SEED, FRAUD_RATE
        )
        self.input_topic = data.topic
        self.results["dataset"] = asdict(data)
        self._say(
            f"  {data.events:,} events ({data.fraud_events:,} fraud) in {data.produce_s:.1f} s"
        )

    def _probe(self, probe: str, extra: list[str]) -> dict[str, Any]:
        argv = [
            sys.executable, "-m", "bench.probes", probe,
            "--bootstrap-servers", self.cluster.bootstrap, "--topic", self.input_topic,
            "--count", str(self.plan.events), "--batch-size", str(BATCH_SIZE), *extra,
        ]  # fmt: skip
        done = subprocess.run(
            argv, cwd=REPO, capture_output=True, text=True, check=False, timeout=600
        )
        if done.returncode != 0:
            msg = f"probe {probe} failed:\n{done.stderr[-3000:]}"
            raise RuntimeError(msg)
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return result

    def limits(self) -> None:
        """Bare consume rate and model inference rate on the same data."""
        self._say("limits: bare consume(1000), model session.run at batch 1000")
        bare = self._probe("bare-consume", [])
        model = self._probe(
            "model-rate",
            [
                "--registry-url", self.cluster.registry_url,
                "--threads", str(self.threads),
                "--min-seconds", str(self.plan.model_min_seconds),
            ],
        )  # fmt: skip
        self.results["limits"] = {"bare_consume": bare, "model": model}
        self._say(
            f"  bare consume {bare['events_per_s']:,.0f}/s; model {model['events_per_s']:,.0f}/s"
            f" ({self.threads} threads)"
        )

    def _throughput_run(
        self,
        contender: str,
        tag: str,
        batch_size: int = BATCH_SIZE,
        target: int | None = None,
        members: int = 1,
        topics: dict[str, str] | None = None,
        group_rate: bool = False,
        overrides: dict[str, dict[str, Any]] | None = None,
    ) -> tuple[RunMeasurement, dict[str, Any] | None, dict[str, str]]:
        """One contender over the data set; returns the measurement and its /metrics.

        ``group_rate`` measures from the group's first consumed event to its last commit
        (stream-scorer only: it reads each member's /metrics), as a group of several needs.
        """
        group = self._name(tag)
        topics = {"input": self.input_topic, **(topics or self._output_topics(tag))}
        launches = [
            self._launch(contender, group, topics, batch_size, f"{tag}-{i}", overrides)
            for i in range(members)
        ]
        metrics: dict[str, Any] | None = None
        with self._started(launches, tag) as processes:
            measurement = measure_run(
                self.cluster,
                processes,
                self._log_paths(tag, members),
                group,
                self.input_topic,
                target or self.plan.events,
                self.plan.run_timeout_s,
                members,
                [str(launch.metrics_url) for launch in launches] if group_rate else None,
            )
            if launches[0].metrics_url is not None:
                metrics = _scrape(launches[0].metrics_url)
        return measurement, metrics, topics

    def throughput(self) -> None:
        """Every contender over the whole data set."""
        self.results["throughput"] = {}
        for contender in self.plan.contenders:
            self._say(f"throughput: {contender}")
            measurement, metrics, topics = self._throughput_run(contender, f"tp-{contender}")
            row = measurement.as_dict()
            row["alerts"] = self.cluster.count_messages(topics["alerts"])
            self.results["throughput"][contender] = row
            if metrics is not None and contender == "stream-scorer":
                self.results["stages"] = _stage_split(metrics, measurement.events_per_s)
            self._say(
                f"  {row['events_per_s']:,.0f} events/s, {row['cpu_s_per_million']:.1f} CPU s/M, "
                f"peak RSS {row['peak_rss_mb']:.0f} MB, {row['alerts']} alerts"
                + (" TIMED OUT" if row["timed_out"] else "")
            )

    def sweep(self) -> None:
        """stream-scorer throughput against batch.max_size."""
        scratch = self._output_topics("sweep")
        target = min(self.plan.sweep_events, self.plan.events)
        rows = []
        for size in SWEEP_SIZES:
            self._say(f"sweep: batch.max_size={size}")
            measurement, _, _ = self._throughput_run(
                "stream-scorer", f"sweep-{size}", size, target, topics=scratch
            )
            rows.append({"batch_size": size, **measurement.as_dict()})
            self._say(f"  {measurement.events_per_s:,.0f} events/s")
        self.results["batch_sweep"] = rows

    def scaling(self) -> None:
        """stream-scorer with 1 and 2 members of one group, back to back.

        Each group's rate runs from its first consumed event to its last commit: a window that
        opened only once both members held partitions missed most of a run (the first member
        reads the data set while the second is still loading its model and joining), down to
        nothing at all. The join and the rebalance now count against the group, and the
        members' consumed counts show how the work was shared.
        """
        scratch = self._output_topics("scale")
        target = self.plan.events
        self.results["scaling"] = {}
        for members in (1, 2):
            self._say(f"scaling: {members} member(s)")
            measurement, _, _ = self._throughput_run(
                "stream-scorer",
                f"scale-{members}",
                target=target,
                members=members,
                topics=scratch,
                group_rate=True,
            )
            self.results["scaling"][str(members)] = measurement.as_dict()
            joined = measurement.all_members_after_s
            self._say(
                f"  {measurement.events_per_s:,.0f} events/s over {measurement.window_s:.2f} s;"
                f" consumed per member {measurement.consumed_by_member}; all members in the"
                f" group {'never seen' if joined is None else f'{joined:+.2f} s'} after the start"
            )

    def _wait_joined(self, group: str, processes: list[subprocess.Popen[bytes]], tag: str) -> None:
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        while self.cluster.group_members(group) != (1, PARTITIONS):
            for process, log in zip(processes, self._log_paths(tag, 1), strict=True):
                if process.poll() is not None:
                    msg = f"{tag} exited with {process.returncode}; see {log}"
                    raise RuntimeError(msg)
            if time.monotonic() > deadline:
                msg = f"{tag}: group {group} not stable in {JOIN_TIMEOUT_S} s"
                raise TimeoutError(msg)
            time.sleep(0.25)

    def _latency_run(
        self, contender: str, load: int, suffix: str = "", throughput: float | None = None
    ) -> dict[str, Any]:
        """One contender at one offered load; latencies of its alerts.

        ``suffix`` tells repeated runs' topics and groups apart; ``throughput`` is the rate the
        saturation mark compares with (default: the contender's throughput phase).
        """
        tag = f"lat-{contender}-{load}{suffix}"
        duration_s = max(
            self.plan.latency_duration_s,
            self.plan.latency_min_alerts / (load * self.flagged_rate),
        )
        count = int(load * duration_s)
        group, topics, launch, producer_argv = self._loaded_run(
            contender, tag, load, count, DATASET_SEED + load
        )
        with self._started([launch], tag) as processes:
            self._wait_joined(group, processes, tag)
            start_ms = time.time_ns() // 1_000_000
            produce_started = time.monotonic()
            producer = spawn(producer_argv, self.logs / f"{tag}-producer.log")
            self.running.append(producer)
            try:
                producer.wait(duration_s * 3 + 60)
            finally:
                terminate(producer)
                self.running.remove(producer)
            produce_s = time.monotonic() - produce_started
            measurement = measure_run(
                self.cluster,
                processes,
                self._log_paths(tag, 1),
                group,
                topics["input"],
                count,
                DRAIN_TIMEOUT_S,
            )
        sample = self.cluster.read_latencies(topics["alerts"], start_ms + int(WARMUP_S * 1000))
        lat = sample.latencies_ms
        row: dict[str, Any] = {
            "offered_events_per_s": load,
            "produced": self.cluster.count_messages(topics["input"]),
            "achieved_offered_events_per_s": round(count / produce_s, 1),
            "duration_s": round(duration_s, 1),
            "count": len(lat),
            "alerts": sample.alerts,
            "discarded_warmup": sample.discarded,
            "non_log_append_time": sample.non_log_append,
            "drain_timed_out": measurement.timed_out,
            "drain_s": round(measurement.wall_s, 2),
            "peak_rss_mb": round(measurement.peak_rss_mb, 1),
        }
        if throughput is None:
            throughput = self.results.get("throughput", {}).get(contender, {}).get("events_per_s")
        row["saturated"] = bool(measurement.timed_out or (throughput and throughput < load))
        if len(lat):
            row.update(
                {
                    "p50_ms": round(float(np.percentile(lat, 50)), 2),
                    "p95_ms": round(float(np.percentile(lat, 95)), 2),
                    "p99_ms": round(float(np.percentile(lat, 99)), 2),
                    "max_ms": round(float(lat.max()), 2),
                    "mean_ms": round(float(lat.mean()), 2),
                }
            )
        return row

    def _loaded_run(
        self,
        contender: str,
        tag: str,
        load: int,
        count: int,
        seed: int,
        overrides: dict[str, dict[str, Any]] | None = None,
    ) -> tuple[str, dict[str, str], Launch, list[str]]:
        """Fresh topics for a run under offered load: the contender's group, topics and launch,
        and the command line of a ``stream-scorer produce`` writing ``count`` events at
        ``load`` events/s into the input topic."""
        topics = {
            "input": self.cluster.create_topic(self._name(tag, "input"), PARTITIONS),
            **self._output_topics(tag),
        }
        group = self._name(tag)
        launch = self._launch(contender, group, topics, BATCH_SIZE, tag, overrides)
        producer_config = write_scorer_config(
            self.configs / f"{tag}-producer.toml",
            self.cluster.bootstrap,
            f"{group}-producer",
            topics,
            self.cluster.registry_url,
            BATCH_SIZE,
            0,
        )
        script = Path(sys.executable).parent / "stream-scorer"
        producer_argv = [
            str(script), "produce", "--config", str(producer_config),
            "--rate", str(load), "--count", str(count), "--seed", str(seed),
        ]  # fmt: skip
        return group, topics, launch, producer_argv

    def soak(self) -> None:
        """stream-scorer's memory over a long run at a steady offered load (is RSS flat?)."""
        load, duration_s, tag = SOAK_LOAD, self.plan.soak_s, "soak"
        count = int(load * duration_s)
        group, _, launch, producer_argv = self._loaded_run(
            "stream-scorer", tag, load, count, DATASET_SEED + 7
        )
        self._say(f"soak: stream-scorer at {load:,} events/s for {duration_s:.0f} s")
        series: list[tuple[float, float]] = []
        with self._started([launch], tag) as processes:
            self._wait_joined(group, processes, tag)
            sampler = TreeSampler([p.pid for p in processes])
            producer = spawn(producer_argv, self.logs / f"{tag}-producer.log")
            self.running.append(producer)
            started = time.monotonic()
            try:
                while producer.poll() is None and time.monotonic() - started < duration_s * 2:
                    _, rss = sampler.sample()
                    series.append((time.monotonic() - started, rss / 2**20))
                    time.sleep(SOAK_SAMPLE_S)  # the sampling period, not a wait for an event
            finally:
                terminate(producer)
                self.running.remove(producer)
        self.results["soak"] = _soak_summary(series, load, duration_s)
        row = self.results["soak"]
        self._say(
            f"  RSS {row['rss_early_mb']:.0f} MB in minute 2, "
            f"{row['rss_late_mb']:.0f} MB in the last minute, peak {row['peak_rss_mb']:.0f} MB "
            f"(growth {row['growth_percent']:+.1f} %)"
        )

    def latency(self) -> None:
        """Every contender at every offered load."""
        self.results["latency"] = {}
        for contender in self.plan.contenders:
            runs: dict[str, Any] = {}
            for load in self.plan.loads:
                self._say(f"latency: {contender} at {load:,} events/s")
                row = self._latency_run(contender, load)
                runs[str(load)] = row
                if row["count"]:
                    self._say(
                        f"  p50 {row['p50_ms']:.1f} p95 {row['p95_ms']:.1f} p99 "
                        f"{row['p99_ms']:.1f} ms over {row['count']} alerts"
                        + (" (saturated)" if row["saturated"] else "")
                    )
            self.results["latency"][contender] = runs

    def pipelining(self) -> None:
        """Pipelined against barrier delivery, in alternating rounds: throughput, then latency.

        One run of each per round, the order swapped every round (bench/alternate.py), each run
        from scratch (own group, topics, process). Throughput runs read the whole data set;
        latency runs are the latency phase's, at every offered load.
        """
        a, b = PIPELINED_VARIANT, BARRIER_VARIANT
        rounds = self.plan.ab_rounds
        order = run_order(rounds, a, b)
        runs: dict[str, Any] = {"throughput": {a: [None] * rounds, b: [None] * rounds}}
        for i, variant in order:
            self._say(f"pipelining: throughput, round {i + 1}/{rounds}, {variant}")
            measurement, _, _ = self._throughput_run(variant, f"ab{i}-tp-{variant}")
            runs["throughput"][variant][i] = measurement.as_dict()
            self._say(f"  {measurement.events_per_s:,.0f} events/s")
        rates = {v: [r["events_per_s"] for r in runs["throughput"][v]] for v in (a, b)}
        summary: dict[str, Any] = {
            "variants": {v: VARIANT_OVERRIDES[v] for v in (a, b)},
            "rounds": rounds,
            "order": [f"{i + 1}:{v}" for i, v in order],
            "throughput_events_per_s": compare(a, b, rates[a], rates[b], "higher"),
        }
        for load in self.plan.loads:
            rows: dict[str, list[Any]] = {a: [None] * rounds, b: [None] * rounds}
            for i, variant in order:
                self._say(f"pipelining: latency at {load:,}/s, round {i + 1}/{rounds}, {variant}")
                median_rate = summary["throughput_events_per_s"][variant]["median"]
                row = self._latency_run(variant, load, f"-ab{i}", median_rate)
                rows[variant][i] = row
                if row["count"]:
                    self._say(
                        f"  p50 {row['p50_ms']:.1f} p99 {row['p99_ms']:.1f} ms over "
                        f"{row['count']} alerts"
                    )
            runs[f"latency_{load}"] = rows
            for key in ("p50_ms", "p99_ms"):
                values = {v: [r.get(key) for r in rows[v]] for v in (a, b)}
                summary[f"{key[:-3]}_ms_at_{load}"] = compare(a, b, values[a], values[b], "lower")
        self.results["pipelining"] = {"summary": summary, "runs": runs}

    def promotion(self) -> None:
        """p99 latency in the window around a live promotion against the window before.

        At each offered load: stream-scorer with ``lifecycle.watch = "file"`` on a fresh state
        folder where fraud/1 is the champion, a paced producer, and ``stream-scorer models
        promote fraud/2`` (forced: the gates are ``models validate``'s business, not this
        phase's) once the warm-up and the "before" window have passed (bench/promotion.py).
        """
        window_s = self.plan.promotion_window_s
        self.results["promotion"] = {}
        for load in self.plan.loads:
            self._say(f"promotion: fraud/1 -> fraud/2 at {load:,}/s, {window_s:.0f} s windows")
            row = self._promotion_run(load, window_s)
            self.results["promotion"][str(load)] = row
            self._say(
                f"  p99 {_fmt_ms(row['before'].get('p99_ms'))} before, "
                f"{_fmt_ms(row['around'].get('p99_ms'))} around ({row['around']['count']} "
                f"alerts): {row['p99_ratio']}x (target <= {promotion.TARGET_RATIO}x); applied "
                f"{row['applied_after_s']} s after the promotion; serving {row['serving']}"
                + (" ROLLED BACK" if row["rolled_back"] else "")
            )

    def _promotion_run(self, load: int, window_s: float) -> dict[str, Any]:
        """One promotion under ``load`` events/s; what :func:`promotion.summarize` makes of it."""
        tag = f"promo-{load}"
        state_dir = RESULTS_DIR / "lifecycle" / tag
        shutil.rmtree(state_dir, ignore_errors=True)
        repo = ModelRepository(REPO / "models", state_dir)
        promote(repo, "fraud", "1", by="bench", force=True, reason="bench: the starting champion")
        overrides: dict[str, dict[str, Any]] = {
            "lifecycle": {
                "watch": "file",
                "repository": str(REPO / "models"),
                "state_dir": str(state_dir),
                # One swap is what is measured: on 2 shared cores the shipped latency rule
                # rolled fraud/2 back 3 s after the swap at 20k/s (a second swap inside the
                # window). Any rollback still shows in the history and as rolled_back.
                "auto_rollback": False,
            }
        }
        warmup_s = PROMOTION_WARMUP_S
        count = int(load * promotion.producer_seconds(warmup_s, window_s))
        group, topics, launch, producer_argv = self._loaded_run(
            "stream-scorer", tag, load, count, DATASET_SEED + load + 10, overrides
        )
        promote_argv = [
            producer_argv[0], "models", "promote", "fraud/2", "--config",
            str(self.configs / f"{tag}.toml"), "--force", "--reason", "bench: promotion phase",
        ]  # fmt: skip
        with self._started([launch], tag) as processes:
            self._wait_joined(group, processes, tag)
            producer = spawn(producer_argv, self.logs / f"{tag}-producer.log")
            self.running.append(producer)
            produce_started = time.monotonic()
            due = produce_started + promotion.promote_offset_s(warmup_s, window_s)
            try:
                # A timer, not a synchronisation: the promotion is made at a planned instant.
                while time.monotonic() < due and producer.poll() is None:
                    time.sleep(0.05)
                done = subprocess.run(
                    promote_argv, cwd=REPO, capture_output=True, text=True, check=False,
                    timeout=120,
                )  # fmt: skip
                if done.returncode != 0:
                    msg = f"models promote failed: {done.stderr[-2000:]}"
                    raise RuntimeError(msg)
                producer.wait(promotion.producer_seconds(warmup_s, window_s) * 3 + 60)
            finally:
                terminate(producer)
                self.running.remove(producer)
            produce_s = time.monotonic() - produce_started
            measurement = measure_run(
                self.cluster, processes, self._log_paths(tag, 1), group, topics["input"],
                count, DRAIN_TIMEOUT_S,
            )  # fmt: skip
            metrics = _scrape(str(launch.metrics_url))
        history = repo.history("fraud")
        promoted = [e for e in history if e.action in ("promote", "force") and e.version == "2"]
        if not promoted:
            msg = "the promotion of fraud/2 is not in the history"
            raise RuntimeError(msg)
        promote_ms = _epoch_ms(promoted[-1].at)
        applied = [e for e in history if e.action == "applied" and e.version == "2"]
        alerts = self.cluster.read_alerts(topics["alerts"])
        row = promotion.summarize(
            alerts.event_ms, alerts.stamp_ms, alerts.versions, promote_ms, window_s, "2"
        )
        row.update(
            offered_events_per_s=load,
            produced=self.cluster.count_messages(topics["input"]),
            # The producer shares the machine: on a busy host it falls short of the rate asked.
            achieved_offered_events_per_s=round(count / produce_s, 1),
            drain_timed_out=measurement.timed_out,
            drain_s=round(measurement.wall_s, 2),
            promote_cli=done.stdout.strip(),
            applied_after_s=(
                round((_epoch_ms(applied[0].at) - promote_ms) / 1e3, 3) if applied else None
            ),
            history=[f"{e.at} {e.action} fraud/{e.version} by {e.by}" for e in history],
            rolled_back=any(e.action in ("auto-rollback", "rollback") for e in history),
            model_swaps=metrics["counters"].get("stream_scorer_model_swaps"),
            serving=metrics["serving"],
        )
        return row

    def monitoring(self) -> None:
        """Throughput plain, with drift, with one same-size shadow and with a canary.

        Alternating rounds (forwards, then backwards: bench/monitoring_cost.py), each run over
        the whole data set from the beginning with its own group; the plain runs' stage sums
        give the champion's own model time, which a shadow of the same size should not exceed.
        """
        shadow = monitoring_cost.write_same_size_shadow(
            REPO / "models" / "fraud" / "1", RESULTS_DIR / "models"
        )
        variants = monitoring_cost.overrides(shadow, REPO / "models" / "fraud" / "2")
        rounds = self.plan.monitoring_rounds
        runs: dict[str, list[Any]] = {name: [None] * rounds for name in variants}
        for i, name in monitoring_cost.rotation_order(rounds, tuple(variants)):
            self._say(f"monitoring: round {i + 1}/{rounds}, {name}")
            measurement, metrics, topics = self._throughput_run(
                "stream-scorer", f"mon{i}-{name}", overrides=variants[name]
            )
            row = measurement.as_dict()
            row["alerts"] = self.cluster.count_messages(topics["alerts"])
            if metrics is not None:
                row["counters"] = metrics["counters"]
                row["consumed"] = metrics["consumed"]
                row["model_us_per_event"] = monitoring_cost.model_us_per_event(
                    metrics["stages"], metrics["consumed"]
                )
            runs[name][i] = row
            self._say(
                f"  {measurement.events_per_s:,.0f} events/s, {row['alerts']} alerts"
                + (" TIMED OUT" if measurement.timed_out else "")
            )
        summary = monitoring_cost.summarize(
            {name: [r["events_per_s"] if r else None for r in rows] for name, rows in runs.items()},
            [r.get("model_us_per_event") if r else None for r in runs["plain"]],
            [_shadow_us(r) for r in runs["shadow"]],
        )
        summary["rounds"] = rounds
        summary["variants"] = variants
        self.results["monitoring"] = {"summary": summary, "runs": runs}
        self._say(
            f"  drift costs {_fmt_pct(summary['drift_cost'])} (target <= 5 %); the shadow "
            f"{summary['shadow_extra_us_per_event']} µs/event against its model's "
            f"{summary['model_us_per_event']} ({summary['shadow_cost_vs_model']}x, target <= 1x);"
            f" canary at {monitoring_cost.CANARY_FRACTION:.0%} costs "
            f"{_fmt_pct(summary['canary_cost'])}"
        )

    def scores(self) -> None:
        """Throughput with the scores topic on beside alerts-only (bench/scores_topic.py)."""
        self._say("scores topic: alerts-only against scores-on")
        row = scores_topic.measure(
            self.cluster, self.input_topic, self.plan.events, RESULTS_DIR / "scores-topic"
        )
        self.results["scores_topic"] = row
        self._say(f"  ratio {row['ratio']} (target >= {row['target_ratio']}): {row['verdict']}")


def _shadow_us(row: dict[str, Any] | None) -> float | None:
    """The shadow's own seconds per consumed event, in µs, from a monitoring run's counters."""
    if not row or not row.get("consumed"):
        return None
    seconds = row.get("counters", {}).get("stream_scorer_shadow_seconds")
    return None if seconds is None else float(seconds) / float(row["consumed"]) * 1e6


def _fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _fmt_pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _epoch_ms(stamp: str) -> int:
    """A history entry's ISO timestamp (``...Z``) as epoch milliseconds."""
    return int(dt.datetime.fromisoformat(stamp).timestamp() * 1000)


def _scrape(url: str) -> dict[str, Any]:
    """stage_duration_seconds sums and counts from a stream-scorer /metrics endpoint."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:  # noqa: S310 - our own http:// URL
        text = response.read().decode()
    stages: dict[str, dict[str, float]] = {}
    consumed = 0.0
    counters: dict[str, float] = {}
    serving: list[str] = []
    for family in text_string_to_metric_families(text):
        if family.name == "stream_scorer_records_consumed":
            consumed = sum(s.value for s in family.samples if s.name.endswith("_total"))
        if family.name in WATCHED_METRICS:
            counters[family.name] = sum(
                s.value for s in family.samples if s.name in (family.name, f"{family.name}_total")
            )
        if family.name == "stream_scorer_model_info":
            serving += [
                f"{s.labels['model_name']}/{s.labels['model_version']}"
                for s in family.samples
                if s.value == 1
            ]
        if family.name != "stream_scorer_stage_duration_seconds":
            continue
        for sample in family.samples:
            stage = sample.labels.get("stage")
            if stage is None:
                continue
            if sample.name.endswith("_sum"):
                stages.setdefault(stage, {})["seconds"] = sample.value
            elif sample.name.endswith("_count"):
                stages.setdefault(stage, {})["batches"] = sample.value
    return {"stages": stages, "consumed": consumed, "counters": counters, "serving": serving}


def _soak_summary(
    series: list[tuple[float, float]], load: int, duration_s: float
) -> dict[str, Any]:
    """Median RSS in minute 2 (after warm-up) and in the last minute of the soak (a fifth of
    it when shorter than 5 min), and the growth between them."""
    span = min(60.0, duration_s / 5)
    end = series[-1][0] if series else 0.0
    first = [m for t, m in series if span <= t < 2 * span]
    last = [m for t, m in series if t >= end - span]
    first_mb = float(np.median(first)) if first else 0.0
    last_mb = float(np.median(last)) if last else 0.0
    return {
        "offered_events_per_s": load,
        "duration_s": round(end, 1),
        "window_s": span,
        "rss_early_mb": round(first_mb, 1),
        "rss_late_mb": round(last_mb, 1),
        "peak_rss_mb": round(max((m for _, m in series), default=0.0), 1),
        "growth_percent": round(100 * (last_mb - first_mb) / first_mb, 2) if first_mb else 0.0,
        "rss_series_mb": [(round(t, 1), round(m, 1)) for t, m in series],
    }


def _stage_split(metrics: dict[str, Any], events_per_s: float) -> dict[str, Any]:
    """Seconds, share and µs per event of each stage, in pipeline order.

    The sums cover the scorer's whole life (every consumed event), so per-event figures divide
    by ``records_consumed_total``; ``wall_us_per_event`` (from the measured rate) shows what the
    stages do not account for (loop overhead, delivery polling, logging).
    """
    stages: dict[str, Any] = metrics["stages"]
    events = int(metrics["consumed"])
    total = sum(row.get("seconds", 0.0) for row in stages.values()) or 1e-9
    ordered = ("consume", "decode", "featurize", "score", "flag", "encode", "publish", "commit")
    split = {
        stage: {
            "seconds": round(stages[stage].get("seconds", 0.0), 4),
            "batches": int(stages[stage].get("batches", 0)),
            "share": round(stages[stage].get("seconds", 0.0) / total, 4),
            "us_per_event": round(stages[stage].get("seconds", 0.0) / max(events, 1) * 1e6, 3),
        }
        for stage in ordered
        if stage in stages
    }
    return {
        "source": "stream_scorer_stage_duration_seconds (sum over the throughput run)",
        "total_s": round(total, 3),
        "events": events,
        "stages_us_per_event": round(total / max(events, 1) * 1e6, 3),
        "wall_us_per_event": round(1e6 / events_per_s, 3) if events_per_s else None,
        "stages": split,
    }


def ensure_quix_venv(python: str) -> Path:
    """Create ``.cache/bench-quix-venv`` with Quix Streams unless it already matches."""
    marker = QUIX_VENV / QUIX_MARKER
    wanted = "\n".join(QUIX_REQUIREMENTS)
    venv_python = QUIX_VENV / "bin" / "python"
    if venv_python.exists() and marker.is_file() and marker.read_text() == wanted:
        return venv_python
    print(f"creating {QUIX_VENV} ({', '.join(QUIX_REQUIREMENTS)})", flush=True)
    shutil.rmtree(QUIX_VENV, ignore_errors=True)
    subprocess.run([python, "-m", "venv", str(QUIX_VENV)], check=True)
    subprocess.run(
        [str(venv_python), "-m", "pip", "install", "--quiet", *QUIX_REQUIREMENTS], check=True
    )
    marker.write_text(wanted)
    return venv_python


def _service_revision() -> dict[str, Any]:
    """The commit measured and whether stream_scorer/ had uncommitted changes."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=False, timeout=30
        )
        return done.stdout.strip()

    return {
        "git_commit": git("rev-parse", "HEAD") or None,
        "stream_scorer_uncommitted_changes": bool(git("status", "--porcelain", "stream_scorer")),
    }


def _system_busy_percent() -> float:
    """Whole-machine CPU use over one second, before the run: how shared the machine is."""
    return float(psutil.cpu_percent(interval=1.0))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--events", type=int, default=None, help="data set size (500000)")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--bootstrap-servers", default=None, help="use this cluster")
    parser.add_argument("--contenders", default=",".join(CONTENDERS), help="comma-separated subset")
    parser.add_argument("--loads", default=",".join(map(str, DEFAULT_LOADS)), help="events/s")
    parser.add_argument("--latency-duration-s", type=float, default=None, help="(20; quick 5)")
    parser.add_argument(
        "--latency-min-alerts", type=int, default=None,
        help="lengthen a latency run until this many alerts are expected (500; quick 0)",
    )  # fmt: skip
    parser.add_argument("--sweep-events", type=int, default=None, help="per sweep run (200000)")
    parser.add_argument("--run-timeout-s", type=float, default=900.0)
    parser.add_argument(
        "--skip", default="",
        help="phases to skip: limits,throughput,sweep,scaling,latency,pipelining,soak,"
        "promotion,monitoring,scores",
    )  # fmt: skip
    parser.add_argument(
        "--ab-rounds", type=int, default=None,
        help=f"rounds of pipelined against barrier ({DEFAULT_AB_ROUNDS}; quick 2)",
    )  # fmt: skip
    parser.add_argument("--soak-s", type=float, default=None, help="soak length (300; quick 30)")
    parser.add_argument(
        "--promotion-window-s", type=float, default=None,
        help="each window of the promotion phase (60; quick 10)",
    )  # fmt: skip
    parser.add_argument(
        "--monitoring-rounds", type=int, default=None,
        help=f"rounds of plain/drift/shadow/canary ({DEFAULT_MONITORING_ROUNDS}; quick 1)",
    )  # fmt: skip
    parser.add_argument(
        "--publish", type=Path, default=None,
        help="also copy results.json and the PNGs here (e.g. docs/perf)",
    )  # fmt: skip
    return parser


def _plan(args: argparse.Namespace) -> Plan:
    quick = args.quick
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    events = args.events or (50_000 if quick else 500_000)
    return Plan(
        events=events,
        sweep_events=args.sweep_events or (min(events, 50_000) if quick else 200_000),
        latency_duration_s=args.latency_duration_s or (5.0 if quick else 20.0),
        latency_min_alerts=(
            args.latency_min_alerts
            if args.latency_min_alerts is not None
            else (0 if quick else 500)
        ),
        loads=tuple(int(x) for x in args.loads.split(",") if x),
        run_timeout_s=args.run_timeout_s,
        model_min_seconds=1.0 if quick else 3.0,
        contenders=tuple(c for c in args.contenders.split(",") if c),
        sweep="sweep" not in skip,
        scaling="scaling" not in skip,
        latency="latency" not in skip,
        soak_s=0.0 if "soak" in skip else (args.soak_s or (30.0 if quick else 300.0)),
        limits="limits" not in skip,
        throughput="throughput" not in skip,
        ab_rounds=(
            0 if "pipelining" in skip else args.ab_rounds or (2 if quick else DEFAULT_AB_ROUNDS)
        ),
        promotion_window_s=(
            0.0
            if "promotion" in skip
            else args.promotion_window_s or (10.0 if quick else DEFAULT_PROMOTION_WINDOW_S)
        ),
        monitoring_rounds=(
            0
            if "monitoring" in skip
            else args.monitoring_rounds or (1 if quick else DEFAULT_MONITORING_ROUNDS)
        ),
        scores_topic="scores" not in skip,
    )


def _phase(name: str, results: dict[str, Any], fn: Callable[[], None]) -> None:
    """Run one phase; a failure is recorded and the next phases still run."""
    started = time.monotonic()
    try:
        fn()
    except Exception as exc:
        results.setdefault("errors", []).append(f"{name}: {type(exc).__name__}: {exc}")
        print(f"phase {name} failed: {exc}", file=sys.stderr, flush=True)
    results.setdefault("phase_seconds", {})[name] = round(time.monotonic() - started, 1)


def _run_phases(harness: Harness, plan: Plan, results: dict[str, Any]) -> None:
    """Every phase the plan keeps, in order, on the data set already produced."""
    phases: list[tuple[str, bool, Callable[[], None]]] = [
        ("limits", plan.limits, harness.limits),
        ("throughput", plan.throughput, harness.throughput),
        ("sweep", plan.sweep, harness.sweep),
        ("scaling", plan.scaling, harness.scaling),
        ("latency", plan.latency, harness.latency),
        ("pipelining", plan.ab_rounds > 0, harness.pipelining),
        ("soak", plan.soak_s > 0, harness.soak),
        ("promotion", plan.promotion_window_s > 0, harness.promotion),
        ("monitoring", plan.monitoring_rounds > 0, harness.monitoring),
        ("scores_topic", plan.scores_topic, harness.scores),
    ]
    for name, wanted, fn in phases:
        if wanted:
            _phase(name, results, fn)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns 0 when every phase ran (targets may still be missed)."""
    args = _parser().parse_args(argv)
    plan = _plan(args)
    started = time.monotonic()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    quix_python = ensure_quix_venv(sys.executable) if "quix" in plan.contenders else None
    busy = _system_busy_percent()
    run_id = uuid.uuid4().hex[:6]
    cluster = Cluster(args.bootstrap_servers, RESULTS_DIR / "broker-data")
    harness = Harness(cluster, plan, run_id, quix_python)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        del frame
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    results = harness.results
    results["meta"] = {
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench.run", *(argv if argv is not None else sys.argv[1:])]),
        "run_id": run_id,
        "bootstrap_servers": "repo broker" if args.bootstrap_servers is None else "external",
        "machine": machine_info(cluster.kafka_version, quix_python),
        "machine_busy_percent_before_start": busy,
        "onnx_threads_stream_scorer": harness.threads,
        **_service_revision(),
    }
    results["config"] = {**asdict(plan), "batch_size": BATCH_SIZE, "warmup_s": WARMUP_S}
    try:
        harness.dataset()
        _run_phases(harness, plan, results)
    finally:
        harness.stop_all()
        cluster.close()
    results["meta"]["load_average_end"] = list(psutil.getloadavg())
    results["meta"]["duration_s"] = round(time.monotonic() - started, 1)
    results["targets"] = evaluate_targets(results)
    path = RESULTS_DIR / "results.json"
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    pngs = plot_results(results, RESULTS_DIR)
    print()
    print(format_tables(results))
    print(f"\nresults: {path}; plots: {', '.join(str(p) for p in pngs)}")
    print(f"total time {results['meta']['duration_s']:.0f} s")
    if args.publish is not None:
        args.publish.mkdir(parents=True, exist_ok=True)
        for file in (path, *pngs):
            shutil.copy2(file, args.publish / file.name)
    return 1 if results.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
