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


def test_numbers_and_stamps_decode_as_feasts_decoders() -> None:
    """Every kind of numeric ValueProto Feast or the stream writes (varints of every length, negative ones in ten
    bytes), decoded for a whole column at once, equals `decode_value` per value; Timestamps equal `decode_ts`."""
    import math

    import numpy as np
    from google.protobuf.timestamp_pb2 import Timestamp

    from inference_api.domain.batch_lookup import numbers, stamps
    from pipelines.online_layout import decode_ts, decode_value

    protos = [Value(double_val=v) for v in (0.0, -0.0, 1.5, -2.25e-300, 1e308, math.inf, -math.inf, math.nan)]
    protos += [Value(float_val=v) for v in (0.0, 3.1415927, -1e-38)]
    protos += [Value(int64_val=v) for v in (0, 1, 127, 128, 300, -1, -(2**40), 2**53 + 1, 2**63 - 1, -(2**63))]
    protos += [Value(int64_val=1 << k) for k in range(0, 63, 3)]
    protos += [Value(int32_val=v) for v in (0, 5, -7, 2**31 - 1, -(2**31))]
    protos += [Value(bool_val=True), Value(bool_val=False), Value(unix_timestamp_val=1_764_633_600_123)]
    protos += [Value(null_val=Null.NULL), Value()]
    raw = [p.SerializeToString() for p in protos] + [b""]
    lengths = np.array([len(v) for v in raw], dtype=np.int64)
    buf = np.frombuffer(b"".join(raw) + bytes(160), dtype=np.uint8)
    values, odd = numbers(buf, np.cumsum(lengths) - lengths, lengths)
    assert not odd.any()
    for cell, got in zip(raw, values.tolist(), strict=True):
        want = decode_value(cell)
        expected = math.nan if want is None else float(want)
        same_sign = math.copysign(1, got) == math.copysign(1, expected)
        assert (math.isnan(got) and math.isnan(expected)) or (got == expected and same_sign), (cell, got, want)
    text = Value(string_val="m_1").SerializeToString()
    assert numbers(np.frombuffer(text + bytes(16), dtype=np.uint8), np.array([0]), np.array([len(text)]))[1].all()

    pairs = ((1_764_633_600, 0), (1_764_633_600, 123_000_000), (0, 5), (0, 0), (1, 999_999_999), (-5, 0), (300, 1))
    raw = [Timestamp(seconds=s, nanos=n).SerializeToString() for s, n in pairs] + [b""]
    lengths = np.array([len(v) for v in raw], dtype=np.int64)
    buf = np.frombuffer(b"".join(raw) + bytes(160), dtype=np.uint8)
    values, odd = stamps(buf, np.cumsum(lengths) - lengths, lengths)
    assert not odd.any()
    for cell, got in zip(raw, values.tolist(), strict=True):
        want = decode_ts(cell)
        assert (want is None and math.isnan(got)) or got == want, (cell, got, want)


