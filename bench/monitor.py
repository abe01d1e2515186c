"""Measures one contender run from outside: progress, CPU and memory of its processes.

Progress is read the same way for every contender: the sum of its consumer group's committed
offsets, polled every :data:`PROGRESS_INTERVAL_S`. The throughput window opens at the first
commit seen once the group is stable with all its members (so start-up, model loading and the
group join are not counted, for anyone) and closes at the first poll that sees the target
reached; the rate is the events committed in between divided by the time in between. CPU time
(user + system, psutil, over each process tree) is interpolated to the same two instants; RSS
(the sum over each tree) is sampled every :data:`SAMPLE_INTERVAL_S` and its peak kept.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from bench.infra import Cluster, tail

__all__ = ["ContenderError", "RunMeasurement", "TreeSampler", "measure_run"]

#: psutil sampling period for CPU and RSS (the brief's 100 ms).
SAMPLE_INTERVAL_S = 0.1
#: Committed-offset polling period: one admin round trip to the local broker each time.
PROGRESS_INTERVAL_S = 0.25
#: Group membership polling period until the group is stable.
GROUP_INTERVAL_S = 0.5
#: Points kept of the RSS time series in the results (downsampled).
RSS_SERIES_POINTS = 60
#: Bytes per MiB.
MIB = 1024 * 1024


class ContenderError(RuntimeError):
    """A contender process exited before it was done."""


class TreeSampler:
    """CPU seconds and RSS of a set of processes and their descendants."""

    def __init__(self, pids: Sequence[int]) -> None:
        """Watch the trees rooted at ``pids``."""
        self._roots = [psutil.Process(pid) for pid in pids]
        self._known: dict[int, psutil.Process] = {}
        self._cpu_of_gone = 0.0
        self._last_cpu: dict[int, float] = {}

    def sample(self) -> tuple[float, int]:
        """(CPU seconds so far, RSS bytes now) over every live process of the trees."""
        procs: list[psutil.Process] = []
        for root in self._roots:
            try:
                procs.append(root)
                procs.extend(root.children(recursive=True))
            except psutil.NoSuchProcess:
                continue
        cpu = 0.0
        rss = 0
        alive: set[int] = set()
        for proc in procs:
            try:
                with proc.oneshot():
                    times = proc.cpu_times()
                    rss += proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                continue
            alive.add(proc.pid)
            self._last_cpu[proc.pid] = times.user + times.system
        # A process that went away keeps the CPU it had used when last seen.
        for pid in [p for p in self._last_cpu if p not in alive]:
            self._cpu_of_gone += self._last_cpu.pop(pid)
        cpu = self._cpu_of_gone + sum(self._last_cpu.values())
        return cpu, rss


@dataclass(slots=True)
class RunMeasurement:
    """What one contender run came to."""

    target_events: int
    window_events: int = 0
    window_s: float = 0.0
    events_per_s: float = 0.0
    cpu_s: float = 0.0
    cpu_s_per_million: float = 0.0
    peak_rss_mb: float = 0.0
    final_rss_mb: float = 0.0
    committed: int = 0
    timed_out: bool = False
    wall_s: float = 0.0
    rss_series_mb: list[tuple[float, float]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {
            "target_events": self.target_events,
            "window_events": self.window_events,
            "window_s": round(self.window_s, 3),
            "events_per_s": round(self.events_per_s, 1),
            "cpu_s": round(self.cpu_s, 3),
            "cpu_s_per_million": round(self.cpu_s_per_million, 2),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "final_rss_mb": round(self.final_rss_mb, 1),
            "committed": self.committed,
            "timed_out": self.timed_out,
            "wall_s": round(self.wall_s, 2),
            "rss_series_mb": [(round(t, 2), round(m, 1)) for t, m in self.rss_series_mb],
        }


def _check_alive(processes: Sequence[subprocess.Popen[bytes]], logs: Sequence[Path]) -> None:
    for process, log in zip(processes, logs, strict=True):
        if process.poll() is not None:
            msg = f"{process.args!r} exited with {process.returncode}; log tail:\n{tail(log)}"
            raise ContenderError(msg)


def measure_run(
    cluster: Cluster,
    processes: Sequence[subprocess.Popen[bytes]],
    logs: Sequence[Path],
    group: str,
    topic: str,
    target_events: int,
    timeout_s: float,
    members: int = 1,
) -> RunMeasurement:
    """Follow a running contender until its group has committed ``target_events``.

    Args:
        cluster: Where to read committed offsets and group state.
        processes: The contender's processes (one per group member).
        logs: Their log files, quoted when one dies.
        group: Their consumer group.
        topic: The input topic.
        target_events: Done when the committed offsets add up to at least this.
        timeout_s: Give up after this long (the measurement is then marked ``timed_out``).
        members: Group members to wait for before the window may open.

    Returns:
        The measurement; the processes are left running.

    Raises:
        ContenderError: A process exited early.
    """
    partitions = cluster.partitions(topic)
    sampler = TreeSampler([p.pid for p in processes])
    started = time.monotonic()
    samples: list[tuple[float, float, int]] = []
    progress: list[tuple[float, int]] = []
    stable = False
    next_progress = next_group = started
    committed = 0
    result = RunMeasurement(target_events)
    while True:
        now = time.monotonic()
        cpu, rss = sampler.sample()
        samples.append((now, cpu, rss))
        if not stable and now >= next_group:
            next_group = now + GROUP_INTERVAL_S
            seen, assigned = cluster.group_members(group)
            stable = seen >= members and assigned >= len(partitions)
        if now >= next_progress:
            next_progress = now + PROGRESS_INTERVAL_S
            committed = cluster.committed(group, topic, partitions)
            if stable and committed > 0 and (not progress or committed != progress[-1][1]):
                progress.append((now, committed))
            if committed >= target_events:
                break
        if now - started > timeout_s:
            result.timed_out = True
            break
        _check_alive(processes, logs)
        time.sleep(max(0.0, SAMPLE_INTERVAL_S - (time.monotonic() - now)))
    result.committed = committed
    result.wall_s = time.monotonic() - started
    times = np.array([s[0] for s in samples])
    cpus = np.array([s[1] for s in samples])
    rss_mb = np.array([s[2] for s in samples]) / MIB
    result.peak_rss_mb = float(rss_mb.max())
    result.final_rss_mb = float(rss_mb[-1])
    step = max(1, len(samples) // RSS_SERIES_POINTS)
    result.rss_series_mb = [
        (float(t - started), float(m)) for t, m in zip(times[::step], rss_mb[::step], strict=True)
    ]
    if len(progress) >= 2:
        (t0, c0), (t1, c1) = progress[0], progress[-1]
        result.window_events = c1 - c0
        result.window_s = t1 - t0
        result.events_per_s = result.window_events / result.window_s
        result.cpu_s = float(np.interp(t1, times, cpus) - np.interp(t0, times, cpus))
        result.cpu_s_per_million = result.cpu_s / result.window_events * 1e6
    return result
