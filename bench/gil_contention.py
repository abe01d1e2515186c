"""Would scoring on a second thread pay? How much of the GIL does ``session.run`` keep?

Scores batches of 1000 with the shipped model on a second thread while the main thread runs a
pure-Python loop, and prints (1) the loop's speed beside the scoring thread as a fraction of
its speed alone (1.0: onnxruntime never holds the GIL) and (2) the scoring thread's batches
per second beside the loop against alone (it needs the GIL back after every run, and a busy
thread hands it over only every ``sys.getswitchinterval()``). Both with the string inputs as
object arrays of ``str`` (what stream-scorer passes) and as numpy ``str_`` arrays.

Run: ``.venv/bin/python -m bench.gil_contention [intra_op_threads ...]`` (default 1 2).
docs/performance.md cites its output.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import numpy as np

from bench.ort_memory import sample_inputs, shipped_model

BATCH = 1000
#: Seconds each side is measured for.
WINDOW_S = 2.0


def _spin(seconds: float) -> int:
    """Iterations of a pure-Python loop in ``seconds``."""
    count, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        count += 1
    return count


def measure(threads: int, inputs: dict[str, Any]) -> dict[str, float]:
    """The loop's relative speed and the scoring rate, alone and side by side."""
    scorer = shipped_model({"model": {"intra_op_threads": threads}}).scorer
    for _ in range(20):
        scorer.score(inputs)
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < WINDOW_S:
        scorer.score(inputs)
        runs += 1
    alone_runs_per_s = runs / (time.perf_counter() - started)
    alone_spin = _spin(WINDOW_S)
    stop = threading.Event()
    beside = [0]

    def score() -> None:
        while not stop.is_set():
            scorer.score(inputs)
            beside[0] += 1

    thread = threading.Thread(target=score)
    thread.start()
    spin = _spin(WINDOW_S)
    stop.set()
    thread.join()
    return {
        "loop_speed_beside_scoring": spin / alone_spin,
        "runs_per_s_alone": alone_runs_per_s,
        "runs_per_s_beside_loop": beside[0] / WINDOW_S,
    }


def main() -> None:
    """Print one line per (threads, string representation)."""
    objects = sample_inputs(shipped_model(), BATCH)
    strs = {k: v.astype(np.str_) if v.dtype == object else v for k, v in objects.items()}
    for threads in [int(a) for a in sys.argv[1:]] or [1, 2]:
        for name, inputs in (("object str", objects), ("numpy str_", strs)):
            result = measure(threads, inputs)
            print(
                f"intra_op_threads={threads} {name:10}: loop at "
                f"{result['loop_speed_beside_scoring']:.2f} of its speed alone; scoring "
                f"{result['runs_per_s_beside_loop']:.0f} batches/s beside it, "
                f"{result['runs_per_s_alone']:.0f} alone"
            )


if __name__ == "__main__":
    main()
