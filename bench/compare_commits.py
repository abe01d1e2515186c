"""Throughput of the service at two commits, side by side on one broker and one data set.

``python -m bench.compare_commits REV_A REV_B`` exports ``stream_scorer/``, ``models/`` and
``schemas/`` of each revision into a temporary folder (``git archive``: nothing in the
repository or its worktrees changes), starts the repo's broker and the dev Schema Registry once,
pre-produces one data set, then runs ``stream-scorer run --config ...`` of each revision over
the whole topic in alternating rounds (A B, B A, A B, ...), each run from scratch with its own
group and output topics. Each revision runs with this checkout's virtual environment (same
libraries) and its own code, models and schemas (``PYTHONPATH`` and working directory set to its
export, checked before the first run). The rate is measured as in ``make bench``'s throughput
phase (:func:`bench.monitor.measure_run`). It prints and writes
``bench/results/compare-<A>-<B>.json``: per revision the median events/s with its range, the
ratio within each round and of the medians, and whether every round agrees; and the alert count
of every run (both revisions must flag the same events).

Only the service's command line and config keys are used, so any two revisions whose
``stream-scorer run`` reads the keys of :func:`bench.infra.write_scorer_config` compare.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.alternate import compare, run_order
from bench.infra import REPO, Cluster, spawn, terminate, write_scorer_config
from bench.monitor import measure_run
from scripts.kafka_broker import find_free_ports

__all__ = ["export_revision", "main", "resolve_revision"]

#: Where the results file, logs and configs go (git-ignored), and the broker's data (apart
#: from ``bench.run``'s, so the two may run one after the other without sharing a log).
RESULTS_DIR = REPO / "bench" / "results"
BROKER_DATA = RESULTS_DIR / "compare-broker-data"
#: What a revision's service needs from its tree: its code, its models, its schemas.
EXPORTED_PATHS = ("stream_scorer", "models", "schemas")
#: Data set, partitions and batch size of bench.run's throughput phase, so figures compare.
DATASET_SEED = 20260404
FRAUD_RATE = 0.01
PARTITIONS = 4
BATCH_SIZE = 1000
#: Default rounds: one run of each revision per round.
DEFAULT_ROUNDS = 5
#: Longest a run may take before it is marked timed out.
RUN_TIMEOUT_S = 600.0


def resolve_revision(revision: str) -> str:
    """The full commit id of ``revision`` (anything ``git rev-parse`` takes).

    Raises:
        ValueError: git knows no such commit.
    """
    done = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    if done.returncode != 0 or not done.stdout.strip():
        msg = f"unknown revision {revision!r}: git rev-parse found no commit"
        raise ValueError(msg)
    return done.stdout.strip()


def export_revision(commit: str, into: Path) -> Path:
    """Write ``commit``'s :data:`EXPORTED_PATHS` under ``into``; returns ``into``.

    ``git archive`` reads the object store only: no worktree, index or ref is created.

    Raises:
        RuntimeError: git could not archive the commit.
    """
    done = subprocess.run(
        ["git", "archive", "--format=tar", commit, *EXPORTED_PATHS],
        cwd=REPO,
        capture_output=True,
        check=False,
        timeout=120,
    )
    if done.returncode != 0:
        msg = f"git archive {commit} failed: {done.stderr.decode(errors='replace')[-500:]}"
        raise RuntimeError(msg)
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as archive:
        archive.extractall(into, filter="data")
    return into


def _check_imports_from(tree: Path) -> None:
    """Fail unless ``python -m stream_scorer`` started in ``tree`` runs ``tree``'s code."""
    done = subprocess.run(
        [sys.executable, "-c", "import stream_scorer; print(stream_scorer.__file__)"],
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    found = Path(done.stdout.strip() or "?").resolve()
    if done.returncode != 0 or not found.is_relative_to(tree.resolve()):
        msg = f"stream_scorer imported from {found}, not from {tree}: {done.stderr[-500:]}"
        raise RuntimeError(msg)


def _say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _run_once(
    cluster: Cluster, tree: Path, topic: str, events: int, tag: str, logs: Path
) -> dict[str, Any]:
    """One revision over the whole data set: a fresh group, output topics and process."""
    group = f"bench-compare-{tag}"
    topics = {
        "input": topic,
        "alerts": cluster.create_topic(f"{group}-alerts", PARTITIONS, True),
        "dead_letter": cluster.create_topic(f"{group}-dlq", PARTITIONS, True),
    }
    config = write_scorer_config(
        logs.parent / "configs" / f"{tag}.toml",
        cluster.bootstrap,
        group,
        topics,
        cluster.registry_url,
        BATCH_SIZE,
        find_free_ports(1)[0],
        root=tree,
    )
    log = logs / f"{tag}.log"
    argv = [sys.executable, "-m", "stream_scorer", "run", "--config", str(config)]
    process = spawn(argv, log, cwd=tree, extra_env={"PYTHONPATH": str(tree)})
    try:
        measurement = measure_run(cluster, [process], [log], group, topic, events, RUN_TIMEOUT_S)
    finally:
        terminate(process)
    row = measurement.as_dict()
    del row["rss_series_mb"]
    row["alerts"] = cluster.count_messages(topics["alerts"])
    return row


def _summary(a: str, b: str, runs: dict[str, list[dict[str, Any]]], rounds: int) -> dict[str, Any]:
    """Medians, ranges, ratios and verdicts of rate and CPU; the alert counts of every run."""
    rates = {label: [r["events_per_s"] for r in runs[label]] for label in (a, b)}
    cpu = {label: [r["cpu_s_per_million"] for r in runs[label]] for label in (a, b)}
    alerts = {label: sorted({r["alerts"] for r in runs[label]}) for label in (a, b)}
    return {
        "rounds": rounds,
        "events_per_s": compare(a, b, rates[a], rates[b], "higher"),
        "cpu_s_per_million": compare(a, b, cpu[a], cpu[b], "lower"),
        "alerts_per_run": alerts,
        "same_alerts": alerts[a] == alerts[b] and len(alerts[a]) == 1,
        "timed_out_runs": sum(r["timed_out"] for label in (a, b) for r in runs[label]),
    }


def _format(a: str, b: str, summary: dict[str, Any]) -> str:
    """The printed table: median and range per revision, ratios per round, the verdict."""
    out = [f"{'':<26}{a:>14}{b:>14}   ratio {a} / {b}"]
    for key in ("events_per_s", "cpu_s_per_million"):
        row = summary[key]
        medians = "".join(f"{row[label]['median']:>14,.1f}" for label in (a, b))
        ratios = ", ".join(f"{r:.3f}" for r in row["round_ratios"])
        out.append(
            f"{key + ' (median)':<26}{medians}   {row['ratio_of_medians']:.3f} "
            f"(per round {ratios}; better: {row['winner']})"
        )
        ranges = "".join(
            f"{row[label]['min']:>8,.0f}-{row[label]['max']:<5,.0f}" for label in (a, b)
        )
        out.append(f"{'  min-max':<26}{ranges}")
    out.append(f"alerts per run: {summary['alerts_per_run']} (same: {summary['same_alerts']})")
    return "\n".join(out)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.compare_commits", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("rev_a", help="first revision (commit, branch, tag)")
    parser.add_argument("rev_b", help="second revision")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="runs of each (5)")
    parser.add_argument("--events", type=int, default=500_000, help="data set size (500000)")
    parser.add_argument("--bootstrap-servers", default=None, help="use this cluster")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Compare two revisions; returns 0 when every run finished."""
    args = _parser().parse_args(argv)
    revs = (args.rev_a, args.rev_b)
    commits = tuple(resolve_revision(rev) for rev in revs)
    a, b = (commit[:7] for commit in commits)
    if a == b:  # the same commit twice: still a useful noise measurement, told apart
        a, b = f"A-{a}", f"B-{b}"
    labels = {a: 0, b: 1}
    run_id = uuid.uuid4().hex[:6]
    logs = RESULTS_DIR / "logs" / f"compare-{run_id}"
    scratch = Path(tempfile.mkdtemp(prefix="bench-compare-"))
    started = time.monotonic()
    load_start = list(os.getloadavg())
    cluster: Cluster | None = None
    runs: dict[str, list[dict[str, Any]]] = {a: [{}] * args.rounds, b: [{}] * args.rounds}
    try:
        trees = {label: export_revision(commits[k], scratch / label) for label, k in labels.items()}
        for tree in trees.values():
            _check_imports_from(tree)
        cluster = Cluster(args.bootstrap_servers, BROKER_DATA)
        topic = f"bench-compare-{run_id}-input"
        _say(f"producing {args.events:,} events to {PARTITIONS} partitions")
        data = cluster.produce_dataset(topic, args.events, PARTITIONS, DATASET_SEED, FRAUD_RATE)
        for i, label in run_order(args.rounds, a, b):
            _say(f"round {i + 1}/{args.rounds}: {label} ({revs[labels[label]]})")
            row = _run_once(
                cluster, trees[label], topic, data.events, f"{run_id}-{i}-{label}", logs
            )
            runs[label][i] = row
            _say(f"  {row['events_per_s']:,.0f} events/s, {row['alerts']} alerts")
    finally:
        if cluster is not None:
            cluster.close()
        shutil.rmtree(scratch, ignore_errors=True)
    summary = _summary(a, b, runs, args.rounds)
    load_end = list(os.getloadavg())
    results = {
        "command": " ".join(
            ["python -m bench.compare_commits", *(argv if argv is not None else sys.argv[1:])]
        ),
        "revisions": {label: {"rev": revs[k], "commit": commits[k]} for label, k in labels.items()},
        "events": data.events,
        "order": [f"{i + 1}:{label}" for i, label in run_order(args.rounds, a, b)],
        "duration_s": round(time.monotonic() - started, 1),
        # How shared the machine was: the figures mean little when the load far exceeds the cores.
        "load_average_start": load_start,
        "load_average_end": load_end,
        "cores": os.cpu_count(),
        "summary": summary,
        "runs": runs,
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"compare-{a}-{b}.json"
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print()
    print(_format(a, b, summary))
    print(
        f"\nresults: {path}; total time {results['duration_s']:.0f} s; load average "
        f"{load_start[0]:.1f} at the start, {load_end[0]:.1f} at the end"
    )
    return 1 if summary["timed_out_runs"] else 0


if __name__ == "__main__":
    sys.exit(main())
