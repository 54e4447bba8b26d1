from __future__ import annotations

import os
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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under CI (CI=true) a skipped test is a failure: .ci/run installs every service and package the tests need, so
    a skip there (no chromium, no MLflow server, no C compiler) would hide a broken set-up. Locally it stays a skip."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if os.environ.get("CI", "").lower() in ("1", "true") and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, which must provide what this test needs: {report.longrepr}"
