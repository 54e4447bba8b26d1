from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redis_process import RedisProcess


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisProcess]:
    """A fresh redis-server of this test's own, on a free port."""
    server = RedisProcess(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()
