"""Materialise: flagged rows become whole events; a row that does not decode whole is a reject."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from stream_scorer.errors import DecodeError
from stream_scorer.flag import FLAG
from stream_scorer.materialise import materialise_alerts
from stream_scorer.records import DecodedBatch, Event, SourceRecord

MakeRecord = Callable[..., SourceRecord]


def _batch(make_record: MakeRecord, n: int, broken: frozenset[int] = frozenset()) -> Any:
    records = [make_record(b"", offset=i) for i in range(n)]

    def event_at(row: int) -> Event:
        if row in broken:
            msg = "invalid UTF-8 in field 'merchant_name'"
            raise DecodeError(msg, records[row])
        return Event(records[row], {"transaction_id": f"t{row}"})

    return DecodedBatch(records, {}, [], event_at)


def test_flagged_rows_carry_event_score_decision_and_model(make_record: MakeRecord) -> None:
    """Each Scored names its source, whole event, score, decision, threshold, model and time."""
    batch = _batch(make_record, 4)

    alerts, rejected = materialise_alerts(
        batch, [1, 3], np.array([0.9, 0.75]), FLAG, 0.3, "m", "7", 123
    )

    assert rejected == []
    assert [a.source.offset for a in alerts] == [1, 3]
    assert [a.event for a in alerts] == [{"transaction_id": "t1"}, {"transaction_id": "t3"}]
    assert [a.score for a in alerts] == [0.9, 0.75]
    assert all(isinstance(a.score, float) for a in alerts)
    assert {
        (a.decision, a.threshold, a.model_name, a.model_version, a.scored_time_ms) for a in alerts
    } == {(FLAG, 0.3, "m", "7", 123)}


def test_row_that_does_not_decode_whole_is_a_decode_reject(make_record: MakeRecord) -> None:
    """A flagged row whose whole-record decode fails is rejected at stage decode, not alerted."""
    batch = _batch(make_record, 3, broken=frozenset({2}))

    alerts, rejected = materialise_alerts(
        batch, [0, 2], np.array([0.9, 0.95]), FLAG, 0.5, "m", "1", 0
    )

    assert [a.source.offset for a in alerts] == [0]
    (reject,) = rejected
    assert reject.source.offset == 2
    assert (reject.stage, reject.error_type) == ("decode", "DecodeError")
    assert "UTF-8" in reject.message
