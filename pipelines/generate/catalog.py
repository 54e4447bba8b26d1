"""Static reference data of the synthetic world: countries and merchant categories (MCCs).

Amount levels are in US dollars; `Country.usd_rate` converts them to the local currency.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class Country:
    """A country where cards live and merchants trade."""

    code: str  # ISO 3166-1 alpha-2
    currency: str  # ISO 4217
    utc_offset_hours: float  # "local-ish" time zone used for the daily rhythm
    usd_rate: float  # local currency units per US dollar
    weight: float  # share of cards and merchants
    fraud_weight: float  # how often account takeovers appear to come from here
    ip_octets: tuple[int, ...]  # first octets of its consumer IP ranges
    decimals: int = 2  # minor units of the currency


COUNTRIES: tuple[Country, ...] = (
    Country("US", "USD", -5.0, 1.0, 0.52, 1.0, (24, 73, 98, 108)),
    Country("GB", "GBP", 0.0, 0.79, 0.10, 1.0, (81, 86)),
    Country("DE", "EUR", 1.0, 0.92, 0.06, 0.5, (79, 91)),
    Country("FR", "EUR", 1.0, 0.92, 0.05, 0.5, (82, 90)),
    Country("ES", "EUR", 1.0, 0.92, 0.03, 0.5, (83, 88)),
    Country("IT", "EUR", 1.0, 0.92, 0.03, 0.5, (93, 151)),
    Country("NL", "EUR", 1.0, 0.92, 0.02, 0.8, (77, 145)),
    Country("CA", "CAD", -5.0, 1.37, 0.05, 0.5, (70, 99)),
    Country("BR", "BRL", -3.0, 5.0, 0.03, 2.5, (177, 179)),
    Country("MX", "MXN", -6.0, 17.0, 0.02, 2.0, (187, 189)),
    Country("IN", "INR", 5.5, 83.0, 0.03, 2.0, (103, 117)),
    Country("JP", "JPY", 9.0, 150.0, 0.02, 0.5, (126, 133), decimals=0),
    Country("NG", "NGN", 1.0, 1500.0, 0.01, 4.0, (102, 105)),
    Country("AU", "AUD", 10.0, 1.52, 0.02, 0.5, (110, 120)),
    Country("SG", "SGD", 8.0, 1.34, 0.01, 1.0, (116, 119)),
)

# First octets of hosting / VPN ranges that fraudsters connect from.
FRAUD_IP_OCTETS: tuple[int, ...] = (5, 31, 45, 46, 62, 85, 104, 138, 141, 155, 176, 185, 193, 194, 195, 212)


@dataclass(frozen=True)
class Category:
    """A merchant category code with its typical amount and how often cardholders buy there."""

    mcc: str
    name: str
    median_usd: float  # median genuine amount
    sigma: float  # lognormal spread of genuine amounts
    share: float  # share of merchants in this category
    frequency: float  # how often a cardholder visits one such merchant (relative)
    risk: float  # baseline fraud risk 0..1
    online: bool = False  # card-not-present only: never a terminal transaction


CATEGORIES: tuple[Category, ...] = (
    Category("5411", "grocery", 45.0, 0.7, 0.14, 3.0, 0.10),
    Category("5812", "restaurants", 38.0, 0.6, 0.12, 1.6, 0.10),
    Category("5814", "fast food", 12.0, 0.5, 0.10, 2.4, 0.10),
    Category("5541", "fuel", 48.0, 0.4, 0.07, 1.8, 0.15),
    Category("5999", "misc retail", 30.0, 0.9, 0.07, 0.8, 0.40),
    Category("5311", "department stores", 65.0, 0.8, 0.05, 0.8, 0.25),
    Category("5691", "clothing", 70.0, 0.7, 0.06, 0.6, 0.25),
    Category("5732", "electronics", 220.0, 0.9, 0.03, 0.3, 0.60),
    Category("4121", "taxi", 22.0, 0.5, 0.04, 1.0, 0.15),
    Category("5818", "digital goods", 9.0, 0.8, 0.04, 0.9, 0.60, online=True),
    Category("5815", "digital media", 12.0, 0.5, 0.03, 0.7, 0.50, online=True),
    Category("5816", "games", 15.0, 0.8, 0.02, 0.5, 0.60, online=True),
    Category("5967", "direct marketing", 35.0, 0.7, 0.02, 0.3, 0.70, online=True),
    Category("4829", "money transfer", 180.0, 1.0, 0.02, 0.15, 0.80, online=True),
    Category("7995", "gambling", 60.0, 1.0, 0.015, 0.2, 0.80),
    Category("5944", "jewelry", 300.0, 1.0, 0.015, 0.08, 0.60),
    Category("4511", "airlines", 380.0, 0.6, 0.02, 0.05, 0.30),
    Category("7011", "hotels", 190.0, 0.6, 0.03, 0.1, 0.30),
    Category("5912", "drug stores", 25.0, 0.6, 0.05, 1.0, 0.10),
)

CARD_TESTING_MCCS = frozenset({"5818", "5815", "5816", "5999", "5967"})
CASH_OUT_MCCS = frozenset({"5732", "5944", "4829"})
RING_MCCS = frozenset({"5732", "5944", "5311", "5691", "4511"})
# Currencies in which card testers probe with 0.50-5.00 amounts.
CARD_TESTING_CURRENCIES = frozenset({"USD", "EUR", "GBP", "CAD"})

# Relative transaction intensity per local hour (0..23), on weekdays and at weekends.
WEEKDAY_HOURS = (0.6, 0.35, 0.25, 0.2, 0.25, 0.5, 1.2, 2.6, 3.6, 3.8, 4.2, 5.0,
                 6.2, 5.6, 4.6, 4.4, 4.8, 5.6, 6.2, 5.8, 4.8, 3.6, 2.4, 1.3)  # fmt: skip
WEEKEND_HOURS = (1.0, 0.7, 0.45, 0.3, 0.25, 0.3, 0.6, 1.2, 2.2, 3.4, 4.6, 5.6,
                 6.0, 6.0, 5.6, 5.2, 5.2, 5.6, 6.0, 5.8, 5.0, 4.0, 3.0, 1.9)  # fmt: skip
# Fraudsters keep other hours: flatter, more at night.
FRAUD_HOURS = (3.0, 3.2, 3.4, 3.4, 3.0, 2.6, 2.2, 2.0, 2.0, 2.2, 2.4, 2.6,
               2.8, 2.8, 2.8, 2.8, 2.8, 3.0, 3.0, 3.2, 3.4, 3.4, 3.2, 3.0)  # fmt: skip
# Relative volume Monday..Sunday.
WEEKDAY_VOLUME = (0.95, 0.95, 0.97, 1.0, 1.12, 1.15, 0.86)


def cumulative(weights: tuple[float, ...] | npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Normalised cumulative weights for inverse-CDF sampling with `np.searchsorted`."""
    cum: npt.NDArray[np.float64] = np.cumsum(np.asarray(weights, dtype=np.float64))
    normalised: npt.NDArray[np.float64] = cum / cum[-1]
    return normalised
