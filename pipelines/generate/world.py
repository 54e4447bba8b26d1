"""The static world: cards, merchants, devices, IPs, fraud rings and compromised merchants.

Everything here is O(cards) and drawn once from the seed before any day is generated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from pipelines.generate import catalog
from pipelines.generate.config import GenerateConfig
from pipelines.generate.ids import device_ids, ip_strings, numbered, random_addresses

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

REGULARS = 8  # regular merchants per card
REGULAR_WEIGHTS = catalog.cumulative((0.28, 0.2, 0.14, 0.11, 0.09, 0.07, 0.06, 0.05))
_HOUSEHOLD_SIZES = np.array([1, 2, 3, 4])
_HOUSEHOLD_P = np.array([0.55, 0.25, 0.12, 0.08])


@dataclass(frozen=True)
class Ring:
    """A fraud ring: a few devices and IPs (world indices) shared across the many cards it uses."""

    devices: IntArray
    ips: IntArray
    merchants: IntArray


@dataclass(frozen=True)
class Compromise:
    """A merchant compromised on days [first_day, last_day]; `ratio` fraud per genuine transaction."""

    merchant: int
    first_day: int
    last_day: int
    ratio: float


@dataclass(frozen=True)
class MerchantPool:
    """Merchants to draw from, with cumulative weights."""

    merchants: IntArray
    cum: FloatArray

    def draw(self, rng: np.random.Generator, size: int) -> IntArray:
        """`size` merchants drawn by weight."""
        idx = np.searchsorted(self.cum, rng.random(size), side="right")
        return self.merchants[idx]


@dataclass(frozen=True)
class World:
    """Cards, merchants and their devices/IPs. Index arrays use -1 for "none"."""

    card_ids: pa.Array
    card_country: IntArray  # country index into catalog.COUNTRIES
    card_rate: FloatArray  # expected transactions per day
    card_level: FloatArray  # multiplier on amounts
    card_present: FloatArray  # probability of a terminal transaction (no device, no IP)
    card_devices: IntArray  # (cards, 2) world device indices
    card_ips: IntArray  # (cards, 2) world IP indices: home, secondary (office NAT / mobile carrier)
    card_regulars: IntArray  # (cards, REGULARS) merchant indices

    merchant_ids: pa.Array
    merchant_category: IntArray  # index into catalog.CATEGORIES
    merchant_country: IntArray
    merchant_level: FloatArray  # multiplier on the category's median amount
    merchant_risk: FloatArray
    merchant_online: npt.NDArray[np.bool_]
    merchant_mcc: pa.Array  # per merchant, strings
    merchant_country_code: pa.Array
    merchant_currency: pa.Array
    merchant_usd_rate: FloatArray
    merchant_decimals: IntArray

    country_pools: tuple[MerchantPool, ...]  # popularity-weighted merchants per country
    global_pool: MerchantPool
    card_testing_pool: MerchantPool
    cash_out_pools: tuple[MerchantPool, ...]  # per country (falls back to all cash-out merchants)
    device_ids: pa.Array
    ip_addresses: pa.Array
    rings: tuple[Ring, ...]
    compromised: tuple[Compromise, ...]

    @property
    def cards(self) -> int:
        """Number of cards."""
        return len(self.card_country)


def _pool(merchants: IntArray, weights: FloatArray) -> MerchantPool:
    return MerchantPool(merchants.astype(np.int64), catalog.cumulative(weights))


def _pools_by_country(
    country: IntArray, member: npt.NDArray[np.bool_], weights: FloatArray, fallback: MerchantPool
) -> tuple[MerchantPool, ...]:
    pools = []
    for c in range(len(catalog.COUNTRIES)):
        ms = np.flatnonzero(member & (country == c))
        pools.append(_pool(ms, weights[ms]) if len(ms) else fallback)
    return tuple(pools)


def build_world(config: GenerateConfig) -> World:
    """Draw the world for `config` (from its own random stream, independent of the day chunks)."""
    rng = np.random.default_rng([config.seed, 0xC0FFEE])
    n = config.cards
    n_countries = len(catalog.COUNTRIES)
    country_w = np.array([c.weight for c in catalog.COUNTRIES])
    cats = catalog.CATEGORIES

    # Merchants: every category and every country present at least once, the rest drawn by share.
    m = config.merchant_count
    m_cat = rng.choice(len(cats), size=m, p=_normalised([c.share for c in cats]))
    m_cat[: len(cats)] = np.arange(len(cats))
    m_country = rng.choice(n_countries, size=m, p=country_w)
    m_country[: len(cats)] = 0
    m_country[len(cats) : len(cats) + n_countries] = np.arange(n_countries)
    freq = np.array([c.frequency for c in cats])[m_cat]
    popularity = freq / (rng.permutation(m) + 1.0) ** 1.05  # Zipf-like, scaled by visit frequency
    level = rng.lognormal(0.0, 0.3, size=m)
    risk = np.clip(np.array([c.risk for c in cats])[m_cat] * rng.lognormal(0.0, 0.3, size=m), 0.01, 1.0)
    online = np.array([c.online for c in cats])[m_cat]
    currency = np.array([c.currency for c in catalog.COUNTRIES])[m_country]

    global_pool = _pool(np.arange(m), popularity)
    country_pools = _pools_by_country(m_country, np.ones(m, dtype=bool), popularity, global_pool)
    testing = np.isin(np.array([c.mcc for c in cats])[m_cat], sorted(catalog.CARD_TESTING_MCCS))
    testing_cur = testing & np.isin(currency, sorted(catalog.CARD_TESTING_CURRENCIES))
    testing_ms = np.flatnonzero(testing_cur if testing_cur.any() else testing)
    cash_out = np.isin(np.array([c.mcc for c in cats])[m_cat], sorted(catalog.CASH_OUT_MCCS))
    cash_out_all = _pool(np.flatnonzero(cash_out), risk[cash_out])
    cash_out_pools = _pools_by_country(m_country, cash_out, risk, cash_out_all)

    # Cards live in households that share a home IP and sometimes a family device.
    hh_sizes = rng.choice(_HOUSEHOLD_SIZES, size=n, p=_HOUSEHOLD_P)
    hh_sizes = hh_sizes[: int(np.searchsorted(np.cumsum(hh_sizes), n)) + 1]
    households = len(hh_sizes)
    hh_of_card = np.repeat(np.arange(households), hh_sizes)[:n][rng.permutation(n)]
    hh_size = np.bincount(hh_of_card, minlength=households)
    hh_country = rng.choice(n_countries, size=households, p=country_w)
    card_country = hh_country[hh_of_card]

    card_rate = np.clip(config.tx_per_card_day * rng.lognormal(0.0, 0.7, size=n), 0.03, 15.0)
    card_level = rng.lognormal(0.0, 0.45, size=n)
    card_present = rng.beta(1.2, 30.0, size=n)  # mean about 4%

    # Devices: own phone for everyone; a second slot that is a family device, an own laptop, or nothing.
    u = rng.random(n)
    shared_family = (hh_size[hh_of_card] > 1) & (u < 0.4)
    own_second = ~shared_family & (u < 0.75)
    family_hh = np.flatnonzero(hh_size > 1)
    family_index = np.full(households, -1, dtype=np.int64)
    family_index[family_hh] = n + np.arange(len(family_hh))
    n_own2 = int(own_second.sum())
    first_ring_device = n + len(family_hh) + n_own2
    card_devices = np.full((n, 2), -1, dtype=np.int64)
    card_devices[:, 0] = np.arange(n)
    card_devices[shared_family, 1] = family_index[hh_of_card[shared_family]]
    card_devices[own_second, 1] = n + len(family_hh) + np.arange(n_own2)

    # IPs: a home IP per household; office NATs and mobile carrier NATs shared by many cards.
    octets = [np.array(c.ip_octets, dtype=np.int64) for c in catalog.COUNTRIES]
    home_first = np.empty(households, dtype=np.int64)
    for c in range(n_countries):
        in_c = hh_country == c
        home_first[in_c] = rng.choice(octets[c], size=int(in_c.sum()))
    ip_first_octets = [home_first]
    next_ip = households
    secondary = np.full(n, -1, dtype=np.int64)
    u = rng.random(n)
    for c in range(n_countries):
        cards_c = np.flatnonzero(card_country == c)
        if not len(cards_c):
            continue
        n_office = max(1, len(cards_c) // 60)
        n_mobile = max(1, len(cards_c) // 400)
        ip_first_octets.append(rng.choice(octets[c], size=n_office + n_mobile))
        office_cum = catalog.cumulative(1.0 / np.arange(1, n_office + 1))
        office = cards_c[u[cards_c] < 0.18]
        secondary[office] = next_ip + np.searchsorted(office_cum, rng.random(len(office)), side="right")
        mobile = cards_c[(u[cards_c] >= 0.18) & (u[cards_c] < 0.45)]
        secondary[mobile] = next_ip + n_office + rng.integers(0, n_mobile, size=len(mobile))
        next_ip += n_office + n_mobile
    card_ips = np.stack([hh_of_card.astype(np.int64), secondary], axis=1)

    # Regular merchants, drawn by popularity among merchants of the card's country.
    regulars = np.empty((n, REGULARS), dtype=np.int64)
    for c in range(n_countries):
        cards_c = np.flatnonzero(card_country == c)
        regulars[cards_c] = country_pools[c].draw(rng, len(cards_c) * REGULARS).reshape(-1, REGULARS)

    # Fraud rings: shared devices and IPs on fraud ranges, a handful of merchants to cash out at.
    ring_merchants = np.flatnonzero(np.isin(np.array([c.mcc for c in cats])[m_cat], sorted(catalog.RING_MCCS)))
    ring_pool = _pool(ring_merchants, risk[ring_merchants] * np.sqrt(popularity[ring_merchants]))
    rings = []
    next_device = first_ring_device
    fraud_octets = np.array(catalog.FRAUD_IP_OCTETS, dtype=np.int64)
    for _ in range(max(1, round(n / 25_000))):
        k_dev, k_ip = int(rng.integers(3, 7)), int(rng.integers(2, 5))
        ip_first_octets.append(rng.choice(fraud_octets, size=k_ip))
        merchants = np.unique(ring_pool.draw(rng, int(rng.integers(6, 16))))
        rings.append(Ring(np.arange(next_device, next_device + k_dev), np.arange(next_ip, next_ip + k_ip), merchants))
        next_device += k_dev
        next_ip += k_ip

    ip_addresses = ip_strings(random_addresses(rng, np.concatenate(ip_first_octets)))
    compromised = _compromised_merchants(
        rng, config, card_country=card_country, m_country=m_country, popularity=popularity, risk=risk
    )

    return World(
        card_ids=numbered("card_", n, 6),
        card_country=card_country.astype(np.int64),
        card_rate=card_rate,
        card_level=card_level,
        card_present=card_present,
        card_devices=card_devices,
        card_ips=card_ips,
        card_regulars=regulars,
        merchant_ids=numbered("m_", m, 5),
        merchant_category=m_cat.astype(np.int64),
        merchant_country=m_country.astype(np.int64),
        merchant_level=level,
        merchant_risk=risk,
        merchant_online=online,
        merchant_mcc=pa.array([cats[i].mcc for i in m_cat.tolist()], pa.string()),
        merchant_country_code=pa.array([catalog.COUNTRIES[i].code for i in m_country.tolist()], pa.string()),
        merchant_currency=pa.array(currency.tolist(), pa.string()),
        merchant_usd_rate=np.array([c.usd_rate for c in catalog.COUNTRIES])[m_country],
        merchant_decimals=np.array([c.decimals for c in catalog.COUNTRIES], dtype=np.int64)[m_country],
        country_pools=country_pools,
        global_pool=global_pool,
        card_testing_pool=_pool(testing_ms, risk[testing_ms]),
        cash_out_pools=cash_out_pools,
        device_ids=device_ids(np.arange(next_device, dtype=np.uint64), config.seed),
        ip_addresses=ip_addresses,
        rings=tuple(rings),
        compromised=compromised,
    )


def _compromised_merchants(
    rng: np.random.Generator,
    config: GenerateConfig,
    *,
    card_country: IntArray,
    m_country: IntArray,
    popularity: FloatArray,
    risk: FloatArray,
) -> tuple[Compromise, ...]:
    """Pick merchants (weighted by risk and size) until their expected fraud reaches `compromised_share`.

    A merchant's share of all traffic is estimated from its popularity within its country and the
    country's share of cards. Merchants too big for a quarter of the target are skipped.
    """
    n_countries = len(catalog.COUNTRIES)
    card_share = np.bincount(card_country, minlength=n_countries) / len(card_country)
    pop_sum = np.bincount(m_country, weights=popularity, minlength=n_countries)
    share = card_share[m_country] * popularity / pop_sum[m_country]
    weight = risk * share
    candidates = np.flatnonzero(weight > 0)
    order = rng.choice(candidates, size=len(candidates), replace=False, p=weight[candidates] / weight.sum())
    target = config.compromised_share
    picked: list[Compromise] = []
    total = 0.0
    for merchant in order.tolist():
        duration = min(config.days, int(rng.integers(2, 7)))
        ratio = float(rng.uniform(0.5, 1.2))
        contribution = share[merchant] * duration / config.days * ratio
        if contribution <= 0.0 or (contribution > target / 4 and picked) or contribution > target:
            continue
        first = int(rng.integers(0, config.days - duration + 1))
        picked.append(Compromise(merchant, first, first + duration - 1, ratio))
        total += contribution
        if total >= target or len(picked) >= max(1, len(risk) // 10):
            break
    return tuple(picked)


def _normalised(weights: list[float]) -> FloatArray:
    w = np.asarray(weights, dtype=np.float64)
    normalised: FloatArray = w / w.sum()
    return normalised
