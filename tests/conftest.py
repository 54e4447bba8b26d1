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


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The fault-injection suite's totals (tests/integration/test_faults.py), when it ran."""
    from tests.fault_summary import SUMMARY

    if SUMMARY.faults or SUMMARY.requests:
        terminalreporter.section("fault injection")
        for line in SUMMARY.lines():
            terminalreporter.write_line(line)
