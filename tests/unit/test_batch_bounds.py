"""check_batch_time_bounds: timeouts that would let a batch outlive its group session or its
transaction are refused at start-up, naming the keys to change."""

from __future__ import annotations

import pytest

from stream_scorer.app import COMMIT_ALLOWANCE_S, check_batch_time_bounds
from stream_scorer.delivery.publish import producer_config
from stream_scorer.errors import ConfigurationError

PLAIN = producer_config({}, {})
TRANSACTIONAL = producer_config({}, {}, transactional_id="scorer-0")


def test_defaults_fit() -> None:
    """The shipped defaults (30 s flush, 300 s poll interval, 60 s transactions) fit."""
    check_batch_time_bounds(30.0, 0.02, {}, PLAIN)
    check_batch_time_bounds(30.0, 0.02, {}, TRANSACTIONAL)


def test_batch_longer_than_max_poll_interval_is_refused() -> None:
    """wait + flush + commit allowance at or over max.poll.interval.ms is refused."""
    poll_ms = 60_000
    flush_s = poll_ms / 1000 - COMMIT_ALLOWANCE_S  # exactly at the limit
    consumer = {"max.poll.interval.ms": poll_ms}
    with pytest.raises(ConfigurationError, match=r"delivery\.flush_timeout_s.*max\.poll\.interval"):
        check_batch_time_bounds(flush_s, 0.0, consumer, PLAIN)
    check_batch_time_bounds(flush_s - 1, 0.0, consumer, PLAIN)


def test_flush_over_half_the_transaction_timeout_is_refused() -> None:
    """Exactly-once: the flush may take at most half of transaction.timeout.ms."""
    short = producer_config({}, {"transaction.timeout.ms": 20_000}, transactional_id="s-0")
    with pytest.raises(ConfigurationError, match=r"transaction\.timeout\.ms"):
        check_batch_time_bounds(10.5, 0.02, {}, short)
    check_batch_time_bounds(10.0, 0.02, {}, short)
    check_batch_time_bounds(10.5, 0.02, {}, PLAIN)  # not transactional: no such bound
