"""Turns a run's results into the machine description, the target verdicts, a table and plots.

Everything here reads the results dict :mod:`bench.run` builds; nothing is measured here.
Ratios are stream-scorer ÷ contender for throughput (higher is better for stream-scorer).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil

__all__ = [
    "TARGETS",
    "evaluate_targets",
    "format_tables",
    "machine_info",
    "monitoring_lines",
    "pipelining_lines",
    "plot_results",
    "promotion_lines",
    "scores_topic_lines",
]

#: The issue's targets: (id, description, kind, threshold).
TARGETS: tuple[tuple[str, str, str, float], ...] = (
    ("absolute", "stream-scorer events/s (one process)", "min", 150_000.0),
    ("limit", "stream-scorer / min(model rate, bare consume)", "min", 0.70),
    ("vs_fastavro_batch", "stream-scorer / fastavro-batch throughput", "min", 4.0),
    ("vs_naive", "stream-scorer / naive loop throughput", "min", 8.0),
    ("vs_quix", "stream-scorer / Quix Streams throughput", "min", 8.0),
    ("p99_20k", "stream-scorer p99 latency at 20,000 events/s (ms)", "max", 15.0),
    ("rss", "stream-scorer peak RSS at full speed (MB)", "max", 300.0),
    # "Flat over a 5-minute run": RSS in the last minute at most 10 % above minute 2's.
    ("rss_flat", "stream-scorer RSS growth over the soak (%)", "max", 10.0),
    # Issue 10: p99 in the minute around a promotion against the minute before.
    ("promotion_5k", "p99 around a promotion / before, 5,000 events/s", "max", 1.5),
    ("promotion_20k", "p99 around a promotion / before, 20,000 events/s", "max", 1.5),
    # Issue 11: drift at most 5 % of throughput; a same-size shadow at most its model time.
    ("drift_cost", "drift on: throughput lost against plain (%)", "max", 5.0),
    ("shadow_cost", "one same-size shadow: extra time / its model time", "max", 1.0),
    # Issue 14: the scores topic on at least 70 % of the alerts-only rate.
    ("scores_topic", "scores topic on / alerts-only throughput", "min", 0.70),
)
#: Contenders in table order; stream-scorer first, it is the reference of every ratio. (Results
#: files from before the pipelining phase also have a single ``stream-scorer-barrier`` row.)
CONTENDER_ORDER = ("stream-scorer", "stream-scorer-barrier", "fastavro-batch", "naive", "quix")
LATENCY_ORDER = CONTENDER_ORDER


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _quix_versions(python: Path) -> dict[str, str | None]:
    """Versions installed in the Quix Streams virtual environment."""
    code = (
        "import importlib.metadata as m, json\n"
        "out = {}\n"
        "for p in ('quixstreams', 'confluent-kafka', 'onnxruntime', 'fastavro', 'numpy'):\n"
        "    try: out[p] = m.version(p)\n"
        "    except m.PackageNotFoundError: out[p] = None\n"
        "import confluent_kafka; out['librdkafka'] = confluent_kafka.libversion()[0]\n"
        "print(json.dumps(out))\n"
    )
    try:
        done = subprocess.run(
            [str(python), "-c", code], capture_output=True, text=True, check=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError):
        return {}
    import json  # noqa: PLC0415 - only needed here

    versions: dict[str, str | None] = json.loads(done.stdout)
    return versions


def machine_info(kafka_version: str, quix_python: Path | None) -> dict[str, Any]:
    """CPU, cores, memory, load and library versions of this machine and run."""
    import confluent_kafka  # noqa: PLC0415 - versions only
    import fastavro  # noqa: PLC0415
    import numpy  # noqa: PLC0415
    import onnxruntime  # noqa: PLC0415

    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    info: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "cores_available": affinity,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "load_average": list(os.getloadavg()),
        "versions": {
            "python": sys.version.split()[0],
            "confluent-kafka": _version("confluent-kafka"),
            "librdkafka": confluent_kafka.libversion()[0],
            "onnxruntime": onnxruntime.__version__,
            "fastavro": fastavro.__version__,
            "numpy": numpy.__version__,
            "stream-scorer": _version("stream-scorer"),
            "kafka": kafka_version,
        },
    }
    if quix_python is not None:
        info["quix_venv_versions"] = _quix_versions(quix_python)
    return info


def _ratio(results: dict[str, Any], other: str) -> float | None:
    throughput = results.get("throughput", {})
    ours = throughput.get("stream-scorer", {}).get("events_per_s")
    theirs = throughput.get(other, {}).get("events_per_s")
    if not ours or not theirs:
        return None
    return float(ours) / float(theirs)


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One verdict per target: measured value, PASS / MISS, or n/a when not measured."""
    throughput = results.get("throughput", {})
    scorer = throughput.get("stream-scorer", {})
    limits = results.get("limits", {})
    model_rate = limits.get("model", {}).get("events_per_s")
    bare_rate = limits.get("bare_consume", {}).get("events_per_s")
    limit = min(model_rate, bare_rate) if model_rate and bare_rate else None
    p99 = results.get("latency", {}).get("stream-scorer", {}).get("20000", {}).get("p99_ms")
    promotion = results.get("promotion", {})
    monitoring = results.get("monitoring", {}).get("summary", {})
    drift_cost = monitoring.get("drift_cost")
    measured: dict[str, float | None] = {
        "absolute": scorer.get("events_per_s"),
        "limit": scorer["events_per_s"] / limit if limit and scorer.get("events_per_s") else None,
        "vs_fastavro_batch": _ratio(results, "fastavro-batch"),
        "vs_naive": _ratio(results, "naive"),
        "vs_quix": _ratio(results, "quix"),
        "p99_20k": p99,
        "rss": scorer.get("peak_rss_mb"),
        "rss_flat": results.get("soak", {}).get("growth_percent"),
        "promotion_5k": promotion.get("5000", {}).get("p99_ratio"),
        "promotion_20k": promotion.get("20000", {}).get("p99_ratio"),
        "drift_cost": None if drift_cost is None else 100 * drift_cost,
        "shadow_cost": monitoring.get("shadow_cost_vs_model"),
        "scores_topic": results.get("scores_topic", {}).get("ratio"),
    }
    verdicts = []
    for target_id, description, kind, threshold in TARGETS:
        value = measured[target_id]
        if value is None:
            status = "n/a"
        elif kind == "min":
            status = "PASS" if value >= threshold else "MISS"
        else:
            status = "PASS" if value <= threshold else "MISS"
        verdicts.append(
            {
                "id": target_id,
                "target": description,
                "threshold": f"{'≥' if kind == 'min' else '≤'} {threshold:g}",
                "measured": None if value is None else round(float(value), 3),
                "status": status,
            }
        )
    return verdicts


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float | int):
        return f"{value:,.{digits}f}"
    return str(value)


