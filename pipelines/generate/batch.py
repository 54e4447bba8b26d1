"""A chunk of transactions as numeric columns (indices into the world), before any string is built."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]


@dataclass
class Batch:
    """Transactions of one chunk. `device`/`ip` index the world's tables, then this batch's `extra_*` lists
    (index `len(world table) + i` is `extra_*[i]`); -1 is null. Amounts are in the merchant's currency."""

    card: IntArray
    merchant: IntArray
    device: IntArray
    ip: IntArray
    amount: npt.NDArray[np.float64]
    ts: IntArray  # epoch milliseconds
    pattern: npt.NDArray[np.int8]
    extra_devices: list[str] = field(default_factory=list)
    extra_ips: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ts)

    @staticmethod
    def empty() -> Batch:
        """A batch without rows."""
        z = np.empty(0, dtype=np.int64)
        return Batch(z, z, z, z, np.empty(0), z, np.empty(0, dtype=np.int8))

    def take(self, rows: IntArray) -> Batch:
        """The given rows, in that order (extras are kept whole)."""
        return Batch(
            self.card[rows],
            self.merchant[rows],
            self.device[rows],
            self.ip[rows],
            self.amount[rows],
            self.ts[rows],
            self.pattern[rows],
            self.extra_devices,
            self.extra_ips,
        )

    def rows(self, first: int, end: int) -> Batch:
        """Rows [first, end) as views (extras are kept whole)."""
        part = slice(first, end)
        return Batch(
            self.card[part],
            self.merchant[part],
            self.device[part],
            self.ip[part],
            self.amount[part],
            self.ts[part],
            self.pattern[part],
            self.extra_devices,
            self.extra_ips,
        )

    def sorted_by_time(self) -> Batch:
        """Rows in event-time order (stable, so ties keep their generation order)."""
        return self.take(np.argsort(self.ts, kind="stable"))


def concat(batches: list[Batch], world_devices: int, world_ips: int) -> Batch:
    """One batch of all rows, with extra-device/IP indices renumbered into the merged extra lists."""
    if not batches:
        return Batch.empty()
    devices: list[IntArray] = []
    ips: list[IntArray] = []
    extra_devices: list[str] = []
    extra_ips: list[str] = []
    for b in batches:
        devices.append(_shift(b.device, world_devices, len(extra_devices)))
        ips.append(_shift(b.ip, world_ips, len(extra_ips)))
        extra_devices.extend(b.extra_devices)
        extra_ips.extend(b.extra_ips)
    return Batch(
        np.concatenate([b.card for b in batches]),
        np.concatenate([b.merchant for b in batches]),
        np.concatenate(devices),
        np.concatenate(ips),
        np.concatenate([b.amount for b in batches]),
        np.concatenate([b.ts for b in batches]),
        np.concatenate([b.pattern for b in batches]),
        extra_devices,
        extra_ips,
    )


def _shift(index: IntArray, world_size: int, offset: int) -> IntArray:
    return np.where(index >= world_size, index + offset, index) if offset else index


def local_amounts(
    usd: npt.NDArray[np.float64], usd_rate: npt.NDArray[np.float64], decimals: IntArray
) -> npt.NDArray[np.float64]:
    """US-dollar amounts converted to the local currency and rounded to its minor unit (at least one unit)."""
    scale = 10.0 ** decimals.astype(np.float64)
    units = np.maximum(np.rint(usd * usd_rate * scale), 1.0)
    return units / scale
