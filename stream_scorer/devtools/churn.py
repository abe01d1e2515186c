"""Seeded synthetic telecom usage snapshots: events that conform to ``schemas/churn_event.avsc``.

The second shipped example's data (``models/churn/1``): :class:`ChurnGenerator` feeds its
training script and its tests, the way :class:`~stream_scorer.devtools.generate.
TransactionGenerator` feeds the fraud example. Everything is drawn from one
``numpy.random.Generator(PCG64(seed))``: the same seed and the same sequence of
:meth:`ChurnGenerator.generate` calls give identical events and labels.

How the data looks:

* A fixed population of customers, each with a plan, a contract term (unknown, i.e. null, for
  some), an autopay flag, a join month and a typical data usage. Each event is one monthly
  snapshot of a customer drawn at random.
* The label is "churns within the next 30 days", drawn from a logistic model of the snapshot:
  month-to-month or unknown contracts, short tenure, high charges, support calls, no autopay,
  a recent plan change and low usage on an expensive plan all raise the odds. The classes
  overlap, so a gradient boosted model reaches a holdout AUC around 0.8, not 1.0.
* Every nullable field is null now and then: ``contract`` (unknown term), ``data_usage_gb``
  (a late usage feed), ``last_plan_change_days`` (never changed plan). The array and map
  fields (``dropped_call_minutes``, ``device_attrs``) vary in length and are not model inputs.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
from numpy.random import PCG64, Generator
from numpy.typing import NDArray

__all__ = ["CONTRACTS", "PLANS", "ChurnGenerator"]

#: 2026-01-01T00:00:00Z in epoch milliseconds: the clock's start when no start time is given.
DEFAULT_EPOCH_MS: Final = 1_767_225_600_000

#: The Avro enum ``Plan``'s symbols, in schema order.
PLANS: Final = ("PREPAID", "BASIC", "STANDARD", "PREMIUM", "UNLIMITED")
#: How often customers hold each plan.
_PLAN_WEIGHTS: Final = np.array([0.18, 0.27, 0.30, 0.15, 0.10])
#: Typical monthly charge per plan, in EUR.
_PLAN_CHARGE: Final = np.array([15.0, 30.0, 50.0, 80.0, 110.0])
#: Typical data allowance use per plan, in GB.
_PLAN_DATA_GB: Final = np.array([2.0, 5.0, 12.0, 30.0, 60.0])
#: Churn log-odds per plan (prepaid customers leave easily; unlimited ones rarely).
_PLAN_LOGIT: Final = np.array([0.6, 0.1, 0.0, -0.2, -0.5])

#: The Avro enum ``Contract``'s symbols, in schema order.
CONTRACTS: Final = ("MONTH_TO_MONTH", "ONE_YEAR", "TWO_YEAR")
#: Contract shares; the remainder up to 1 is "unknown" (null).
_CONTRACT_WEIGHTS: Final = np.array([0.45, 0.25, 0.18])
#: Churn log-odds per contract, then for an unknown contract (index 3).
_CONTRACT_LOGIT: Final = np.array([1.3, -0.3, -1.2, 0.7])

#: Customers in the population; events are snapshots of customers drawn from it.
N_CUSTOMERS: Final = 20_000
#: Intercept of the churn logit, set once so that about 7 % of snapshots churn.
_BASE_LOGIT: Final = -2.4
#: Share of snapshots whose usage feed was late (``data_usage_gb`` null).
LATE_USAGE_RATE: Final = 0.08
#: Share of customers who never changed plan (``last_plan_change_days`` null).
NEVER_CHANGED_RATE: Final = 0.35
#: Mean gap between consecutive snapshots in event time, in ms.
MEAN_GAP_MS: Final = 50.0
#: Device attribute values drawn for the ``device_attrs`` map.
_OS: Final = ("android", "ios", "kaios")
_MODELS: Final = ("pixel-9", "galaxy-s25", "iphone-17", "nokia-2780", "fairphone-6")


class ChurnGenerator:
    """Draws usage snapshots of a seeded customer population, with churn labels."""

    def __init__(self, seed: int = 7, start_ms: int = DEFAULT_EPOCH_MS) -> None:
        """Draw the customer population.

        Args:
            seed: Seed of the one random generator every draw comes from.
            start_ms: Event time of the first snapshot, in epoch ms.
        """
        self._seed = seed
        self._rng = Generator(PCG64(seed))
        self._clock_ms = start_ms
        self._count = 0
        rng = self._rng
        n = N_CUSTOMERS
        self._plan = rng.choice(len(PLANS), size=n, p=_PLAN_WEIGHTS)
        contract_p = np.append(_CONTRACT_WEIGHTS, 1.0 - _CONTRACT_WEIGHTS.sum())
        #: Contract index; 3 stands for unknown (null).
        self._contract = rng.choice(4, size=n, p=contract_p)
        self._autopay = rng.random(n) < np.where(self._contract == 0, 0.45, 0.75)
        self._tenure0 = np.minimum(rng.gamma(1.6, 16.0, size=n), 120).astype(np.int64)
        self._usage = _PLAN_DATA_GB[self._plan] * rng.lognormal(0.0, 0.5, size=n)
        self._never_changed = rng.random(n) < NEVER_CHANGED_RATE

    def generate(self, n: int) -> tuple[list[dict[str, Any]], NDArray[np.bool_]]:
        """Draw ``n`` snapshots and whether each customer churns within 30 days.

        Args:
            n: How many events.

        Returns:
            The events (dicts matching ``schemas/churn_event.avsc``, ``event_time`` as epoch
            ms) and one churn label per event.
        """
        rng = self._rng
        who = rng.integers(0, N_CUSTOMERS, size=n)
        plan = self._plan[who]
        contract = self._contract[who]
        autopay = self._autopay[who]
        tenure = self._tenure0[who] + rng.integers(0, 12, size=n)
        charges = np.round(_PLAN_CHARGE[plan] * rng.lognormal(0.0, 0.18, size=n), 2)
        usage = (self._usage[who] * rng.lognormal(0.0, 0.3, size=n)).astype(np.float32)
        usage_null = rng.random(n) < LATE_USAGE_RATE
        calls = rng.poisson(np.where(contract == 0, 0.9, 0.5), size=n)
        change_days = np.minimum(rng.exponential(200.0, size=n), tenure * 30).astype(np.int64)
        change_null = self._never_changed[who]
        recent_change = ~change_null & (change_days < 30)
        low_use = usage < 0.3 * _PLAN_DATA_GB[plan]

        logit = (
            _BASE_LOGIT
            + _PLAN_LOGIT[plan]
            + _CONTRACT_LOGIT[contract]
            - 0.9 * np.log1p(tenure / 6.0)
            + 0.012 * (charges - _PLAN_CHARGE[plan])
            + 0.55 * calls
            - 0.6 * autopay
            + 0.9 * recent_change
            + np.where(low_use & (plan >= 3), 1.0, 0.0)
        )
        churn = rng.random(n) < 1.0 / (1.0 + np.exp(-logit))

        n_dropped = rng.poisson(0.7, size=n)
        dropped = rng.integers(0, 60, size=int(n_dropped.sum()))
        has_attrs = rng.random(n) < 0.8
        os_idx = rng.integers(0, len(_OS), size=n)
        model_idx = rng.integers(0, len(_MODELS), size=n)
        gaps = rng.exponential(MEAN_GAP_MS, size=n).astype(np.int64)
        times = self._clock_ms + np.cumsum(gaps)
        if n:
            self._clock_ms = int(times[-1])

        events: list[dict[str, Any]] = []
        cursor = 0
        for i in range(n):
            k = int(n_dropped[i])
            events.append(
                {
                    "event_id": f"usage-{self._seed}-{self._count + i:09d}",
                    "customer_id": f"cust-{int(who[i]):06d}",
                    "plan": PLANS[plan[i]],
                    "contract": None if contract[i] == 3 else CONTRACTS[contract[i]],
                    "tenure_months": int(tenure[i]),
                    "monthly_charges": float(charges[i]),
                    "data_usage_gb": None if usage_null[i] else float(usage[i]),
                    "support_calls_30d": int(calls[i]),
                    "has_autopay": bool(autopay[i]),
                    "last_plan_change_days": None if change_null[i] else int(change_days[i]),
                    "dropped_call_minutes": dropped[cursor : cursor + k].tolist(),
                    "device_attrs": (
                        {"os": _OS[os_idx[i]], "model": _MODELS[model_idx[i]]}
                        if has_attrs[i]
                        else {}
                    ),
                    "event_time": int(times[i]),
                }
            )
            cursor += k
        self._count += n
        return events, churn