def _detail_lines(results: dict[str, Any]) -> list[str]:
    """Limits, stage split, batch sweep and scaling lines of the summary."""
    out: list[str] = []
    limits = results.get("limits", {})
    if limits:
        out += ["", "Physical limits (same run, same data)"]
        for name, row in limits.items():
            out.append(f"  {name:<14}{_fmt(row.get('events_per_s')):>11} events/s")
    stages = results.get("stages", {}).get("stages")
    if stages:
        split = results["stages"]
        out += [
            "",
            "stream-scorer time per stage (sum of stage_duration_seconds, throughput run): "
            f"{split['stages_us_per_event']:.1f} µs/event in stages, "
            f"{_fmt(split['wall_us_per_event'], 1)} µs/event wall",
        ]
        for stage, row in stages.items():
            out.append(
                f"  {stage:<10}{row['seconds']:>8.2f} s{row['share'] * 100:>7.1f} %"
                f"{row['us_per_event']:>9.2f} µs/event"
            )
    sweep = results.get("batch_sweep", [])
    if sweep:
        out += ["", "stream-scorer throughput vs batch.max_size"]
        out += [f"  {r['batch_size']:>6}{_fmt(r['events_per_s']):>11} events/s" for r in sweep]
    scaling = results.get("scaling", {})
    if scaling:
        out += [
            "",
            "stream-scorer scaling (consumer-group members on this machine; first consumed "
            "event to last commit)",
        ]
        for members, row in scaling.items():
            out.append(
                f"  {members} member(s){_fmt(row.get('events_per_s')):>11} events/s over "
                f"{_fmt(row.get('window_s'), 2)} s, consumed per member "
                f"{row.get('consumed_by_member', '-')}"
            )
    out += pipelining_lines(results)
    out += promotion_lines(results)
    out += monitoring_lines(results)
    out += scores_topic_lines(results)
    soak = results.get("soak")
    if soak:
        out += [
            "",
            f"stream-scorer memory soak ({_fmt(soak['offered_events_per_s'])} events/s offered, "
            f"{soak['duration_s']:.0f} s)",
            f"  RSS {soak['rss_early_mb']:.1f} MB in minute 2, {soak['rss_late_mb']:.1f} MB in "
            f"the last minute ({soak['growth_percent']:+.1f} %), peak {soak['peak_rss_mb']:.1f} MB",
        ]
    return out


