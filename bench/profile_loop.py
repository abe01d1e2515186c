"""Where does the run loop's thread spend its time? A sampled profile of the service at speed.

Starts the repo's broker and the dev Schema Registry, pre-produces ``--events`` synthetic
transactions (the benchmark's data set and seed) into a 4-partition topic, runs
``stream-scorer run`` over them under py-spy, and prints the functions that take the largest
share of the samples of the loop's thread (inclusive: a function with what it calls), plus the
few with the most samples of their own. Threads that are not the loop (onnxruntime's pool,
librdkafka) are left out: the loop's thread is the one that sets the rate.

Run: ``.venv/bin/python -m bench.profile_loop [--events N] [--rate HZ] [--top N]``. Needs
py-spy (in the ``bench`` extras). Sampling at 100 Hz costs the service about 5 % of its speed.
docs/performance.md cites its output.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.infra import Cluster, spawn, terminate, write_scorer_config
from bench.monitor import measure_run
from bench.run import DATASET_SEED, FRAUD_RATE, PARTITIONS
from scripts.kafka_broker import find_free_ports

#: The frame every sample of the loop's thread passes through.
LOOP_FRAME = "Runner._loop"


def summarise(raw: Path, top: int) -> str:
    """py-spy's raw (collapsed) stacks → a table of inclusive and self shares of the loop."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(encoding="utf-8").splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not any(LOOP_FRAME in frame for frame in frames):
            continue
        samples = int(count)
        total += samples
        own[_function(frames[-1], line_too=True)] += samples
        for name in {_function(frame) for frame in frames}:
            inclusive[name] += samples
    if not total:
        return "no samples of the run loop"
    rows = [f"{total} samples of the loop's thread", "", "inclusive %  function"]
    rows += [f"{100 * n / total:10.1f}  {name}" for name, n in inclusive.most_common(top)]
    rows += ["", "self %  function (line)"]
    rows += [f"{100 * n / total:6.1f}  {name}" for name, n in own.most_common(top // 2)]
    return "\n".join(rows)


def _function(frame: str, line_too: bool = False) -> str:
    """``name (path:line)`` → ``name (path)``, or unchanged with ``line_too``."""
    if line_too or " (" not in frame:
        return frame
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]}"


def main(argv: list[str] | None = None) -> int:
    """Profile one run over a fresh data set; print the summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        print("py-spy is not installed: pip install -e '.[dev,bench]'", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="profile-loop-"))
    cluster = Cluster(None, work / "broker")
    try:
        data = cluster.produce_dataset(
            "profile-input", args.events, PARTITIONS, DATASET_SEED, FRAUD_RATE
        )
        topics = {
            "input": data.topic,
            "alerts": cluster.create_topic("profile-alerts", PARTITIONS, True),
            "dead_letter": cluster.create_topic("profile-dlq", PARTITIONS, True),
        }
        port = find_free_ports(1)[0]
        config = write_scorer_config(
            work / "scorer.toml", cluster.bootstrap, "profile", topics, cluster.registry_url,
            1000, port,
        )  # fmt: skip
        raw = work / "stacks.txt"
        argv_ = [py_spy, "record", "-r", str(args.rate), "-f", "raw", "-o", str(raw), "--",
                 sys.executable, "-m", "stream_scorer", "run", "--config", str(config)]  # fmt: skip
        process = spawn(argv_, work / "scorer.log")
        try:
            run = measure_run(
                cluster, [process], [work / "scorer.log"], "profile", data.topic, args.events, 900
            )
        finally:
            # SIGINT to the group: the service stops cleanly and py-spy writes its file.
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                terminate(process)
        print(f"{run.events_per_s:,.0f} events/s under py-spy at {args.rate} Hz\n")
        print(summarise(raw, args.top))
    finally:
        cluster.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
