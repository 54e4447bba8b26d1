"""A bounded schemathesis fuzz of the whole HTTP API, from its own /openapi.json, against a real deployment.

Every operation gets positive (schema-valid) and negative (schema-violating) requests; a 5xx, an undocumented
status, content type or response body that does not match its documented schema fails the test. The run is
seeded and bounded so that it is repeatable and takes tens of seconds on two cores.

The admin operations that change the registry (promote, rollback, reload) run last, against this module's own
throwaway registry, so that they cannot change what the read-only operations see.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from fraudserve.models.manifest import Flavor
from tests.api_server import ApiServer
from tests.deployment import Deployment, deploy

EXAMPLES = 25  # per operation and generation mode
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
MUTATING = ("/promote", "/rollback", "/reload")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deploy(tmp_path_factory.mktemp("fuzz"), flavors=(Flavor.lightgbm,)) as built:
        yield built


def _fuzz(operation: schemathesis.APIOperation, mode: GenerationMode, session: requests.Session,
          found: dict[str, str]) -> int:  # fmt: skip
    calls = 0

    @hypothesis.settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case) -> None:
        nonlocal calls
        calls += 1
        try:
            case.call_and_validate(session=session, checks=CHECKS, timeout=30)
        except FailureGroup as group:
            for failure in group.exceptions:
                key = f"{operation.label} [{mode.value}] {failure.title}"
                found.setdefault(key, f"{failure.message}\n{case.as_curl_command()}")

    with contextlib.suppress(hypothesis.errors.Unsatisfiable):  # nothing to negate: positive mode covers it
        run()
    return calls


def test_fuzz_finds_no_server_error_and_no_schema_violation(deployment: Deployment, tmp_path: Path) -> None:
    with ApiServer(deployment.settings) as server:
        schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        operations.sort(key=lambda op: any(op.path.endswith(m) for m in MUTATING))  # mutating ones last
        found: dict[str, str] = {}
        calls = 0
        started = time.perf_counter()
        with requests.Session() as session:
            for operation in operations:
                for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                    calls += _fuzz(operation, mode, session, found)
        seconds = time.perf_counter() - started
    print(f"\nfuzzed {len(operations)} operations with {calls} calls in {seconds:.1f} s; {len(found)} problem(s)")
    report = "\n\n".join(f"{key}\n{detail}" for key, detail in sorted(found.items()))
    assert not found, report
