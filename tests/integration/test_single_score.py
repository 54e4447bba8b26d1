"""The single score's own path (inference_api/domain/single.py) gives what the general path (`score_requests`)
gives, and the lean route's body writer (`score_bytes`) the bytes of `json.dumps(score_body(...))`, on a real Redis
and Feast: batch_scoring's deployment, with transactions without a device or an IP, cards
older than the card view's TTL (uncertain) and unknown ids."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from inference_api.domain.scoring import Score, score_requests
from inference_api.domain.single import plain, score_singles
from inference_api.routes.fast_score import score_bytes
from inference_api.routes.fraud import score_body
from tests.integration import test_batch_scoring
from tests.integration.test_batch_scoring import Online

online = test_batch_scoring.online  # its deployment fixture (module scope: built once for this module)


def _same(single: Any, general: Any) -> None:
    if not isinstance(general, Score):
        assert type(single) is type(general) and single.details == general.details
        return
    assert isinstance(single, Score)
    for field in ("transaction_id", "score", "label", "reasons", "uncertain_reasons", "role"):
        assert getattr(single, field) == getattr(general, field), field
    assert single.model is general.model and single.shadow is None and general.shadow is None
    assert single.vector is not None and general.vector is not None
    assert np.array_equal(single.vector, general.vector, equal_nan=True)
    # seconds since the features' time, read a moment apart
    if general.feature_freshness_seconds is None:
        assert single.feature_freshness_seconds is None
    else:
        assert single.feature_freshness_seconds is not None
        assert abs(single.feature_freshness_seconds - general.feature_freshness_seconds) < 30


def test_the_single_path_scores_every_batch_as_score_requests(online: Online) -> None:
    from fastapi.testclient import TestClient

    from inference_api.app import create_app

    app = create_app(online.settings)
    with TestClient(app) as client:
        service = app.state.scoring
        assert not service.models.production().plan.on_demand
        ids = [*online.ids, "missing-1", online.ids[3], "missing-2"]
        batches = [ids[i : i + size] for size in (1, 3, 8) for i in range(0, len(ids), size)]
        labels: set[str] = set()
        uncertain = missing = 0
        for batch in batches:
            requests = [(t, None) for t in batch]
            assert plain(service, requests)
            single = client.portal.call(score_singles, service, requests)  # type: ignore[union-attr]
            general = client.portal.call(score_requests, service, requests)  # type: ignore[union-attr]
            assert len(single) == len(general) == len(batch)
            for a, b in zip(single, general, strict=True):
                _same(a, b)
                if isinstance(b, Score):
                    assert score_bytes(b) == json.dumps(score_body(b), allow_nan=False).encode()  # the lean body
                    labels.add(b.label)
                    uncertain += bool(b.uncertain_reasons)
                else:
                    missing += 1
        assert "uncertain" in labels and len(labels) >= 2 and uncertain and missing == 6


def test_a_batch_with_an_inline_transaction_takes_the_general_path(online: Online) -> None:
    from datetime import UTC, datetime

    from fastapi.testclient import TestClient

    from inference_api.app import create_app

    inline = {"transaction_id": "inline-single", "card_id": "c4", "merchant_id": "m3", "amount": 7.5,
              "currency": "USD", "merchant_category": "5411", "country": "US",
              "event_timestamp": datetime.now(UTC).isoformat()}  # fmt: skip
    app = create_app(online.settings)
    with TestClient(app) as client:
        service = app.state.scoring
        requests = [(online.ids[0], None), (None, inline)]
        assert not plain(service, requests)
        single = client.portal.call(score_singles, service, requests)  # type: ignore[union-attr]
        general = client.portal.call(score_requests, service, requests)  # type: ignore[union-attr]
        for a, b in zip(single, general, strict=True):
            _same(a, b)
        body = client.post("/v1/fraud/score", json={"transaction_id": online.ids[5]})
        assert body.status_code == 200 and body.json()["transaction_id"] == online.ids[5]


def test_the_lookup_over_redis_pys_connections_reads_the_same_records(online: Online) -> None:
    """A connection string that `LookupConnections` does not serve (TLS, a credential provider) keeps the lookup on
    redis-py's connections (`RedisFeatureSource._evalsha`): the same records as the protocol connections give."""
    from fastapi.testclient import TestClient

    from inference_api.app import create_app
    from inference_api.domain.redis_source import RedisFeatureSource

    app = create_app(online.settings)
    with TestClient(app) as client:
        source = app.state.scoring.source
        assert isinstance(source, RedisFeatureSource) and source._lookup is not None
        plan = app.state.scoring.models.production().plan
        ids = [*online.ids[:40], "missing-1"]
        ours = client.portal.call(source.transactions, ids, plan)  # type: ignore[union-attr]
        lookup, source._lookup = source._lookup, None
        try:
            theirs = client.portal.call(source.transactions, ids, plan)  # type: ignore[union-attr]
        finally:
            source._lookup = lookup
    assert ours[-1] is None and theirs[-1] is None
    for a, b in zip(ours, theirs, strict=True):
        assert a == b
        if a is not None and b is not None:
            assert a.views == b.views and a.views_plan is b.views_plan
