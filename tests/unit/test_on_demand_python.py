"""A python-mode on-demand view computed by `OnDemandRead.python_values` gives what Feast's own code gives
(`transform_dict`, then each output to a ValueProto of the schema's type and back), value for value and type for
type, on real Feast objects; other modes are left to Feast's code (None)."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import pandas as pd
import pytest
from feast import Entity, FeatureView, Field, FileSource, RequestSource
from feast.on_demand_feature_view import OnDemandFeatureView, on_demand_feature_view
from feast.type_map import feast_value_type_to_python_type, python_values_to_proto_values
from feast.types import Float64, Int64, String

from inference_api.domain.plan import OnDemandRead

merchant = Entity(name="merchant", join_keys=["merchant_id"])
risk = FeatureView(
    name="merchant_risk",
    entities=[merchant],
    ttl=timedelta(days=1),
    schema=[Field(name="merchant_risk_score", dtype=Float64), Field(name="chargebacks", dtype=Int64)],
    source=FileSource(path="unused.parquet", timestamp_field="ts"),
)
request = RequestSource(name="txn", schema=[Field(name="amount", dtype=Float64)])


@on_demand_feature_view(
    sources=[risk, request],
    schema=[
        Field(name="amount_times_risk", dtype=Float64),
        Field(name="risky", dtype=Int64),
        Field(name="band", dtype=String),
        Field(name="odd", dtype=Float64),  # ints and a bool-free mix: Feast's conversion
        Field(name="echo", dtype=Float64),  # an input passed through by name
    ],
    mode="python",
)
def mixed(inputs: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, list[Any]] = {"amount_times_risk": [], "risky": [], "band": [], "odd": []}
    for amount, score, full in zip(inputs["amount"], inputs["merchant_risk_score"],
                                   inputs["merchant_risk__merchant_risk_score"], strict=True):  # fmt: skip
        assert score is full  # both names of a source feature are given
        known = amount is not None and score is not None
        out["amount_times_risk"].append(amount * score if known else None)
        out["risky"].append(1 if known and score > 0.5 else 0)
        out["band"].append(None if amount is None else ("high" if amount > 100 else "low"))
        out["odd"].append(3 if amount is None else amount)
    out["echo"] = inputs["amount"]
    return out


@on_demand_feature_view(sources=[risk, request], schema=[Field(name="x", dtype=Float64)], mode="pandas")
def framed(inputs: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"x": inputs["amount"]})


def _read(odfv: OnDemandFeatureView, features: tuple[str, ...]) -> OnDemandRead:
    schema = {f.name: f.dtype for f in odfv.features}
    types = tuple(schema[f].to_value_type() for f in features)
    inputs = (("merchant_risk", "merchant_risk_score"), ("merchant_risk", "chargebacks"))
    return OnDemandRead(odfv.name, odfv, features, inputs, ("amount",), ("transaction_id", "merchant_id"), types)


def _feasts(read: OnDemandRead, inputs: dict[str, list[Any]]) -> dict[str, list[Any]]:
    outputs = read.odfv.transform_dict(inputs)
    result = {}
    for name, kind in zip(read.features, read.types, strict=True):
        values = outputs[name]
        values = values if isinstance(values, list) else [values]
        result[name] = [feast_value_type_to_python_type(p) for p in python_values_to_proto_values(values, kind)]
    return result


def _same(got: Any, want: Any) -> bool:
    if isinstance(want, float) and isinstance(got, float):
        return (math.isnan(got) and math.isnan(want)) or (
            got == want and math.copysign(1, got) == math.copysign(1, want)
        )
    return type(got) is type(want) and got == want


@pytest.mark.parametrize(
    "amounts, scores",
    [
        ([150.0, 20.0, None, 0.0, -0.0], [0.9, 0.1, 0.7, None, 0.6]),
        ([math.nan, 1e308, 5.5], [0.5, 2.0, math.nan]),
        ([None], [None]),
        ([], []),
    ],
)
def test_python_values_equal_feasts_transformation(amounts: list[Any], scores: list[Any]) -> None:
    read = _read(mixed, ("amount_times_risk", "risky", "band", "odd", "echo"))
    inputs = {
        "transaction_id": [f"t{i}" for i in range(len(amounts))],
        "merchant_id": [f"m{i}" for i in range(len(amounts))],
        "merchant_risk_score": scores,
        "chargebacks": [i for i in range(len(amounts))],
        "amount": amounts,
    }
    got = read.python_values(inputs)
    want = _feasts(read, inputs)
    assert got is not None and list(got) == list(want)
    for name in want:
        assert len(got[name]) == len(want[name]), name
        for g, w in zip(got[name], want[name], strict=True):
            assert _same(g, w), (name, g, w)


def test_other_modes_are_left_to_feasts_code() -> None:
    assert _read(framed, ("x",)).python_values({"amount": [1.0]}) is None
