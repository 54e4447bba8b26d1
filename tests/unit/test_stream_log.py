"""Stream partitioning: stable, by card for transactions, one hash tag per partition."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from pipelines.stream.log import EVENTS, RedisStreamLog, partition_keys, partition_of


def test_one_partition_is_the_plain_stream() -> None:
    assert partition_keys(EVENTS, 1) == [EVENTS]
    assert partition_of("transaction", {"card_id": "c1"}, 1) == 0


def test_a_cards_transactions_share_a_partition_and_labels_go_by_transaction() -> None:
    first = partition_of("transaction", {"card_id": "c1", "transaction_id": "t1"}, 8)
    assert all(partition_of("transaction", {"card_id": "c1", "transaction_id": f"t{i}"}, 8) == first for i in range(50))
    spread = {partition_of("transaction", {"card_id": f"c{i}"}, 8) for i in range(200)}
    assert spread == set(range(8))
    assert {partition_of("label", {"transaction_id": f"t{i}"}, 8) for i in range(200)} == set(range(8))


def test_partition_keys_hash_to_different_cluster_slots() -> None:
    keys = partition_keys(EVENTS, 4)
    assert keys == ["fraudserve:events:{0}", "fraudserve:events:{1}", "fraudserve:events:{2}", "fraudserve:events:{3}"]
    assert len({key_slot(k.encode()) for k in keys}) == 4


def test_zero_partitions_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RedisStreamLog(None, partitions=0)  # type: ignore[arg-type]