def pipelining_lines(results: dict[str, Any]) -> list[str]:
    """The pipelining phase: each metric's medians, spread, ratios and verdict."""
    summary = results.get("pipelining", {}).get("summary")
    if not summary:
        return []
    a, b = summary["variants"]
    out = [
        "",
        f"Pipelined against barrier, {summary['rounds']} alternating rounds "
        f"(ratio = {a} / {b}; median [min-max])",
    ]
    names = [name.removeprefix("stream-scorer-") for name in (a, b)]
    out.append(f"  {'metric':<26}{names[0]:<30}{names[1]:<30}ratio  per round; verdict")
    for key, row in summary.items():
        if not isinstance(row, dict) or "winner" not in row:
            continue
        cells = [
            f"{_fmt(row[name]['median'], 1)} [{_fmt(row[name]['min'], 1)}-"
            f"{_fmt(row[name]['max'], 1)}]"
            for name in (a, b)
        ]
        ratios = ", ".join(f"{r:.2f}" for r in row["round_ratios"])
        out.append(
            f"  {key:<26}{cells[0]:<30}{cells[1]:<30}{row['ratio_of_medians']:.3f}  {ratios}; "
            f"{row['better']} is better: {row['winner']}"
        )
    # The load producer shares the machine: what it reached is part of what was measured.
    runs = results["pipelining"].get("runs", {})
    for key, rows in runs.items():
        if not key.startswith("latency_"):
            continue
        reached = [
            f"{name.removeprefix('stream-scorer-')} "
            + "/".join(f"{r['achieved_offered_events_per_s']:,.0f}" for r in rows[name] if r)
            for name in (a, b)
            if name in rows
        ]
        out.append(
            f"  offered load reached, {key.removeprefix('latency_')}/s asked: " + "; ".join(reached)
        )
    return out


