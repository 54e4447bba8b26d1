"""Genuine card traffic for one day and a range of cards, fully vectorised."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from pipelines.generate import catalog
from pipelines.generate.batch import Batch, IntArray, local_amounts
from pipelines.generate.config import DAY_MS, GENUINE
from pipelines.generate.world import REGULAR_WEIGHTS, World

HOUR_MS = 3_600_000
REGULAR_SHARE = 0.78  # transactions at one of the card's regular merchants
ABROAD_SHARE = 0.02  # transactions at any merchant world-wide (travel, foreign web shops)
NO_FINGERPRINT_SHARE = 0.01  # web transactions without a device id
NO_IP_SHARE = 0.005  # app transactions without an IP
SECOND_DEVICE_SHARE = 0.35
SECONDARY_IP_SHARE = 0.3

WEEKDAY_CUM = catalog.cumulative(catalog.WEEKDAY_HOURS)
WEEKEND_CUM = catalog.cumulative(catalog.WEEKEND_HOURS)
_OFFSET_MS = np.array([round(c.utc_offset_hours * HOUR_MS) for c in catalog.COUNTRIES], dtype=np.int64)
MEDIAN_USD = np.array([c.median_usd for c in catalog.CATEGORIES])
SIGMA = np.array([c.sigma for c in catalog.CATEGORIES])


def weekday(day_start_ms: int) -> int:
    """Day of the week, Monday = 0, of a UTC epoch-millisecond time."""
    return (day_start_ms // DAY_MS + 3) % 7  # 1970-01-01 was a Thursday


def local_times(
    rng: np.random.Generator, day_start_ms: int, country: IntArray, hours_cum: npt.NDArray[np.float64]
) -> IntArray:
    """Times in the day window following an hourly profile in each row's local time (wrapped into the day)."""
    n = len(country)
    hour = np.searchsorted(hours_cum, rng.random(n), side="right")
    local_ms = hour * HOUR_MS + rng.integers(0, HOUR_MS, size=n)
    return day_start_ms + (local_ms - _OFFSET_MS[country]) % DAY_MS


def genuine_traffic(world: World, rng: np.random.Generator, day_start_ms: int, first_card: int, end_card: int) -> Batch:
    """Transactions of cards [first_card, end_card) on the day starting at `day_start_ms`."""
    wd = weekday(day_start_ms)
    cards = np.arange(first_card, end_card)
    counts = rng.poisson(world.card_rate[cards] * catalog.WEEKDAY_VOLUME[wd])
    card = np.repeat(cards, counts)
    n = len(card)
    country = world.card_country[card]

    # Merchant: mostly a regular one, else a popular one at home, rarely anywhere.
    slot = np.searchsorted(REGULAR_WEIGHTS, rng.random(n), side="right")
    merchant = world.card_regulars[card, slot]
    u = rng.random(n)
    other = np.flatnonzero((u >= REGULAR_SHARE) & (u < 1.0 - ABROAD_SHARE))
    other_country = country[other]
    for c in np.unique(other_country).tolist():
        rows = other[other_country == c]
        merchant[rows] = world.country_pools[c].draw(rng, len(rows))
    abroad = np.flatnonzero(u >= 1.0 - ABROAD_SHARE)
    merchant[abroad] = world.global_pool.draw(rng, len(abroad))

    # Channel: terminal (no device, no IP) or app/web from one of the card's devices and IPs.
    u = rng.random(n)
    terminal = (u < world.card_present[card]) & ~world.merchant_online[merchant]
    second = world.card_devices[card, 1]
    use_second = (second >= 0) & (rng.random(n) < SECOND_DEVICE_SHARE)
    device = np.where(use_second, second, world.card_devices[card, 0])
    secondary = world.card_ips[card, 1]
    use_secondary = (secondary >= 0) & (rng.random(n) < SECONDARY_IP_SHARE)
    ip = np.where(use_secondary, secondary, world.card_ips[card, 0])
    no_device = terminal | (u > 1.0 - NO_FINGERPRINT_SHARE)
    no_ip = terminal | ((u > 1.0 - NO_FINGERPRINT_SHARE - NO_IP_SHARE) & (u <= 1.0 - NO_FINGERPRINT_SHARE))
    device[no_device] = -1
    ip[no_ip] = -1

    hours = WEEKEND_CUM if wd >= 5 else WEEKDAY_CUM
    ts = local_times(rng, day_start_ms, country, hours)

    category = world.merchant_category[merchant]
    usd = (
        MEDIAN_USD[category]
        * world.merchant_level[merchant]
        * world.card_level[card]
        * np.exp(SIGMA[category] * rng.standard_normal(n))
    )
    amount = local_amounts(usd, world.merchant_usd_rate[merchant], world.merchant_decimals[merchant])
    return Batch(card, merchant, device, ip, amount, ts, np.full(n, GENUINE, dtype=np.int8))
