"""Fatal failures on the real broker: the scorer stops and never commits past what it could not
account for (a dead-letter topic it cannot write, a model that is down)."""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from prometheus_client import CollectorRegistry

from stream_scorer.app import build_runner
from stream_scorer.errors import ModelError
from stream_scorer.model_card import ModelCard
from stream_scorer.model_set import ModelSet

from .helpers import committed_offsets, produce_values, read_topic, scorer_settings
from .scorer_process import ScorerProcess, base_config, encode_events, make_events

#: Valid events before and after the one bad event.
GOOD_BEFORE, GOOD_AFTER = 1_000, 500
#: Not Avro in any wire format: this event must go to the dead-letter topic.
BAD_VALUE = b"\xde\xad\xbe\xef not an avro event"
#: Producer limit on the dead-letter topic: far below a dead letter with its headers.
TINY_MESSAGE_BYTES = "100"


@pytest.mark.parametrize(
    ("mode", "dead_letter"),
    [
        ("at-least-once", "too-small"),
        ("at-least-once", "missing"),
        ("exactly-once", "too-small"),
    ],
)
def test_unwritable_dead_letter_topic_stops_without_committing_past_it(
    tmp_path: Path, kafka_bootstrap: str, make_topic: Any, mode: str, dead_letter: str
) -> None:
    """When the bad event's dead letter cannot be delivered (topic missing with auto-create off,
    or max.message.bytes too small) the scorer exits 1 and its group's committed offset stays at
    or before the bad event, also after a restart."""
    if dead_letter == "missing":
        dlq = f"dlq-missing-{uuid.uuid4().hex[:12]}"  # never created; the broker won't create it
    else:
        dlq = make_topic("dlq", partitions=1, config={"max.message.bytes": TINY_MESSAGE_BYTES})
    topics = {
        "input": make_topic("in", partitions=1),
        "alerts": make_topic("alerts"),
        "dead_letter": dlq,
    }
    messages = encode_events(make_events(GOOD_BEFORE + GOOD_AFTER, seed=51))
    messages.insert(GOOD_BEFORE, (b"card-bad", BAD_VALUE))
    produce_values(kafka_bootstrap, topics["input"], messages)
    config = base_config(
        kafka_bootstrap,
        topics,
        batch={"max_size": 50},
        delivery={"mode": mode, "flush_timeout_s": 5.0},
    )
    group = config["kafka"]["group_id"]
    for attempt in range(2):  # the restart meets the same bad event and stops again
        scorer = ScorerProcess(tmp_path, config)
        try:
            assert scorer.wait(90) == 1, scorer.tail()
        finally:
            scorer.close()
        assert scorer.logged("fatal_error"), scorer.tail()
        committed = committed_offsets(kafka_bootstrap, group, topics["input"])[0]
        assert committed <= GOOD_BEFORE, f"attempt {attempt}: committed past the bad event"
        assert committed > 0, "the batches before the bad event were committed"


class DownScorer:
    """A Scorer whose every run fails, like an onnxruntime session that broke after warm-up."""

    def __init__(self, card: ModelCard) -> None:
        """Serve ``card``."""
        self.card = card

    def score(self, inputs: Mapping[str, NDArray[Any]]) -> NDArray[np.float64]:
        """Always fail."""
        del inputs
        msg = "model run failed: session is down (injected)"
        raise ModelError(msg)


def test_model_down_stops_without_committing_or_dead_lettering(
    kafka_bootstrap: str, make_topic: Any
) -> None:
    """Fault injection in the model only (real broker, real runner): when the model fails on
    every event and on its canary, the runner exits 1, commits nothing and dead-letters nothing."""
    topics = {
        "input": make_topic("in", partitions=2),
        "alerts": make_topic("alerts"),
        "dead_letter": make_topic("dlq"),
    }
    produce_values(kafka_bootstrap, topics["input"], encode_events(make_events(200, seed=61)))
    settings = scorer_settings(kafka_bootstrap, topics, None)
    runner = build_runner(settings, registry=CollectorRegistry())
    champion = runner.models.current.champion
    runner.models.replace(
        ModelSet(champion=dataclasses.replace(champion, scorer=DownScorer(champion.card)))
    )
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(runner.run()), daemon=True)
    thread.start()
    thread.join(90)
    assert not thread.is_alive(), "the runner did not stop"
    assert codes == [1]
    offsets = committed_offsets(kafka_bootstrap, settings.kafka.group_id, topics["input"])
    assert set(offsets.values()) == {-1001}, "nothing committed"
    assert read_topic(kafka_bootstrap, topics["dead_letter"]) == []
    assert read_topic(kafka_bootstrap, topics["alerts"]) == []
