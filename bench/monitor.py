"""Measures one contender run from outside: progress, CPU and memory of its processes.

Progress is read the same way for every contender: the sum of its consumer group's committed
offsets, polled every :data:`PROGRESS_INTERVAL_S`. The throughput window opens at the first
commit seen once the group is stable with all its members (so start-up, model loading and the
group join are not counted, for anyone) and closes at the first poll that sees the target
reached; the rate is the events committed in between divided by the time in between. CPU time
(user + system, psutil, over each process tree) is interpolated to the same two instants; RSS
(the sum over each tree) is sampled every :data:`SAMPLE_INTERVAL_S` and its peak kept.

A group of several members is measured differently (:func:`group_window`), because the first
member may read most of a short data set before the others have joined: the window opens at the
group's first consumed event (the members' ``stream_scorer_records_consumed_total``, scraped
from their ``/metrics`` until it leaves 0) and closes at the commit that reaches the target, so
a slow join counts against the group instead of hiding the run.
"""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from bench.infra import Cluster, tail

__all__ = [
    "ContenderError",
    "GroupWindow",
    "RunMeasurement",
    "TreeSampler",
    "consumed_count",
    "crossing_time",
    "group_window",
    "measure_run",
]

#: psutil sampling period for CPU and RSS (the brief's 100 ms).
SAMPLE_INTERVAL_S = 0.1
#: Committed-offset polling period: one admin round trip to the local broker each time. A
#: window end is known to within one period, and a full-speed run lasts about 5 s.
PROGRESS_INTERVAL_S = 0.1
#: Group membership polling period until the group is stable.
GROUP_INTERVAL_S = 0.5
#: Points kept of the RSS time series in the results (downsampled).
RSS_SERIES_POINTS = 60
#: Bytes per MiB.
MIB = 1024 * 1024
#: Timeout of one /metrics scrape of a member (local HTTP; a slow one is retried next period).
SCRAPE_TIMEOUT_S = 0.5
#: The counter of events a stream-scorer process has consumed (all topics, all labels).
CONSUMED_METRIC = "stream_scorer_records_consumed_total"


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


def consumed_count(metrics_url: str) -> int | None:
    """Events a stream-scorer process has consumed, from its ``/metrics``; None when unreachable.

    A member still loading its model has no HTTP endpoint yet: that reads as None, not 0.
    """
    try:
        with urllib.request.urlopen(  # noqa: S310 - our own http:// URL
            f"{metrics_url}/metrics", timeout=SCRAPE_TIMEOUT_S
        ) as response:
            text = response.read().decode()
    except (OSError, urllib.error.URLError):
        return None
    total = 0.0
    for line in text.splitlines():
        # Sample lines only: "name{labels} value" (comments start with '#').
        if line.startswith(CONSUMED_METRIC):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def crossing_time(samples: Sequence[tuple[float, int]], threshold: int) -> float | None:
    """When a polled, non-decreasing counter first reached ``threshold``.

    The counter reached it somewhere between the last poll below it and the first poll at or
    above it; the midpoint halves the worst error and removes the bias of taking either end.
    When no earlier poll saw it below, the first poll at or above is the best bound known.

    Args:
        samples: ``(time, value)`` polls in time order.
        threshold: The value to reach.

    Returns:
        The estimated time, or None when no poll reached ``threshold``.
    """
    before: float | None = None
    for t, value in samples:
        if value >= threshold:
            return t if before is None else (before + t) / 2
        before = t
    return None


@dataclass(frozen=True, slots=True)
class GroupWindow:
    """A group's run from its first consumed event to the commit that reached the target."""

    start_s: float
    end_s: float
    events: int

    @property
    def seconds(self) -> float:
        """Length of the window."""
        return self.end_s - self.start_s

    @property
    def events_per_s(self) -> float:
        """The group's rate over the window."""
        return self.events / self.seconds


