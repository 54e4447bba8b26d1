"""Fraud incidents injected into one day and card range: card testing, account takeover,
compromised merchants and fraud rings. Incidents are rare, so they are built one at a time."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipelines.generate import catalog
from pipelines.generate.batch import Batch, IntArray, concat, local_amounts
from pipelines.generate.config import (
    ACCOUNT_TAKEOVER,
    CARD_TESTING,
    COMPROMISED_MERCHANT,
    DAY_MS,
    PATTERNS,
    RING,
    GenerateConfig,
)
from pipelines.generate.ids import device_id, ip_strings, random_addresses
from pipelines.generate.traffic import MEDIAN_USD, WEEKDAY_CUM, local_times
from pipelines.generate.world import FloatArray, World

MINUTE_MS = 60_000
_FRAUD_HOURS_CUM = catalog.cumulative(catalog.FRAUD_HOURS)
_FRAUD_OCTETS = np.array(catalog.FRAUD_IP_OCTETS, dtype=np.int64)
_COUNTRY_OCTETS = [np.array(c.ip_octets, dtype=np.int64) for c in catalog.COUNTRIES]
_FRAUD_COUNTRY_W = np.array([c.fraud_weight for c in catalog.COUNTRIES])
_MAX_DAYS = 1 << 15  # fraud device keys: 2**47 | day << 32 | chunk << 20 | n
_MAX_CHUNKS = 1 << 12
# Patterns counted per incident here; compromised merchants are counted per merchant by the world.
INCIDENT_PATTERNS = (PATTERNS[CARD_TESTING], PATTERNS[ACCOUNT_TAKEOVER], PATTERNS[RING])


@dataclass
class _Incidents:
    """Collects the rows of the incidents of one chunk and mints new fraudster devices and IPs."""

    world: World
    rng: np.random.Generator
    day_start_ms: int
    device_key_base: int
    seed: int
    rows: list[Batch] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)
    ips: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(INCIDENT_PATTERNS, 0))

    def new_device(self) -> int:
        """Index of a fresh fraudster device."""
        self.devices.append(device_id(self.device_key_base + len(self.devices), self.seed))
        return len(self.world.device_ids) + len(self.devices) - 1

    def new_ip(self, octets: IntArray) -> int:
        """Index of a fresh IP address under one of `octets`."""
        address = random_addresses(self.rng, self.rng.choice(octets, size=1))
        self.ips.extend(ip_strings(address).to_pylist())
        return len(self.world.ip_addresses) + len(self.ips) - 1

    def start_offset(self, span_ms: int) -> int:
        """A start within the day, on fraudster hours, leaving room for an incident of `span_ms`."""
        hour = int(np.searchsorted(_FRAUD_HOURS_CUM, self.rng.random(), side="right"))
        start = hour * 3_600_000 + int(self.rng.integers(0, 3_600_000))
        return max(0, min(start, DAY_MS - span_ms - 1))

    def add(
        self,
        pattern: int,
        card: IntArray,
        merchant: IntArray,
        *,
        device: IntArray,
        ip: IntArray,
        usd: FloatArray,
        ts: IntArray,
        local: bool = False,
    ) -> None:
        """Append rows; `usd` is converted to the merchant's currency unless `local`."""
        w = self.world
        if local:
            scale = 10.0 ** w.merchant_decimals[merchant].astype(np.float64)
            amount = np.maximum(np.rint(usd * scale), 1.0) / scale
        else:
            amount = local_amounts(usd, w.merchant_usd_rate[merchant], w.merchant_decimals[merchant])
        n = len(ts)
        self.rows.append(Batch(card, merchant, device, ip, amount, ts, np.full(n, pattern, dtype=np.int8)))

    def batch(self) -> Batch:
        """All rows collected, with the minted devices and IPs as extras."""
        merged = concat(self.rows, len(self.world.device_ids), len(self.world.ip_addresses))
        merged.extra_devices = self.devices
        merged.extra_ips = self.ips
        return merged


def inject_fraud(
    world: World,
    config: GenerateConfig,
    rng: np.random.Generator,
    *,
    day: int,
    chunk: int,
    cards: range,
    genuine: Batch,
) -> tuple[Batch, dict[str, int]]:
    """Fraud transactions of `cards` on `day` (0-based), and the number of incidents per pattern."""
    if day >= _MAX_DAYS or chunk >= _MAX_CHUNKS:
        raise ValueError("too many days or card chunks for unique fraud device ids")
    day_start = config.start_ms + day * DAY_MS
    inc = _Incidents(world, rng, day_start, (1 << 47) | (day << 32) | (chunk << 20), config.seed)
    first_card, end_card = cards.start, cards.stop
    n_cards = len(cards)
    for _ in range(int(rng.poisson(config.card_testing_rate * n_cards))):
        _card_testing(inc, int(rng.integers(first_card, end_card)))
    for _ in range(int(rng.poisson(config.account_takeover_rate * n_cards))):
        _account_takeover(inc, int(rng.integers(first_card, end_card)))
    for _ in range(int(rng.poisson(config.ring_burst_rate * n_cards))):
        _ring_burst(inc, first_card, end_card)
    _compromised(inc, day, first_card, end_card, genuine)
    return inc.batch(), inc.counts