def promotion_lines(results: dict[str, Any]) -> list[str]:
    """The promotion phase: p99 before and around, the ratio, and that the swap happened."""
    runs = results.get("promotion")
    if not runs:
        return []
    window = next(iter(runs.values())).get("window_s", 0)
    out = [
        "",
        f"Live promotion fraud/1 -> fraud/2 ({window:g} s windows by event time: before, then "
        "around the promotion; p99 of alert LogAppendTime - event_time)",
        f"  {'offered/s':>10}{'p99 before':>12}{'p99 around':>12}{'ratio':>8}  alerts "
        "before/around; applied after; alerts by version; serving at the end; load reached",
    ]
    for load, row in runs.items():
        before, around = row["before"], row["around"]
        out.append(
            f"  {_fmt(int(load)):>10}{_fmt(before.get('p99_ms'), 1):>9} ms"
            f"{_fmt(around.get('p99_ms'), 1):>9} ms{_fmt(row.get('p99_ratio'), 2):>7}x  "
            f"{before['count']}/{around['count']}; {_fmt(row.get('applied_after_s'), 2)} s; "
            f"{row.get('alerts_by_version')}; {', '.join(row.get('serving') or ['-'])}; "
            f"{_fmt(row.get('achieved_offered_events_per_s'))}/s"
            + (" ROLLED BACK" if row.get("rolled_back") else "")
        )
    return out


def monitoring_lines(results: dict[str, Any]) -> list[str]:
    """The monitoring phase: each variant's median rate against plain, and the two costs."""
    summary = results.get("monitoring", {}).get("summary")
    if not summary:
        return []
    out = [
        "",
        f"Monitoring cost, {summary['rounds']} alternating round(s) over the whole data set "
        "(ratio = variant / plain; per round)",
    ]
    medians = summary["median_events_per_s"]
    for name, rate in medians.items():
        row = summary["vs_plain"].get(name)
        ratios = (
            ""
            if row is None
            else f"{row['ratio_of_medians']:.3f}  "
            + ", ".join(f"{r:.2f}" for r in row["round_ratios"])
        )
        out.append(f"  {name:<8}{_fmt(rate):>11} events/s  {ratios}")
    cost = summary.get("drift_cost")
    out.append(
        f"  drift: {'-' if cost is None else f'{cost:.1%}'} of throughput (target <= 5 %); "
        f"shadow: {_fmt(summary.get('shadow_extra_us_per_event'), 2)} µs/event extra against "
        f"its model's {_fmt(summary.get('model_us_per_event'), 2)} µs/event (featurize + "
        f"score) = {_fmt(summary.get('shadow_cost_vs_model'), 2)}x (target <= 1x; its own "
        f"time {_fmt(summary.get('shadow_own_us_per_event'), 2)} µs/event); canary at "
        f"{summary.get('canary_fraction', 0):.0%}: "
        + ("-" if summary.get("canary_cost") is None else f"{summary['canary_cost']:.1%}")
    )
    return out


def scores_topic_lines(results: dict[str, Any]) -> list[str]:
    """The scores-topic phase: alerts-only and scores-on medians and their ratio."""
    row = results.get("scores_topic")
    if not row:
        return []
    medians = row.get("median_events_per_s", {})
    return [
        "",
        f"Scores topic, {row.get('repeats', '-')} alternating run(s) each over the whole data set",
        f"  alerts-only {_fmt(medians.get('alerts-only'))} events/s, scores-on "
        f"{_fmt(medians.get('scores-on'))} events/s: {_fmt(row.get('ratio'), 3)}x "
        f"(target >= {row.get('target_ratio', 0.7):g})",
    ]