def group_window(
    consumed: Sequence[tuple[float, int]],
    committed: Sequence[tuple[float, int]],
    target: int,
    already_committed: int = 0,
) -> GroupWindow | None:
    """The window of a group's run, from polls of what it consumed and what it committed.

    Args:
        consumed: ``(time, events consumed by all members)`` polls, from before the first.
        committed: ``(time, sum of the group's committed offsets)`` polls.
        target: Committed offsets that end the run.
        already_committed: The group's committed offsets before the run (0 for a new group).

    Returns:
        The window, or None when the run never consumed or never reached ``target``.
    """
    start = crossing_time(consumed, 1)
    end = crossing_time(committed, target)
    if start is None or end is None or end <= start:
        return None
    return GroupWindow(start, end, target - already_committed)


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
    #: How the window was taken: ``first-commit-once-stable`` or (groups scraped through
    #: their /metrics) ``first-consumed-to-last-commit``.
    window_kind: str = "first-commit-once-stable"
    #: Seconds from the window's start until the group was first seen stable with all its
    #: members (negative: stable before anything was consumed; None: never seen stable).
    all_members_after_s: float | None = None
    #: Events each member had consumed at the end (from its /metrics), when scraped.
    consumed_by_member: list[int | None] = field(default_factory=list)

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
            "window_kind": self.window_kind,
            "all_members_after_s": (
                None if self.all_members_after_s is None else round(self.all_members_after_s, 3)
            ),
            "consumed_by_member": self.consumed_by_member,
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
    metrics_urls: Sequence[str] | None = None,
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
        metrics_urls: The members' stream-scorer ``/metrics`` base URLs: when given, the
            window is :func:`group_window` (first consumed event to last commit) instead of
            first commit once stable, and each member's consumed count is reported.

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
    commits: list[tuple[float, int]] = []
    consumed: list[tuple[float, int]] = []
    stable_at: float | None = None
    next_progress = next_group = started
    committed = 0
    result = RunMeasurement(target_events)
    while True:
        now = time.monotonic()
        cpu, rss = sampler.sample()
        samples.append((now, cpu, rss))
        # Scraped every period until the first event is consumed: that instant opens a group's
        # window, and later scrapes would only cost the members CPU.
        if metrics_urls and (not consumed or consumed[-1][1] == 0):
            counts = [consumed_count(url) for url in metrics_urls]
            consumed.append((now, sum(c or 0 for c in counts)))
        if stable_at is None and now >= next_group:
            next_group = now + GROUP_INTERVAL_S
            seen, assigned = cluster.group_members(group)
            if seen >= members and assigned >= len(partitions):
                stable_at = now
        if now >= next_progress:
            next_progress = now + PROGRESS_INTERVAL_S
            committed = cluster.committed(group, topic, partitions)
            commits.append((now, committed))
            stable = stable_at is not None
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
    if metrics_urls:
        result.window_kind = "first-consumed-to-last-commit"
        result.consumed_by_member = [consumed_count(url) for url in metrics_urls]
        found = group_window(consumed, commits, target_events)
        window = None if found is None else (found.start_s, found.end_s, found.events)
        if found is not None and stable_at is not None:
            result.all_members_after_s = stable_at - found.start_s
    else:
        window = _stable_window(progress)
    _fill_in(result, samples, started, window)
    return result


def _stable_window(progress: Sequence[tuple[float, int]]) -> tuple[float, float, int] | None:
    """First to last ``(time, committed)`` change seen once the group was stable."""
    if len(progress) < 2:
        return None
    (t0, c0), (t1, c1) = progress[0], progress[-1]
    return t0, t1, c1 - c0


def _fill_in(
    result: RunMeasurement,
    samples: Sequence[tuple[float, float, int]],
    started: float,
    window: tuple[float, float, int] | None,
) -> None:
    """Memory from the ``(time, CPU s, RSS)`` samples; rate and CPU over ``window``."""
    times = np.array([s[0] for s in samples])
    cpus = np.array([s[1] for s in samples])
    rss_mb = np.array([s[2] for s in samples]) / MIB
    result.peak_rss_mb = float(rss_mb.max())
    result.final_rss_mb = float(rss_mb[-1])
    step = max(1, len(samples) // RSS_SERIES_POINTS)
    result.rss_series_mb = [
        (float(t - started), float(m)) for t, m in zip(times[::step], rss_mb[::step], strict=True)
    ]
    if window is not None:
        t0, t1, events = window
        result.window_events = events
        result.window_s = t1 - t0
        result.events_per_s = events / result.window_s
        result.cpu_s = float(np.interp(t1, times, cpus) - np.interp(t0, times, cpus))
        result.cpu_s_per_million = result.cpu_s / events * 1e6
