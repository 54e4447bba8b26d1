"""Identifier formats: cards, merchants, devices (opaque hex) and IPv4 addresses, built column-wise."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

_MASK48 = (1 << 48) - 1
_MUL48 = 0x5DEECE66D  # odd, so multiplication is a bijection modulo 2**48
_HEX_PAIRS = pa.array([f"{b:02x}" for b in range(256)], pa.string())
_DECIMAL_OCTETS = pa.array([str(b) for b in range(256)], pa.string())


def opaque_codes(keys: npt.NDArray[np.uint64], seed: int) -> npt.NDArray[np.uint64]:
    """Scramble distinct integer keys into distinct random-looking 48-bit codes (a bijection on 48 bits)."""
    mask = np.uint64(_MASK48)
    x = (keys.astype(np.uint64) ^ np.uint64((seed * 0x9E3779B1) & _MASK48)) & mask
    x = (x * np.uint64(_MUL48)) & mask
    x ^= x >> np.uint64(21)
    x = (x * np.uint64(_MUL48)) & mask
    x ^= x >> np.uint64(19)
    return x


def _bytes_of(values: npt.NDArray[np.uint64], count: int) -> list[pa.Array]:
    """The `count` low bytes of each value, most significant first, as int64 Arrow arrays."""
    return [pa.array(((values >> np.uint64(8 * i)) & np.uint64(255)).astype(np.int64)) for i in reversed(range(count))]


def device_ids(keys: npt.NDArray[np.uint64], seed: int) -> pa.Array:
    """Device ids like `dev_3fa2c81b09de`; distinct keys (below 2**48) give distinct ids."""
    pairs = [_HEX_PAIRS.take(b) for b in _bytes_of(opaque_codes(keys, seed), 6)]
    return pc.binary_join_element_wise("dev_", *pairs, "")


def device_id(key: int, seed: int) -> str:
    """The device id of one key (same format as `device_ids`)."""
    return f"dev_{int(opaque_codes(np.array([key], dtype=np.uint64), seed)[0]):012x}"


def ip_strings(addresses: npt.NDArray[np.uint32]) -> pa.Array:
    """Dotted quads for 32-bit addresses."""
    octets = [_DECIMAL_OCTETS.take(b) for b in _bytes_of(addresses.astype(np.uint64), 4)]
    return pc.binary_join_element_wise(*octets, ".")


def numbered(prefix: str, count: int, width: int) -> pa.Array:
    """`prefix` followed by 0..count-1 zero-padded to `width` digits, e.g. `card_000123`."""
    digits = pa.array(np.arange(count, dtype=np.int64)).cast(pa.string())
    return pc.binary_join_element_wise(prefix, pc.utf8_lpad(digits, width=width, padding="0"), "")


def random_addresses(rng: np.random.Generator, first_octets: npt.NDArray[np.int64]) -> npt.NDArray[np.uint32]:
    """Distinct random host addresses (last octet 1..254) under the given first octets."""
    n = len(first_octets)
    addresses = np.zeros(n, dtype=np.int64)
    todo = np.arange(n)
    while len(todo):
        middle = rng.integers(0, 1 << 16, size=len(todo), dtype=np.int64)
        last = rng.integers(1, 255, size=len(todo), dtype=np.int64)
        addresses[todo] = (first_octets[todo] << 24) | (middle << 8) | last
        order = np.argsort(addresses, kind="stable")
        repeated = addresses[order[1:]] == addresses[order[:-1]]
        todo = np.sort(order[1:][repeated])  # later copies are drawn again
    return addresses.astype(np.uint32)
