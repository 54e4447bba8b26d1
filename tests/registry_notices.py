"""A promotion reaches a running API through the registry's change notices, not its poll (shared by the single
Redis and the Redis Cluster tests)."""

from __future__ import annotations

import time

import httpx

from core.registry.notices import NOTICES
from core.settings import Settings
from tests.api_server import ApiServer
from tests.deployment import Deployment


def served_version(url: str, transaction_id: str) -> int:
    response = httpx.post(f"{url}/v1/fraud/score", json={"transaction_id": transaction_id}, timeout=30)
    assert response.status_code == 200, response.text
    return int(response.json()["model"]["version"])


def assert_promotion_arrives_by_notice(deployment: Deployment, client: object) -> None:
    """With a 10-minute poll, only a notice can make the API serve a newly promoted version within seconds."""
    settings: Settings = deployment.settings.model_copy(update={"model_poll_seconds": 600.0})
    registry = deployment.registry
    before = registry.get("fraud").version
    with ApiServer(settings) as server:
        assert served_version(server.url, deployment.recent[0]) == before
        time.sleep(0.5)  # the follower's first blocking read is in place
        added = registry.register(deployment.packages[-1], name="fraud", feature_service="fraud_v2")
        registry.promote("fraud", added.version)
        deadline = time.monotonic() + 10
        version = before
        while time.monotonic() < deadline and version != added.version:
            time.sleep(0.1)
            version = served_version(server.url, deployment.recent[0])
        assert version == added.version, "the promotion did not reach the API within 10 s (poll is 600 s)"
        notices = client.xrange(NOTICES, "-", "+")  # type: ignore[attr-defined]
        changes = [(f[b"model"].decode(), f[b"change"].decode(), int(f[b"version"])) for _, f in notices]
        assert ("fraud", "register", added.version) in changes
        assert changes[-1] == ("fraud", "promote:production", added.version)
        registry.rollback("fraud")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and version != before:
            time.sleep(0.1)
            version = served_version(server.url, deployment.recent[0])
        assert version == before, "the rollback did not reach the API within 10 s"
