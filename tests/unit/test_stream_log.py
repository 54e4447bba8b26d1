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


class _Message:
    """What `_one_partition` reads of a confluent_kafka Message: its topic and partition."""

    def __init__(self, topic: str, partition: int) -> None:
        self._topic, self._partition = topic, partition

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition


def test_a_large_read_is_cut_at_the_end_of_its_first_partitions_run() -> None:
    from pipelines.stream.kafka_log import _one_partition

    def messages(*runs: tuple[str, int, int]) -> list[_Message]:
        return [_Message(topic, partition) for topic, partition, n in runs for _ in range(n)]

    def shape(batch: list[_Message]) -> list[tuple[str, int]]:
        return [(m.topic(), m.partition()) for m in batch]

    # the first run fills half the read or more: the batch is that run, the rest held in order
    batch, held = _one_partition(messages(("tx", 0, 5), ("tx", 1, 3), ("labels", 0, 2)), 10)
    assert shape(batch) == [("tx", 0)] * 5 and shape(held) == [("tx", 1)] * 3 + [("labels", 0)] * 2
    # a short first run (a partition's tail, or a steady rate's few events of each): the read stays whole
    batch, held = _one_partition(messages(("tx", 0, 4), ("tx", 1, 6)), 10)
    assert len(batch) == 10 and held == []
    # one partition only, or nothing: nothing held
    assert [len(part) for part in _one_partition(messages(("tx", 2, 7)), 10)] == [7, 0]
    assert _one_partition([], 10) == ([], [])
    # more than the read asks for (held from a larger read): at most `count`, the topic counts in the run
    batch, held = _one_partition(messages(("tx", 0, 6), ("labels", 0, 6)), 4)
    assert shape(batch) == [("tx", 0)] * 4 and shape(held) == [("tx", 0)] * 2 + [("labels", 0)] * 6
