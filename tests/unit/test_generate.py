"""Tests for the seeded synthetic transaction generator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastavro import parse_schema
from fastavro.validation import validate

from stream_scorer.devtools.generate import (
    CATEGORIES,
    CHANNELS,
    COUNTRY_CURRENCY,
    DEFAULT_EPOCH_MS,
    TransactionGenerator,
)

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "transaction.avsc"

# A generous sample: ~2000 fraud events at a 1 % rate keeps the statistics stable.
N = 200_000


@pytest.fixture(scope="module")
def schema() -> Any:
    """The parsed transaction schema."""
    return parse_schema(json.loads(SCHEMA_PATH.read_text(encoding="utf-8")))


@pytest.fixture(scope="module")
def sample() -> tuple[list[dict[str, Any]], np.ndarray]:
    """A large default-seed sample shared by the statistical tests."""
    return TransactionGenerator(seed=7).generate(N)


def test_same_seed_same_output() -> None:
    """Two generators with the same seed and call sequence return identical events and labels."""
    a, b = TransactionGenerator(seed=3), TransactionGenerator(seed=3)
    for n in (500, 1, 0, 2000):
        ev_a, y_a = a.generate(n)
        ev_b, y_b = b.generate(n)
        assert ev_a == ev_b
        assert np.array_equal(y_a, y_b)


def test_different_seed_different_output() -> None:
    """Different seeds give different events."""
    ev_a, _ = TransactionGenerator(seed=1).generate(100)
    ev_b, _ = TransactionGenerator(seed=2).generate(100)
    assert ev_a != ev_b
    assert {e["transaction_id"] for e in ev_a}.isdisjoint(e["transaction_id"] for e in ev_b)


def test_successive_calls_continue() -> None:
    """A second call draws new events and continues the clock from the fixed epoch."""
    gen = TransactionGenerator(seed=5)
    first, _ = gen.generate(10, step_ms=2.0)
    second, _ = gen.generate(10, step_ms=2.0)
    assert first[0]["event_time"] == DEFAULT_EPOCH_MS
    assert second[0]["event_time"] == DEFAULT_EPOCH_MS + 20
    assert first != second


def test_explicit_start_time_and_step() -> None:
    """Event times start at start_time_ms and advance by step_ms, rounded to the millisecond."""
    events, _ = TransactionGenerator().generate(5, start_time_ms=1_000, step_ms=2.5)
    assert [e["event_time"] for e in events] == [1000, 1002, 1005, 1008, 1010]


def test_events_validate_against_schema(schema: Any) -> None:
    """Every generated event validates against transaction.avsc."""
    events, _ = TransactionGenerator(seed=9).generate(5_000)
    for event in events:
        assert validate(event, schema, raise_errors=True)


def test_field_shapes(sample: tuple[list[dict[str, Any]], np.ndarray]) -> None:
    """Fields use the documented Python shapes and stay consistent with each other."""
    events, _ = sample
    for e in events[:20_000]:
        assert isinstance(e["event_time"], int)
        assert e["channel"] in CHANNELS
        assert e["merchant_category"] in CATEGORIES
        assert e["currency"] == COUNTRY_CURRENCY[e["country"]]
        assert e["card_present"] == (e["channel"] in ("POS", "ATM", "CONTACTLESS"))
        if e["channel"] == "ECOM":
            assert len(e["device_id"]) == 16
            int(e["device_id"], 16)
            assert all(0 <= int(o) <= 255 for o in e["ip_address"].split("."))
            assert len(e["ip_address"].split(".")) == 4
        else:
            assert e["device_id"] is None
            assert e["ip_address"] is None
            assert e["is_new_device"] is False
        assert e["amount"] > 0


def test_null_rates(sample: tuple[list[dict[str, Any]], np.ndarray]) -> None:
    """Distance is null about 10 % of the time and seconds_since_last_txn sometimes."""
    events, _ = sample
    dist_null = np.mean([e["distance_from_home_km"] is None for e in events])
    gap_null = np.mean([e["seconds_since_last_txn"] is None for e in events])
    assert 0.09 < dist_null < 0.11
    assert 0.005 < gap_null < 0.1


@pytest.mark.parametrize("rate", [0.01, 0.05])
def test_fraud_rate_near_requested(rate: float) -> None:
    """The share of fraud labels is close to the requested fraud_rate."""
    _, labels = TransactionGenerator(seed=4, fraud_rate=rate).generate(50_000)
    assert labels.dtype == np.bool_
    assert abs(labels.mean() - rate) < 4 * np.sqrt(rate * (1 - rate) / 50_000)


def test_fraud_differs_in_expected_directions(
    sample: tuple[list[dict[str, Any]], np.ndarray],
) -> None:
    """Fraud is larger, more often card-not-present, foreign, risky, fast and on new devices."""
    events, labels = sample

    def mean(values: list[float], mask: np.ndarray) -> float:
        return float(np.mean(np.asarray(values, dtype=np.float64)[mask]))

    fraud, legit = labels, ~labels
    eur = [e["currency"] == "EUR" for e in events]
    log_amount = [np.log(e["amount"]) for e in events]
    cnp = [not e["card_present"] for e in events]
    foreign = [e["country"] != e["home_country"] for e in events]
    risky = [e["merchant_category"] in ("electronics", "gift_cards", "crypto") for e in events]
    count = [e["txn_count_1h"] for e in events]
    new_device = [e["is_new_device"] for e in events]
    far = [(e["distance_from_home_km"] or 0.0) > 100 for e in events]
    fast = [
        e["seconds_since_last_txn"] is not None and e["seconds_since_last_txn"] < 600
        for e in events
    ]

    eur_mask = np.asarray(eur)
    assert mean(log_amount, fraud & eur_mask) > mean(log_amount, legit & eur_mask) + 0.5
    amounts = np.array([e["amount"] for e in events])
    assert amounts[fraud & eur_mask].mean() > amounts[legit & eur_mask].mean()
    for feature in (cnp, foreign, risky, new_device, far, fast):
        assert mean(feature, fraud) > 2 * mean(feature, legit)
    assert mean(count, fraud) > 2 * mean(count, legit)


def test_fraud_is_not_trivially_separable(
    sample: tuple[list[dict[str, Any]], np.ndarray],
) -> None:
    """Each signal also appears in legitimate traffic and some fraud shows none of the big ones."""
    events, labels = sample
    legit = [e for e, y in zip(events, labels, strict=True) if not y]
    fraud = [e for e, y in zip(events, labels, strict=True) if y]
    assert any(e["country"] != e["home_country"] for e in legit)
    assert any(e["merchant_category"] == "crypto" for e in legit)
    assert any(e["is_new_device"] for e in legit)
    assert any(e["txn_count_1h"] >= 3 for e in legit)
    plain = [
        e
        for e in fraud
        if e["card_present"]
        and e["country"] == e["home_country"]
        and e["merchant_category"] not in ("electronics", "gift_cards", "crypto")
    ]
    assert len(plain) > 0.05 * len(fraud)


def test_invalid_arguments() -> None:
    """Out-of-range arguments raise ValueError."""
    with pytest.raises(ValueError, match="fraud_rate"):
        TransactionGenerator(fraud_rate=1.5)
    with pytest.raises(ValueError, match="n_cards"):
        TransactionGenerator(n_cards=0)
    with pytest.raises(ValueError, match="n must be"):
        TransactionGenerator().generate(-1)
    with pytest.raises(ValueError, match="step_ms"):
        TransactionGenerator().generate(1, step_ms=-1.0)
