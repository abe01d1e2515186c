"""Seeded synthetic card transactions: events that conform to ``schemas/transaction.avsc``.

One :class:`TransactionGenerator` feeds the demo, ``stream-scorer produce``, the benchmarks and
model training, so every one of them sees the same kind of traffic. Everything is drawn from one
``numpy.random.Generator(PCG64(seed))``: the same seed and the same sequence of
:meth:`TransactionGenerator.generate` calls give byte-identical events and labels.

The draws are vectorised per column; the event dicts are built only at the end, which keeps the
generator well above 100k events/s.

How the data looks:

* Each card has a home country (and so a home currency), a typical spend and an account; a few
  accounts hold two cards. A card's known devices are fixed per card.
* Legitimate traffic is mostly domestic grocery, restaurant, fuel and pharmacy spend at the point
  of sale, with some e-commerce, ATM withdrawals and the occasional trip abroad.
* Fraud shows a *random subset* of the usual signals, each with its own probability: a large
  amount (or a small card-testing amount), e-commerce or mail/telephone order, a risky category
  (electronics, gift cards, crypto), a foreign merchant, a large distance from home, a burst of
  authorisations (high ``txn_count_1h``, short ``seconds_since_last_txn``) and a new device.
  Legitimate traffic shows each of them now and then too, so the classes overlap: a gradient
  boosted model reaches a holdout AUC in the mid 0.9s, not 1.0.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
from numpy.random import PCG64, Generator
from numpy.typing import NDArray

__all__ = [
    "CATEGORIES",
    "CHANNELS",
    "COUNTRY_CURRENCY",
    "DEFAULT_EPOCH_MS",
    "TransactionGenerator",
]

# 2026-01-01T00:00:00Z in epoch milliseconds: the clock's start when no start time is given.
DEFAULT_EPOCH_MS: Final = 1_767_225_600_000

# The Avro enum's symbols, in schema order; channel codes below index this tuple.
CHANNELS: Final = ("POS", "ECOM", "ATM", "CONTACTLESS", "MOTO")

# Channels where the physical card is read; ECOM and MOTO are card-not-present.
_CARD_PRESENT_CHANNELS: Final = np.array([True, False, True, True, False])

# Index of the ECOM channel: the only channel that carries a device id and an IP address.
_ECOM: Final = 1

# Merchant country -> ISO 4217 currency of the transaction.
COUNTRY_CURRENCY: Final = {
    "US": "USD", "GB": "GBP", "DE": "EUR", "FR": "EUR", "NL": "EUR", "ES": "EUR", "IT": "EUR",
    "IE": "EUR", "BE": "EUR", "PT": "EUR", "PL": "PLN", "CH": "CHF", "CA": "CAD", "AU": "AUD",
    "SE": "SEK", "SG": "SGD", "AE": "AED", "HK": "HKD", "RO": "RON", "BR": "BRL", "MX": "MXN",
    "TH": "THB",
}  # fmt: skip

# Units of each currency per EUR (rounded): amounts are drawn in EUR, then converted.
_FX_PER_EUR: Final = {
    "USD": 1.08, "GBP": 0.85, "EUR": 1.0, "PLN": 4.3, "CHF": 0.95, "CAD": 1.47, "AUD": 1.65,
    "SEK": 11.2, "SGD": 1.45, "AED": 3.97, "HKD": 8.4, "RON": 4.97, "BRL": 5.4, "MXN": 18.5,
    "THB": 38.0,
}  # fmt: skip

# Countries in the order the weight tables below use.
_COUNTRIES: Final = tuple(COUNTRY_CURRENCY)

# Where cards are issued: weight per country in _COUNTRIES (0 = never a home country).
_HOME_WEIGHTS: Final = np.array(
    [20, 12, 14, 10, 6, 7, 6, 3, 3, 2, 4, 2, 4, 3, 2, 0, 0, 0, 0, 0, 0, 0], dtype=np.float64
)

# Where cardholders go abroad (legitimate): popular destinations.
_TRAVEL_WEIGHTS: Final = np.array(
    [12, 10, 8, 12, 5, 12, 10, 3, 3, 5, 2, 4, 3, 2, 2, 2, 3, 2, 1, 1, 3, 3], dtype=np.float64
)

# Where foreign fraud is cashed out: overlaps travel, but leans to a few countries.
_FRAUD_ABROAD_WEIGHTS: Final = np.array(
    [8, 5, 3, 3, 2, 2, 2, 1, 1, 1, 3, 1, 2, 1, 1, 6, 7, 8, 9, 8, 6, 5], dtype=np.float64
)

# Merchant categories: (name, ISO 18245 MCC, amount multiple of the card's typical spend).
_CATEGORY_TABLE: Final = (
    ("grocery", 5411, 0.8),
    ("fuel", 5541, 1.0),
    ("restaurants", 5812, 0.7),
    ("travel", 4511, 8.0),
    ("hotels", 7011, 5.0),
    ("electronics", 5732, 5.0),
    ("gift_cards", 5947, 2.0),
    ("crypto", 6051, 4.0),
    ("fashion", 5651, 1.8),
    ("pharmacy", 5912, 0.5),
    ("entertainment", 7832, 0.6),
    ("digital_goods", 5815, 0.3),
    ("transport", 4111, 0.3),
    ("cash", 6011, 2.5),
)

# Category names in table order.
CATEGORIES: Final = tuple(row[0] for row in _CATEGORY_TABLE)

# MCC per category, as an array for vectorised lookup.
_CATEGORY_MCC: Final = np.array([row[1] for row in _CATEGORY_TABLE], dtype=np.int64)

# Amount multiple per category, as an array.
_CATEGORY_AMOUNT: Final = np.array([row[2] for row in _CATEGORY_TABLE], dtype=np.float64)

# How often legitimate traffic falls in each category (relative weights, table order).
_LEGIT_CATEGORY_WEIGHTS: Final = np.array(
    [22, 9, 15, 2.5, 1.5, 4, 1.2, 0.5, 8, 6, 6, 5, 4, 8], dtype=np.float64
)

# The same for fraud that follows the "risky category" signal.
_FRAUD_CATEGORY_WEIGHTS: Final = np.array(
    [3, 2, 2, 8, 3, 22, 18, 12, 8, 1, 3, 8, 1, 9], dtype=np.float64
)

# Channel mix per category for legitimate traffic; columns follow CHANNELS.
_LEGIT_CHANNEL_MIX: Final = np.array(
    [
        [45, 8, 0, 47, 0],  # grocery
        [50, 2, 0, 48, 0],  # fuel
        [40, 6, 0, 54, 0],  # restaurants
        [12, 78, 0, 2, 8],  # travel
        [40, 45, 0, 5, 10],  # hotels
        [35, 50, 0, 15, 0.5],  # electronics
        [40, 50, 0, 10, 0.5],  # gift_cards
        [0, 100, 0, 0, 0],  # crypto
        [35, 35, 0, 30, 0.5],  # fashion
        [45, 5, 0, 50, 0],  # pharmacy
        [20, 50, 0, 30, 0.5],  # entertainment
        [0, 100, 0, 0, 0],  # digital_goods
        [10, 20, 0, 70, 0],  # transport
        [0, 0, 100, 0, 0],  # cash
    ],
    dtype=np.float64,
)

# Fraud that follows the "card not present" signal reweights the mix by these factors
# (allowing MOTO everywhere but cash); the rest uses the legitimate mix.
_FRAUD_CHANNEL_BOOST: Final = np.array([0.5, 5.0, 1.0, 0.2, 6.0], dtype=np.float64)

# Floor added to MOTO before boosting, so phone-order fraud can appear in most categories.
_FRAUD_MOTO_FLOOR: Final = 3.0

# Merchants per category; their names are "<Brand> <category word> <number>".
_MERCHANTS_PER_CATEGORY: Final = 40

# Brand words that make up merchant names.
_BRANDS: Final = (
    "Acme", "Northwind", "Blue Harbor", "Globex", "Initech", "Umbrella", "Vandelay", "Stark",
    "Wayne", "Hooli", "Soylent", "Tyrell", "Cyberdyne", "Oceanic", "Pied Piper", "Wonka",
)  # fmt: skip

# Share of events with no distance (address unknown): the field is null.
_DISTANCE_NULL_RATE: Final = 0.10

# Share of events that are a card's first authorisation: seconds_since_last_txn is null.
_FIRST_TXN_RATE: Final = 0.03

# Share of events that trigger each fraud signal, given the event is fraud.
_P_FRAUD_AMOUNT_HIGH: Final = 0.60  # a large purchase or cash-out
_P_FRAUD_AMOUNT_TEST: Final = 0.10  # a small card-testing amount (exclusive with the above)
_P_FRAUD_CATEGORY: Final = 0.60  # a category that resells easily
_P_FRAUD_CNP: Final = 0.60  # pushed to card-not-present channels
_P_FRAUD_ABROAD: Final = 0.45  # a foreign merchant
_P_FRAUD_FAR: Final = 0.45  # far from home though domestic
_P_FRAUD_BURST: Final = 0.55  # part of a burst of authorisations
_P_FRAUD_NEW_DEVICE: Final = 0.60  # an unseen device (ECOM only)

# The same behaviours in legitimate traffic: trips abroad, new phones, busy hours.
_P_LEGIT_ABROAD: Final = 0.04  # a purchase abroad
_P_LEGIT_FAR: Final = 0.05  # a domestic purchase far from home (a trip)
_P_LEGIT_BURST: Final = 0.03  # several purchases in an hour
_P_LEGIT_NEW_DEVICE: Final = 0.07  # a new phone or browser (ECOM only)

# Categories (travel, hotels) where legitimate spend is abroad more often, and by how much more.
_TRIP_CATEGORIES: Final = (CATEGORIES.index("travel"), CATEGORIES.index("hotels"))
_P_LEGIT_TRIP_EXTRA_ABROAD: Final = 0.25

# Typical spend per card, in EUR: lognormal with this median and log-sd.
_CARD_SPEND_MEDIAN_EUR: Final = 35.0
_CARD_SPEND_SIGMA: Final = 0.5

# Per-event noise around the card's typical spend (log-sd), legitimate.
_AMOUNT_SIGMA: Final = 0.7

# Fraud "high amount": extra log-mean and log-sd on top of the category's typical amount.
_FRAUD_HIGH_LOG_SHIFT: Final = 1.3
_FRAUD_HIGH_SIGMA: Final = 0.8

# Card-testing amounts in EUR: uniform in this range.
_TEST_AMOUNT_EUR: Final = (0.5, 5.0)

# Smallest amount in EUR: no zero or negative authorisations.
_MIN_AMOUNT_EUR: Final = 0.5

# Distance in km: (median, log-sd) near home, far but domestic, and abroad.
_DIST_NEAR: Final = (6.0, 1.0)
_DIST_FAR: Final = (250.0, 0.9)
_DIST_ABROAD: Final = (1500.0, 0.8)

# Seconds since the card's previous authorisation: (median, log-sd), normal and in a burst.
_GAP_NORMAL_S: Final = (40_000.0, 1.4)
_GAP_BURST_S: Final = (90.0, 1.0)

# Authorisations in the previous hour: Poisson mean, normal and in a burst (burst adds 1).
_COUNT_NORMAL_MEAN: Final = 0.25
_COUNT_BURST_MEAN: Final = 3.5

# Known devices per card; a legitimate ECOM event uses one of them unless the device is new.
_DEVICES_PER_CARD: Final = 3

# Share of accounts that hold a second card (the rest hold one).
_SHARED_ACCOUNT_RATE: Final = 0.15


def _choice_rows(rng: Generator, cdf: NDArray[np.float64]) -> NDArray[np.intp]:
    """Draw one index per row from per-row cumulative distributions.

    Args:
        rng: The random generator.
        cdf: ``(n, k)`` cumulative probabilities; each row ends at 1.

    Returns:
        ``(n,)`` indices in ``[0, k)``.
    """
    u = rng.random(int(cdf.shape[0]))
    idx = (u[:, None] >= cdf).sum(axis=1)
    return np.asarray(np.minimum(idx, int(cdf.shape[1]) - 1), dtype=np.intp)


def _cdf(weights: NDArray[np.float64]) -> NDArray[np.float64]:
    """Turn non-negative weights (last axis) into cumulative probabilities ending at 1.

    Args:
        weights: Relative weights along the last axis.

    Returns:
        The cumulative distribution, same shape.
    """
    cum = np.cumsum(weights, axis=-1)
    return np.asarray(cum / cum[..., -1:], dtype=np.float64)


def _lognormal(
    rng: Generator, median: float | NDArray[np.float64], sigma: float, n: int
) -> NDArray[np.float64]:
    """Draw lognormal values given the median and the log standard deviation.

    Args:
        rng: The random generator.
        median: Median (scalar or per row).
        sigma: Standard deviation of the log.
        n: Number of values.

    Returns:
        ``(n,)`` positive floats.
    """
    return np.asarray(median * np.exp(sigma * rng.standard_normal(n)), dtype=np.float64)


def _hex_tokens(rng: Generator, n: int, n_bytes: int) -> list[str]:
    """Draw ``n`` random lowercase hex strings of ``2 * n_bytes`` characters.

    Args:
        rng: The random generator.
        n: Number of tokens.
        n_bytes: Random bytes per token.

    Returns:
        The tokens.
    """
    text = rng.bytes(n * n_bytes).hex()
    width = 2 * n_bytes
    return [text[i : i + width] for i in range(0, n * width, width)]


class TransactionGenerator:
    """Deterministic synthetic card authorisations with ground-truth fraud labels.

    Args:
        seed: Seed of the ``PCG64`` bit generator; the only source of randomness.
        fraud_rate: Expected share of fraudulent events, in ``[0, 1]``.
        n_cards: Number of distinct cards the events are spread over.

    Raises:
        ValueError: If ``fraud_rate`` is outside ``[0, 1]`` or ``n_cards`` is not positive.

    Example:
        >>> events, labels = TransactionGenerator(seed=1).generate(3)
        >>> len(events), labels.dtype
        (3, dtype('bool'))
    """

    def __init__(self, seed: int = 7, fraud_rate: float = 0.01, n_cards: int = 20_000) -> None:
        if not 0.0 <= fraud_rate <= 1.0:
            msg = f"fraud_rate must be in [0, 1], got {fraud_rate}"
            raise ValueError(msg)
        if n_cards < 1:
            msg = f"n_cards must be positive, got {n_cards}"
            raise ValueError(msg)
        self.seed = seed
        self.fraud_rate = fraud_rate
        self.n_cards = n_cards
        self._rng = Generator(PCG64(seed))
        self._clock_ms: float = float(DEFAULT_EPOCH_MS)
        self._build_population()

    def _build_population(self) -> None:
        """Draw the fixed cards, accounts, devices and merchants."""
        rng = self._rng
        n = self.n_cards
        home_cdf = np.broadcast_to(_cdf(_HOME_WEIGHTS), (n, len(_COUNTRIES)))
        self._card_home = _choice_rows(rng, home_cdf)
        self._card_spend_eur = _lognormal(rng, _CARD_SPEND_MEDIAN_EUR, _CARD_SPEND_SIGMA, n)
        card_tokens = _hex_tokens(rng, n, 8)
        self._card_ids = np.array([f"card-{t}" for t in card_tokens], dtype=object)
        n_accounts = max(1, round(n / (1.0 + _SHARED_ACCOUNT_RATE)))
        account_tokens = _hex_tokens(rng, n_accounts, 8)
        account_of_card = np.concatenate(
            [np.arange(n_accounts), rng.integers(0, n_accounts, max(0, n - n_accounts))]
        )[:n]
        self._account_ids = np.array(
            [f"acct-{account_tokens[i]}" for i in account_of_card.tolist()], dtype=object
        )
        self._card_devices = np.array(
            _hex_tokens(rng, n * _DEVICES_PER_CARD, 8), dtype=object
        ).reshape(n, _DEVICES_PER_CARD)

        n_cat = len(CATEGORIES)
        merchant_ids = 10_000_000 + rng.choice(
            90_000_000, size=n_cat * _MERCHANTS_PER_CATEGORY, replace=False
        )
        brands = rng.integers(0, len(_BRANDS), n_cat * _MERCHANTS_PER_CATEGORY)
        ids: list[str] = []
        names: list[str] = []
        for c, category in enumerate(CATEGORIES):
            word = category.replace("_", " ").title()
            for m in range(_MERCHANTS_PER_CATEGORY):
                k = c * _MERCHANTS_PER_CATEGORY + m
                ids.append(f"M{merchant_ids[k]}")
                names.append(f"{_BRANDS[brands[k]]} {word} {m + 1:02d}")
        self._merchant_ids = np.array(ids, dtype=object)
        self._merchant_names = np.array(names, dtype=object)

        self._country_codes = np.array(_COUNTRIES, dtype=object)
        self._country_currency = np.array([COUNTRY_CURRENCY[c] for c in _COUNTRIES], dtype=object)
        self._country_fx = np.array([_FX_PER_EUR[COUNTRY_CURRENCY[c]] for c in _COUNTRIES])
        legit_mix = _LEGIT_CHANNEL_MIX
        fraud_mix = legit_mix.copy()
        fraud_mix[:, 4] = np.where(legit_mix[:, 2] > 0, 0.0, legit_mix[:, 4] + _FRAUD_MOTO_FLOOR)
        fraud_mix *= _FRAUD_CHANNEL_BOOST
        self._legit_channel_cdf = _cdf(legit_mix)
        self._fraud_channel_cdf = _cdf(fraud_mix)

    def generate(
        self, n: int, start_time_ms: int | None = None, step_ms: float = 1.0
    ) -> tuple[list[dict[str, Any]], NDArray[np.bool_]]:
        """Generate ``n`` events conforming to ``transaction.avsc`` and their fraud labels.

        Events follow the Avro schema's Python shapes: ``event_time`` is an int of epoch
        milliseconds, ``channel`` the enum symbol string, and nullable fields are ``None`` or a
        value. Event times are ``start + i * step_ms``, rounded to the millisecond.

        Args:
            n: Number of events, zero or more.
            start_time_ms: Epoch milliseconds of the first event. ``None`` continues the
                generator's clock, which starts at 2026-01-01T00:00:00Z (:data:`DEFAULT_EPOCH_MS`)
                and advances by ``n * step_ms`` per call, so output stays reproducible.
            step_ms: Milliseconds between consecutive events (non-negative).

        Returns:
            The events and a ``(n,)`` boolean array, True where the event is fraud.

        Raises:
            ValueError: If ``n`` or ``step_ms`` is negative.
        """
        if n < 0:
            msg = f"n must be non-negative, got {n}"
            raise ValueError(msg)
        if step_ms < 0:
            msg = f"step_ms must be non-negative, got {step_ms}"
            raise ValueError(msg)
        start = float(start_time_ms) if start_time_ms is not None else self._clock_ms
        self._clock_ms = start + n * step_ms
        if n == 0:
            return [], np.zeros(0, dtype=np.bool_)
        columns, labels = self._draw_columns(n)
        columns["event_time"] = np.round(start + np.arange(n) * step_ms).astype(np.int64).tolist()
        keys = list(columns)
        events = [dict(zip(keys, row, strict=True)) for row in zip(*columns.values(), strict=True)]
        return events, labels

    def _draw_columns(self, n: int) -> tuple[dict[str, list[Any]], NDArray[np.bool_]]:
        """Draw every column except ``event_time``, in schema order.

        Args:
            n: Number of events.

        Returns:
            Column name to Python values, and the fraud labels.
        """
        rng = self._rng
        is_fraud = rng.random(n) < self.fraud_rate

        card = rng.integers(0, self.n_cards, n)
        home = self._card_home[card]

        # Category: risky-category fraud draws from the fraud weights, the rest from legit ones.
        risky = self._signal(is_fraud, _P_FRAUD_CATEGORY, 0.0)
        cat_cdf = np.where(
            risky[:, None], _cdf(_FRAUD_CATEGORY_WEIGHTS), _cdf(_LEGIT_CATEGORY_WEIGHTS)
        )
        category = _choice_rows(rng, cat_cdf)

        # Channel given category; card-not-present fraud boosts ECOM and MOTO.
        cnp = self._signal(is_fraud, _P_FRAUD_CNP, 0.0)
        ch_cdf = np.where(
            cnp[:, None], self._fraud_channel_cdf[category], self._legit_channel_cdf[category]
        )
        channel = _choice_rows(rng, ch_cdf)
        card_present = _CARD_PRESENT_CHANNELS[channel]

        # Country: domestic unless abroad; travel and hotels go abroad more often.
        trip_boost = np.isin(category, _TRIP_CATEGORIES) * _P_LEGIT_TRIP_EXTRA_ABROAD
        abroad = rng.random(n) < np.where(is_fraud, _P_FRAUD_ABROAD, _P_LEGIT_ABROAD + trip_boost)
        dest_cdf = np.where(is_fraud[:, None], _cdf(_FRAUD_ABROAD_WEIGHTS), _cdf(_TRAVEL_WEIGHTS))
        dest = _choice_rows(rng, dest_cdf)
        # A "foreign" draw that lands on the home country moves one country along.
        dest = np.where(dest == home, (dest + 1) % len(_COUNTRIES), dest)
        country = np.where(abroad, dest, home)

        amount = self._draw_amounts(is_fraud, card, category, country)
        distance = self._draw_distances(is_fraud, abroad)
        count, seconds = self._draw_velocity(is_fraud)

        # Devices and IPs: ECOM only; a new device gets a fresh fingerprint.
        ecom = channel == _ECOM
        new_device = ecom & self._signal(is_fraud, _P_FRAUD_NEW_DEVICE, _P_LEGIT_NEW_DEVICE)
        known = self._card_devices[card, rng.integers(0, _DEVICES_PER_CARD, n)]
        fresh = np.array(_hex_tokens(rng, n, 8), dtype=object)
        device = np.where(new_device, fresh, known)
        device[~ecom] = None
        octets = rng.integers(1, 255, (n, 4))

        merchant = category * _MERCHANTS_PER_CATEGORY + rng.integers(0, _MERCHANTS_PER_CATEGORY, n)
        tx_tokens = _hex_tokens(rng, n, 16)

        ecom_idx = np.flatnonzero(ecom)
        ip: list[str | None] = [None] * n
        for i, row in zip(ecom_idx.tolist(), octets[ecom_idx].tolist(), strict=True):
            ip[i] = f"{row[0]}.{row[1]}.{row[2]}.{row[3]}"

        channel_names = np.array(CHANNELS, dtype=object)

        columns: dict[str, list[Any]] = {
            "transaction_id": tx_tokens,
            "card_id": self._card_ids[card].tolist(),
            "account_id": self._account_ids[card].tolist(),
            "amount": amount.tolist(),
            "currency": self._country_currency[country].tolist(),
            "merchant_id": self._merchant_ids[merchant].tolist(),
            "merchant_name": self._merchant_names[merchant].tolist(),
            "merchant_category": np.array(CATEGORIES, dtype=object)[category].tolist(),
            "mcc": _CATEGORY_MCC[category].tolist(),
            "channel": channel_names[channel].tolist(),
            "card_present": card_present.tolist(),
            "country": self._country_codes[country].tolist(),
            "home_country": self._country_codes[home].tolist(),
            "distance_from_home_km": distance.tolist(),
            "txn_count_1h": count.tolist(),
            "seconds_since_last_txn": seconds.tolist(),
            "device_id": device.tolist(),
            "ip_address": ip,
            "is_new_device": new_device.tolist(),
        }
        return columns, is_fraud

    def _signal(
        self, is_fraud: NDArray[np.bool_], p_fraud: float, p_legit: float
    ) -> NDArray[np.bool_]:
        """Draw one behaviour per event: probability ``p_fraud`` for fraud, else ``p_legit``.

        Args:
            is_fraud: The labels.
            p_fraud: Probability for fraud events.
            p_legit: Probability for legitimate events.

        Returns:
            True where the event shows the behaviour.
        """
        u = self._rng.random(int(is_fraud.shape[0]))
        return np.asarray(u < np.where(is_fraud, p_fraud, p_legit), dtype=np.bool_)

    def _draw_amounts(
        self,
        is_fraud: NDArray[np.bool_],
        card: NDArray[np.int64],
        category: NDArray[np.intp],
        country: NDArray[np.intp],
    ) -> NDArray[np.float64]:
        """Draw amounts in EUR, then convert them to the merchant country's currency.

        Fraud is either a large amount, a small card-testing amount or an ordinary one.

        Args:
            is_fraud: The labels.
            card: Card index per event.
            category: Category index per event.
            country: Merchant country index per event.

        Returns:
            Amounts rounded to cents.
        """
        rng = self._rng
        n = int(is_fraud.shape[0])
        typical = self._card_spend_eur[card] * _CATEGORY_AMOUNT[category]
        amount_eur = _lognormal(rng, typical, _AMOUNT_SIGMA, n)
        u_amount = rng.random(n)
        high = is_fraud & (u_amount < _P_FRAUD_AMOUNT_HIGH)
        test = (
            is_fraud
            & (u_amount >= _P_FRAUD_AMOUNT_HIGH)
            & (u_amount < _P_FRAUD_AMOUNT_HIGH + _P_FRAUD_AMOUNT_TEST)
        )
        high_eur = _lognormal(rng, typical * np.exp(_FRAUD_HIGH_LOG_SHIFT), _FRAUD_HIGH_SIGMA, n)
        test_eur = rng.uniform(*_TEST_AMOUNT_EUR, n)
        amount_eur = np.where(high, high_eur, np.where(test, test_eur, amount_eur))
        amount_eur = np.maximum(amount_eur, _MIN_AMOUNT_EUR)
        return np.asarray(np.round(amount_eur * self._country_fx[country], 2), dtype=np.float64)

    def _draw_distances(
        self, is_fraud: NDArray[np.bool_], abroad: NDArray[np.bool_]
    ) -> NDArray[np.object_]:
        """Draw the distance from home: near, far but domestic, or abroad; sometimes unknown.

        Args:
            is_fraud: The labels.
            abroad: True where the merchant is foreign.

        Returns:
            Distances in km (Python floats, one decimal) or None.
        """
        rng = self._rng
        n = int(is_fraud.shape[0])
        far = self._signal(is_fraud, _P_FRAUD_FAR, _P_LEGIT_FAR)
        dist = np.where(
            abroad,
            _lognormal(rng, _DIST_ABROAD[0], _DIST_ABROAD[1], n),
            np.where(
                far,
                _lognormal(rng, _DIST_FAR[0], _DIST_FAR[1], n),
                _lognormal(rng, _DIST_NEAR[0], _DIST_NEAR[1], n),
            ),
        )
        distance: NDArray[np.object_] = np.round(dist, 1).astype(object)
        distance[rng.random(n) < _DISTANCE_NULL_RATE] = None
        return distance

    def _draw_velocity(
        self, is_fraud: NDArray[np.bool_]
    ) -> tuple[NDArray[np.int64], NDArray[np.object_]]:
        """Draw ``txn_count_1h`` and ``seconds_since_last_txn``; bursts raise one, cut the other.

        Args:
            is_fraud: The labels.

        Returns:
            The hourly counts, and the gaps in seconds (Python ints, None for a first use).
        """
        rng = self._rng
        n = int(is_fraud.shape[0])
        burst = self._signal(is_fraud, _P_FRAUD_BURST, _P_LEGIT_BURST)
        count = np.where(
            burst,
            1 + rng.poisson(_COUNT_BURST_MEAN, n),
            rng.poisson(_COUNT_NORMAL_MEAN, n),
        )
        gap = np.where(
            burst,
            _lognormal(rng, _GAP_BURST_S[0], _GAP_BURST_S[1], n),
            _lognormal(rng, _GAP_NORMAL_S[0], _GAP_NORMAL_S[1], n),
        )
        gap_s = np.maximum(np.round(gap), 1).astype(np.int64)
        # A gap under an hour means at least one authorisation within the hour.
        count = np.where(gap_s < 3600, np.maximum(count, 1), count).astype(np.int64)
        seconds: NDArray[np.object_] = gap_s.astype(object)
        seconds[rng.random(n) < _FIRST_TXN_RATE] = None
        return count, seconds