def format_tables(results: dict[str, Any]) -> str:
    """The human-readable summary: contenders, limits, stages, sweep, scaling, targets."""
    out: list[str] = []
    throughput = results.get("throughput", {})
    latency = results.get("latency", {})
    loads = [str(load) for load in results.get("config", {}).get("loads", [])]
    header = f"{'contender':<23}{'events/s':>11}{'ratio':>8}{'CPU s/M':>9}{'peak RSS MB':>12}"
    for load in loads:
        header += f"{'p50/p95/p99 ms @' + load + '/s':>28}"
    if throughput or latency:
        out += ["Throughput (whole data set) and end-to-end latency", header, "-" * len(header)]
    for name in LATENCY_ORDER:
        row = throughput.get(name, {})
        if not row and name not in latency:
            continue
        ratio = 1.0 if name == "stream-scorer" else _ratio(results, name) if row else None
        line = (
            f"{name:<23}{_fmt(row.get('events_per_s')):>11}"
            f"{(_fmt(ratio, 2) + 'x') if ratio else '-':>8}"
            f"{_fmt(row.get('cpu_s_per_million'), 1):>9}{_fmt(row.get('peak_rss_mb'), 0):>12}"
        )
        for load in loads:
            lat = latency.get(name, {}).get(load)
            cell = "-"
            if lat and lat.get("count"):
                cell = f"{lat['p50_ms']:.1f}/{lat['p95_ms']:.1f}/{lat['p99_ms']:.1f}" + (
                    " SAT" if lat.get("saturated") else ""
                )
            line += f"{cell:>28}"
        out.append(line)
    out += _detail_lines(results)
    out += ["", "Targets (issues 4, 10, 11, 14)"]
    for verdict in results.get("targets", []):
        out.append(
            f"  {verdict['status']:<5}{verdict['target']:<52}{verdict['threshold']:>10}"
            f"   measured {_fmt(verdict['measured'], 2)}"
        )
    return "\n".join(out)


def _plot_sweep(plt: Any, results: dict[str, Any], out_dir: Path) -> list[Path]:
    """Throughput against batch size, with the limits and the other contenders."""
    written: list[Path] = []
    sweep = results.get("batch_sweep", [])
    if sweep:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        sizes = [r["batch_size"] for r in sweep]
        ax.plot(sizes, [r["events_per_s"] for r in sweep], "o-", label="stream-scorer")
        limits = results.get("limits", {})
        for name, style in (("model", "--"), ("bare_consume", ":")):
            rate = limits.get(name, {}).get("events_per_s")
            if rate:
                ax.axhline(rate, linestyle=style, color="grey", label=f"{name} (batch 1000)")
        for i, name in enumerate(CONTENDER_ORDER[1:], start=1):
            rate = results.get("throughput", {}).get(name, {}).get("events_per_s")
            if rate:
                ax.axhline(rate, linestyle="-.", linewidth=0.8, label=name, color=f"C{i}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("batch.max_size (messages)")
        ax.set_ylabel("events/s")
        ax.set_title("Throughput vs batch size (whole pipeline, one process)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        path = out_dir / "throughput_vs_batch.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _plot_latency(plt: Any, results: dict[str, Any], out_dir: Path) -> list[Path]:
    """Latency percentiles against offered load, one colour per contender."""
    written: list[Path] = []
    latency = results.get("latency", {})
    if latency:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        styles = {"p50_ms": ":", "p95_ms": "--", "p99_ms": "-"}
        for i, name in enumerate(LATENCY_ORDER):
            runs = latency.get(name)
            if not runs:
                continue
            loads = sorted(int(load) for load in runs if runs[load].get("count"))
            for key, style in styles.items():
                ax.plot(
                    loads,
                    [runs[str(load)][key] for load in loads],
                    style,
                    marker="o",
                    color=f"C{i}",
                    label=f"{name} {key[:-3]}",
                )
        ax.axhline(15, color="red", linewidth=0.8, label="target p99 15 ms")
        ax.set_xscale("log")
        offered = sorted({int(load) for runs in latency.values() for load in runs})
        ax.set_xticks(offered, labels=[f"{load:,}" for load in offered])
        ax.minorticks_off()
        ax.set_yscale("log")
        ax.set_xlabel("offered load (events/s)")
        ax.set_ylabel("end-to-end latency (ms)")
        ax.set_title("Latency: alert LogAppendTime - event_time")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        path = out_dir / "latency_vs_load.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def plot_results(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """Throughput vs batch size, and latency percentiles vs offered load; returns the PNGs."""
    import matplotlib as mpl  # noqa: PLC0415 - plotting is the last step; keep start-up light

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return _plot_sweep(plt, results, out_dir) + _plot_latency(plt, results, out_dir)
