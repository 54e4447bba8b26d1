"""The API's entity keys are byte-equal to Feast's own `serialize_entity_key` (v3) for the same ids."""

from __future__ import annotations

import pytest

from pipelines.online_layout import entity_key, key_prefix


@pytest.mark.parametrize("join_key", ["transaction_id", "card_id", "merchant_id", "device_id", "ip_address"])
@pytest.mark.parametrize("value", ["tx_0001_0000001", "c", "10.0.0.1", "ünïcödé-id", "x" * 300])
def test_key_from_the_cached_prefix_equals_feasts(join_key: str, value: str) -> None:
    raw = value.encode()
    ours = key_prefix(join_key) + len(raw).to_bytes(4, "little") + raw + b"fraudserve"
    assert ours == entity_key(b"fraudserve", join_key, value)
