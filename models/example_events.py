"""Seeded synthetic events of the recommender and expected-loss examples (numpy only).

The training scripts (``models/train_recommender.py``, ``models/train_expected_loss.py``) train
on these, and the tests produce them, so the tests need neither scikit-learn nor skl2onnx.
Events are dicts as fastavro writes them for ``schemas/product_view.avsc`` and
``schemas/claim_event.avsc``.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

__all__ = ["CATEGORIES", "CLAIM_TYPES", "DEVICES", "REGIONS", "claims", "product_views"]

#: Categories of the ProductView enum; the recommender's classes, in output column order.
CATEGORIES: Final = ("ELECTRONICS", "BOOKS", "FASHION", "HOME", "SPORTS", "TOYS")
DEVICES: Final = ("MOBILE", "DESKTOP", "TABLET")
#: A fixed 2026-05-01T00:00:00Z, so event times do not depend on when a script runs.
VIEWS_START_MS: Final = 1_777_593_600_000
CLAIM_TYPES: Final = ("AUTO", "HOME", "TRAVEL", "HEALTH")
REGIONS: Final = ("north", "south", "east", "west", "capital")
#: A fixed 2026-06-01T00:00:00Z.
CLAIMS_START_MS: Final = 1_780_272_000_000


def product_views(n: int, seed: int) -> tuple[list[dict[str, Any]], NDArray[np.int64]]:
    """``n`` product views as fastavro writes them, and the category each shopper buys next.

    Args:
        n: How many views.
        seed: Seed of the generator.

    Returns:
        The events and the next category's index in :data:`CATEGORIES`.
    """
    rng = np.random.default_rng(seed)
    c = len(CATEGORIES)
    viewed = rng.integers(0, c, n)
    device = rng.choice(len(DEVICES), n, p=[0.6, 0.3, 0.1])
    price = np.round(rng.lognormal(3.5, 0.8, n), 2)
    views = rng.poisson(6, n) + 1
    hour = rng.integers(0, 24, n)
    member = rng.random(n) < 0.35
    # Shoppers mostly buy what they look at; long sessions drift to neighbouring categories,
    # evening members buy books and toys, expensive views pull towards electronics and home.
    logits = np.zeros((n, c))
    logits[np.arange(n), viewed] += 2.0
    logits[np.arange(n), (viewed + 1) % c] += 0.08 * views
    logits[:, 0] += 0.5 * (np.log(price) - 3.5)
    logits[:, 3] += 0.3 * (np.log(price) - 3.5)
    logits[:, 1] += np.where(member & (hour >= 18), 1.0, 0.0)
    logits[:, 5] += np.where(member & (hour >= 18), 0.6, 0.0)
    logits[:, 2] += np.where(device == 0, 0.4, 0.0)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    nxt = (probs.cumsum(axis=1) > rng.random(n)[:, None]).argmax(axis=1)
    events = [
        {
            "event_id": f"view-{seed}-{i:07d}",
            "user_id": f"user-{int(rng_user):05d}",
            "category": CATEGORIES[int(viewed[i])],
            "price": float(price[i]),
            "device": DEVICES[int(device[i])],
            "session_views": int(views[i]),
            "hour_of_day": int(hour[i]),
            "is_member": bool(member[i]),
            "event_time": VIEWS_START_MS + 1000 * i,
        }
        for i, rng_user in enumerate(rng.integers(0, 5000, n))
    ]
    return events, nxt.astype(np.int64)


def claims(n: int, seed: int) -> tuple[list[dict[str, Any]], NDArray[np.float64]]:
    """``n`` claims as fastavro writes them, and each claim's eventual cost in EUR.

    Args:
        n: How many claims.
        seed: Seed of the generator.

    Returns:
        The events and their costs.
    """
    rng = np.random.default_rng(seed)
    kind = rng.choice(len(CLAIM_TYPES), n, p=[0.45, 0.3, 0.15, 0.1])
    # Declared amounts: log-normal around 1,800 EUR, scaled per line (home claims are larger).
    claimed = np.round(rng.lognormal(7.5, 0.9, n) * np.array([1.0, 2.0, 0.4, 1.3])[kind], 2)
    age = rng.integers(0, 240, n)
    prior = rng.poisson(0.6, n)
    police = rng.random(n) < np.array([0.4, 0.2, 0.05, 0.01])[kind]
    region = rng.integers(0, len(REGIONS), n)
    unknown = rng.random(n) < 0.1
    # Cost: a share of the declared amount, higher with a police report (serious incidents),
    # lower for young policies (small claims), more for repeat claimants and the capital.
    log_share = (
        np.log(0.7)
        + 0.35 * police
        + 0.12 * np.minimum(prior, 4)
        - 0.2 * (age < 12)
        + 0.25 * (region == 4) * ~unknown
        + rng.normal(0, 0.35, n)
    )
    cost = claimed * np.exp(log_share)
    events = [
        {
            "claim_id": f"claim-{seed}-{i:07d}",
            "policy_id": f"pol-{int(p):06d}",
            "claim_type": CLAIM_TYPES[int(kind[i])],
            "claimed_amount": float(claimed[i]),
            "policy_age_months": int(age[i]),
            "prior_claims": int(prior[i]),
            "has_police_report": bool(police[i]),
            "region": None if unknown[i] else REGIONS[int(region[i])],
            "event_time": CLAIMS_START_MS + 1000 * i,
        }
        for i, p in enumerate(rng.integers(0, 100_000, n))
    ]
    return events, cost.astype(np.float64)
