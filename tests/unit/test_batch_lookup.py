"""score:batch's lookup without Lua: the RESP it packs by hand is redis-py's for the same HMGET, and the entity keys
it derives from stored join keys are Feast's (tests/integration/test_batch_scoring.py reads a real Redis with it)."""

from __future__ import annotations

from feast.protos.feast.types.Value_pb2 import Null, Value
from redis.asyncio.connection import Connection

from inference_api.domain.batch_lookup import entity_commands, layout_of, string_val
from inference_api.domain.plan import FeaturePlan, ViewRead
from pipelines.features.catalog import EntitySpec
from pipelines.online_layout import entity_key, feature_field, ts_field

PROJECT = b"fraud_demo"


def _plan() -> FeaturePlan:
    card, merchant = EntitySpec("card", "card_id"), EntitySpec("merchant", "merchant_id")
    views = (
        ViewRead("card_features", card, "window", None, ("card_txn_count_1h", "card_amount_mean_7d")),
        ViewRead("merchant_features", merchant, "window", None, ("merchant_fraud_rate_30d",)),
        ViewRead("merchant_profile", merchant, "batch", None, ("merchant_age_days",)),  # same hash, one HMGET
    )
    features = ("card_txn_count_1h", "merchant_fraud_rate_30d", "merchant_age_days", "amount")
    return FeaturePlan("svc", features, views, ("amount",), ())


def _string(value: str) -> bytes:
    return bytes(Value(string_val=value).SerializeToString())


def test_join_key_values_are_read_as_the_lookup_script_reads_them() -> None:
    """A stored string_val of any length (a two-byte varint above 127 bytes); nothing for an empty string, Feast's
    null, another kind of value or broken bytes."""
    for value in ("m1", "x" * 127, "y" * 128, "z" * 20_000, "é"):
        assert string_val(_string(value)) == value.encode()
    for raw in (_string(""), bytes(Value(null_val=Null.NULL).SerializeToString()), Value(int64_val=5), b"\x12"):
        assert string_val(raw if isinstance(raw, bytes) else raw.SerializeToString()) is None


def test_packed_commands_are_redis_pys_hmgets_on_feasts_keys() -> None:
    """Each unique entity of the batch is one HMGET (Feast's v3 key, the views' hashed fields and timestamps), the
    bytes redis-py would send; transactions sharing a merchant share its read, and a transaction without a card,
    with a null key or with a long one takes what its value says."""
    plan = _plan()
    layout = layout_of(plan, ("amount",))
    assert list(layout.fields) == ["card_id", "merchant_id", "amount"]
    card, merchant = layout.fields["card_id"], layout.fields["merchant_id"]
    long_card = "c" * 300
    rows: list[list[bytes | None]] = [[None] * len(layout.fields) for _ in range(5)]
    pairs = [("c1", "m1"), ("c2", "m1"), (long_card, "m2"), (None, None), ("c1", None)]
    for row, (c, m) in zip(rows, pairs, strict=True):
        row[card] = None if c is None else _string(c)
        row[merchant] = None if m is None else _string(m)
    rows[4][merchant] = bytes(Value(null_val=Null.NULL).SerializeToString())
    commands, gathers, spans = entity_commands(layout, PROJECT, rows)

    pack = Connection().pack_command
    card_fields = [feature_field("card_features", f) for f in plan.views[0].features]
    merchant_fields = [feature_field("merchant_features", "merchant_fraud_rate_30d")]
    merchant_fields += [ts_field("merchant_features"), feature_field("merchant_profile", "merchant_age_days")]
    merchant_fields += [ts_field("merchant_profile")]
    expected = [
        b"".join(pack("HMGET", entity_key(PROJECT, "card_id", c, 3), *card_fields, ts_field("card_features")))
        for c in ("c1", "c2", long_card)
    ] + [b"".join(pack("HMGET", entity_key(PROJECT, "merchant_id", m, 3), *merchant_fields)) for m in ("m1", "m2")]
    assert commands == expected
    assert spans == [(0, 3), (3, 5)]
    assert gathers[0].tolist() == [0, 1, 2, -1, 0]  # the card of each transaction; none for the fourth
    assert gathers[1].tolist() == [0, 0, 1, -1, -1]  # m1 read once; a null merchant is not a key
