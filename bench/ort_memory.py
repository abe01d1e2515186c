"""Does onnxruntime's memory grow with each new batch size? (issue: bucket or pad if so.)

Scores the shipped model with 2,000 micro-batches of random sizes 1..2000 and prints the
process RSS after every 500. Run: ``.venv/bin/python bench/ort_memory.py``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import psutil

from stream_scorer.app import load_model, load_schema
from stream_scorer.devtools.generate import TransactionGenerator
from stream_scorer.featurize import ModelInputs
from stream_scorer.logging import configure_logging
from stream_scorer.model_set import LoadedModel
from stream_scorer.records import Event, SourceRecord
from stream_scorer.settings import load_settings

#: Largest batch tried; random sizes are drawn in [1, MAX_BATCH].
MAX_BATCH = 2000
#: Batches between RSS readings, and readings taken.
STEP, STEPS = 500, 4


def shipped_model(overrides: dict[str, Any] | None = None) -> LoadedModel:
    """The shipped model as the service loads it (config defaults plus ``overrides``)."""
    configure_logging("error")
    settings = load_settings(None, overrides or {}, environ={})
    return load_model(settings, load_schema(settings.schema_.reader, "schema.reader"))


def sample_inputs(model: LoadedModel, rows: int) -> ModelInputs:
    """Model inputs for ``rows`` synthetic transactions (seeded)."""
    generated, _ = TransactionGenerator(seed=3).generate(rows)
    events = [Event(SourceRecord("t", 0, i, None, None), e) for i, e in enumerate(generated)]
    inputs, _, _ = model.features.build_inputs(events)
    return inputs


def main() -> None:
    """Print RSS before and after runs of randomly sized batches."""
    model = shipped_model()
    inputs = sample_inputs(model, MAX_BATCH)
    process = psutil.Process()
    rng = np.random.default_rng(0)
    print(f"start: {process.memory_info().rss / 2**20:.1f} MiB")
    for step in range(1, STEPS + 1):
        for _ in range(STEP):
            n = int(rng.integers(1, MAX_BATCH + 1))
            model.scorer.score({name: array[:n] for name, array in inputs.items()})
        print(f"after {step * STEP} batches: {process.memory_info().rss / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