def test_entity_commands_from_the_located_cells_are_the_python_ones() -> None:
    """`entity_reads` (the keys made unique with numpy, commands written from templates) sends the same HMGETs as
    `entity_commands` over Python bytes, grouped by key length within a group, and each transaction takes the reply
    of its own key; a key longer than 127 bytes sends the batch through `entity_commands` itself. Made for the key
    groups in two runs (the second trip's two writes), they are the same commands, widths, counts and gathers."""
    import random

    import numpy as np

    from inference_api.domain.batch_lookup import _halves, _Read, entity_reads

    plan = _plan()
    layout = layout_of(plan, ("amount",))
    rng = random.Random(2)
    for long_key in (False, True):
        cards = [f"card_{rng.randint(0, 30)}" if rng.random() < 0.9 else None for _ in range(60)]
        merchants = [rng.choice(["m1", "m_22", "m333", "merchant\n$5\r\n", None]) for _ in range(60)]
        if long_key:
            cards[7] = "c" * 300
        rows: list[list[bytes | None]] = [[None] * len(layout.fields) for _ in range(60)]
        for row, c, m in zip(rows, cards, merchants, strict=True):
            row[layout.fields["card_id"]] = None if c is None else _string(c)
            row[layout.fields["merchant_id"]] = None if m is None else _string(m)
            row[layout.fields["amount"]] = Value(double_val=rng.random()).SerializeToString()
        rows[3][layout.fields["merchant_id"]] = bytes(Value(null_val=Null.NULL).SerializeToString())
        cells = [cell for row in rows for cell in row]
        lengths = np.array([len(c or b"") for c in cells], dtype=np.int64)
        read = _Read(b"".join(c or b"" for c in cells), np.cumsum(lengths) - lengths, lengths)
        built = entity_reads(layout, PROJECT, read, len(rows))
        halves = [entity_reads(layout, PROJECT, read, len(rows), chosen) for chosen in _halves(len(layout.groups))]
        assert len(halves) == len(layout.groups) == 2  # the two writes of `_trips`: per group, the same reads
        assert np.concatenate([half.widths for half in halves]).tolist() == built.widths.tolist()
        assert [n for half in halves for n in half.counts] == built.counts
        in_halves = _split_commands(b"".join(c for half in halves for c in half.commands))
        in_one = _split_commands(b"".join(built.commands))
        for g, (mine, one) in enumerate(zip([x for h in halves for x in h.gathers], built.gathers, strict=True)):
            assert ((mine == -1) == (one == -1)).all()
            offset = sum(built.counts[:g])
            for row in np.flatnonzero(one >= 0).tolist():  # (a half may order a group's commands otherwise)
                assert in_halves[offset + mine[row]] == in_one[offset + one[row]]
        commands, gathers, spans = entity_commands(layout, PROJECT, rows)
        assert built.counts == [b - a for a, b in spans]
        widths = [g.width for g, (a, b) in zip(layout.groups, spans, strict=True) for _ in range(a, b)]
        assert built.widths.tolist() == widths
        replies = _split_commands(b"".join(built.commands))
        assert sorted(replies) == sorted(commands)
        for g, (gather, old) in enumerate(zip(built.gathers, gathers, strict=True)):
            a, _ = spans[g]
            offset = sum(built.counts[:g])
            for row in range(len(rows)):
                assert (gather[row] == -1) == (old[row] == -1)
                if old[row] != -1:
                    assert replies[offset + gather[row]] == commands[a + old[row]]


def _split_commands(sent: bytes) -> list[bytes]:
    """Packed RESP commands one by one (hiredis reads a command as it reads an array reply)."""
    import hiredis

    reader = hiredis.Reader()
    reader.feed(sent)
    out = []
    while (command := reader.gets()) is not False:
        out.append(b"".join(Connection().pack_command(*command)))
    return out


def test_transaction_commands_are_redis_pys_hmgets_on_feasts_keys() -> None:
    """Ids of one length written into one template, ids of several lengths and non-ASCII ids one by one: the
    bytes redis-py packs for each transaction's HMGET, in request order."""
    from inference_api.domain.batch_lookup import transaction_commands
    from pipelines.features.catalog import TRANSACTION_VIEW
    from pipelines.online_layout import key_prefix

    layout = layout_of(_plan(), ("amount",))
    pack = Connection().pack_command
    fields = [feature_field(TRANSACTION_VIEW, f) for f in layout.fields]
    prefix = key_prefix("transaction_id")
    for ids in (["tx_0001", "tx_0002", "tx_0001"], ["tx_1", "tx_22", "t"], ["tx_é1", "tx_a12"], ["tx_é1"]):
        expected = [b"".join(pack("HMGET", entity_key(PROJECT, "transaction_id", t, 3), *fields)) for t in ids]
        assert b"".join(transaction_commands(layout, prefix, PROJECT, ids)) == b"".join(expected)