def _card_testing(inc: _Incidents, card: int) -> None:
    """5-20 tiny amounts within minutes at online merchants new to the card, maybe then one cash-out."""
    rng, w = inc.rng, inc.world
    n = int(rng.integers(5, 21))
    gaps = rng.integers(5_000, 90_000, size=n - 1)
    cash_out_after = int(rng.integers(10, 121)) * MINUTE_MS if rng.random() < 0.35 else 0
    span = int(gaps.sum()) + cash_out_after
    t0 = inc.day_start_ms + inc.start_offset(span)
    ts = t0 + np.concatenate([[0], np.cumsum(gaps)])
    candidates = w.card_testing_pool.draw(rng, 12)
    fresh = candidates[~np.isin(candidates, w.card_regulars[card])]
    targets = (fresh if len(fresh) else candidates)[: int(rng.integers(1, 4))]
    merchant = targets[rng.integers(0, len(targets), size=n)]
    device = np.full(n, inc.new_device())
    ip_pool = np.array([inc.new_ip(_FRAUD_OCTETS) for _ in range(int(rng.integers(1, 3)))])
    ip = ip_pool[rng.integers(0, len(ip_pool), size=n)]
    usd = rng.uniform(0.5, 5.0, size=n)
    inc.add(CARD_TESTING, np.full(n, card), merchant, device=device, ip=ip, usd=usd, ts=ts, local=True)
    if cash_out_after:
        m = w.cash_out_pools[int(w.card_country[card])].draw(rng, 1)
        amount = rng.lognormal(np.log(600.0), 0.5, size=1)
        inc.add(
            CARD_TESTING,
            np.array([card]),
            m,
            device=device[:1],
            ip=ip[:1],
            usd=amount,
            ts=ts[-1:] + cash_out_after,
        )
    inc.counts["card_testing"] += 1


def _account_takeover(inc: _Incidents, card: int) -> None:
    """A new device and IP, often abroad, then 2-6 large purchases within an hour or two."""
    rng, w = inc.rng, inc.world
    home = int(w.card_country[card])
    country = home
    if rng.random() < 0.65:
        weights = _FRAUD_COUNTRY_W.copy()
        weights[home] = 0.0
        country = int(np.searchsorted(catalog.cumulative(weights), rng.random(), side="right"))
    n = int(rng.integers(2, 7))
    gaps = rng.integers(2 * MINUTE_MS, 25 * MINUTE_MS, size=n - 1)
    t0 = inc.day_start_ms + inc.start_offset(int(gaps.sum()))
    ts = t0 + np.concatenate([[0], np.cumsum(gaps)])
    device = np.full(n, inc.new_device())
    octets = _FRAUD_OCTETS if rng.random() < 0.3 else _COUNTRY_OCTETS[country]
    ip = np.full(n, inc.new_ip(octets))
    merchant = w.cash_out_pools[country].draw(rng, n)
    usd = rng.lognormal(np.log(450.0), 0.6, size=n)
    inc.add(ACCOUNT_TAKEOVER, np.full(n, card), merchant, device=device, ip=ip, usd=usd, ts=ts)
    inc.counts["account_takeover"] += 1


def _ring_burst(inc: _Incidents, first_card: int, end_card: int) -> None:
    """One ring works through 3-8 stolen cards within up to two hours, from its shared devices and IPs."""
    rng, w = inc.rng, inc.world
    ring = w.rings[int(rng.integers(0, len(w.rings)))]
    k = int(rng.integers(3, 9))
    cards = first_card + rng.choice(end_card - first_card, size=k, replace=k > end_card - first_card)
    per_card = rng.integers(1, 4, size=k)
    card = np.repeat(cards, per_card)
    n = len(card)
    window = int(rng.integers(30, 121)) * MINUTE_MS
    t0 = inc.day_start_ms + inc.start_offset(window)
    ts = t0 + np.sort(rng.integers(0, window, size=n))
    device = np.repeat(ring.devices[rng.integers(0, len(ring.devices), size=k)], per_card)
    ip = ring.ips[rng.integers(0, len(ring.ips), size=n)]
    merchant = ring.merchants[rng.integers(0, len(ring.merchants), size=n)]
    usd = rng.lognormal(np.log(280.0), 0.5, size=n)
    inc.add(RING, card, merchant, device=device, ip=ip, usd=usd, ts=ts)
    inc.counts["ring"] += 1


def _compromised(inc: _Incidents, day: int, first_card: int, end_card: int, genuine: Batch) -> None:
    """At each merchant compromised today, fraud from many cards in proportion to its genuine traffic."""
    rng, w = inc.rng, inc.world
    active = [c for c in w.compromised if c.first_day <= day <= c.last_day]
    if not active:
        return
    visits = np.bincount(genuine.merchant, minlength=len(w.merchant_category))
    for comp in active:
        n = int(rng.poisson(visits[comp.merchant] * comp.ratio))
        if n == 0:
            continue
        m = comp.merchant
        card = rng.integers(first_card, end_card, size=n)
        merchant = np.full(n, m)
        country = np.full(n, int(w.merchant_country[m]))
        ts = local_times(rng, inc.day_start_ms, country, WEEKDAY_CUM)
        if w.merchant_online[m]:  # card-not-present charges from the merchant's own systems
            device = np.full(n, inc.new_device())
            ip = np.full(n, inc.new_ip(_FRAUD_OCTETS))
        else:  # skimmed terminal: no device, no IP
            device = np.full(n, -1)
            ip = np.full(n, -1)
        base = MEDIAN_USD[w.merchant_category[m]] * w.merchant_level[m]
        usd = base * rng.lognormal(np.log(2.2), 0.5, size=n)
        inc.add(COMPROMISED_MERCHANT, card, merchant, device=device, ip=ip, usd=usd, ts=ts)
