"""A bounded schemathesis fuzz of the whole HTTP API, from its own /openapi.json, against a real deployment.

Every operation gets positive (schema-valid) and negative (schema-violating) requests; a 5xx, an undocumented
status, content type or response body that does not match its documented schema fails the test. The run is
seeded and bounded so that it is repeatable and takes tens of seconds on two cores.

After that, with an API key configured, each operation is called without a key and with a key of too small a
scope: 401 and 403 must be documented and rendered as SPEC errors too.

The admin operations that change the registry (promote, rollback, reload) run last, against this module's own
throwaway registry, so that they cannot change what the read-only operations see.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterator

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
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from core.keys import KeyStore, Scope
from core.models.manifest import Flavor
from tests.api_server import ApiServer
from tests.deployment import Deployment, deploy

# A model package is a gzipped tar: sent as raw bytes, like any binary body (random bytes, and refused as such).
schemathesis.serializer.alias("application/gzip", "application/octet-stream")
EXAMPLES = 25  # per operation and generation mode
AUTH_EXAMPLES = 5  # per operation, with and without an API key
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,  # what the schema forbids, the API rejects (4xx): the schema's limits are enforced
]
# An explicit configuration, so that no schemathesis.toml found on the way changes the run. A request over a limit
# may be rejected as too large (413) before its content is looked at.
CONFIG = schemathesis.Config.from_dict(
    {"checks": {"negative_data_rejection": {"expected-statuses": [400, 401, 403, 404, 405, 413, 415, 422]}}}
)
MUTATING = ("/promote", "/rollback", "/reload", "/versions")
REGISTERED = {"name": "fraud", "version": 1}  # the deployment's model


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deploy(tmp_path_factory.mktemp("fuzz"), flavors=(Flavor.lightgbm,)) as built:
        yield built


def _fuzz(operation: schemathesis.APIOperation, mode: GenerationMode, session: requests.Session,
          statuses: Counter[int], found: dict[str, str], known: dict[str, object] | None = None,
          examples: int = EXAMPLES, headers: dict[str, str] | None = None) -> None:  # fmt: skip
    """Up to `examples` requests for one operation in one mode; every check failure is recorded, none stops the run.

    `known`: path parameters fixed to a registered model, so that requests get past the lookup to the model.
    `headers`: sent with every request (an API key)."""

    @hypothesis.settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,  # the same requests on every run
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: bounded time, and the failing request is reported
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode, path_parameters=known))
    def run(case: schemathesis.Case) -> None:
        try:
            response = case.call(session=session, headers=headers, timeout=30)
            statuses[response.status_code] += 1
            case.validate_response(response, checks=CHECKS)
        except FailureGroup as group:
            for failure in group.exceptions:
                how = ", ".join([mode.value, *([str(known)] if known else []), *(headers or {})])
                key = f"{operation.label} [{how}] {failure.title}"
                found.setdefault(key, f"{failure.message}\n{case.as_curl_command()[:2000]}")

    with contextlib.suppress(hypothesis.errors.Unsatisfiable):  # nothing to negate: positive mode covers it
        run()


def test_fuzz_finds_no_server_error_and_no_schema_violation(deployment: Deployment) -> None:
    with ApiServer(deployment.settings) as server:
        schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json", config=CONFIG)
        operations = [result.ok() for result in schema.get_all_operations()]
        operations.sort(key=lambda op: any(op.path.endswith(m) for m in MUTATING))  # mutating ones last
        found: dict[str, str] = {}
        statuses: Counter[int] = Counter()
        started = time.perf_counter()
        with requests.Session() as session:
            for operation in operations:
                for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                    _fuzz(operation, mode, session, statuses, found)
                known = {k: v for k, v in REGISTERED.items() if "{" + k + "}" in operation.path}
                if known:
                    _fuzz(operation, GenerationMode.POSITIVE, session, statuses, found, known)
            # Once a key exists: without one (401), and with a key of the `score` scope only (403 but on /v1/fraud).
            keys = KeyStore(deployment.settings.keys_file)
            try:
                _, score_key = keys.create("fuzz", [Scope.score])
                for operation in operations:
                    for headers in ({}, {"X-API-Key": score_key}):
                        positive = GenerationMode.POSITIVE
                        _fuzz(operation, positive, session, statuses, found, None, AUTH_EXAMPLES, headers)
            finally:
                deployment.settings.keys_file.unlink(missing_ok=True)
        seconds = time.perf_counter() - started
    calls = sum(statuses.values())
    print(f"\nfuzzed {len(operations)} operations with {calls} calls in {seconds:.1f} s "
          f"(statuses {dict(sorted(statuses.items()))}); {len(found)} problem(s)")  # fmt: skip
    report = "\n\n".join(f"{key}\n{detail}" for key, detail in sorted(found.items()))
    assert not found, report
    assert all(statuses[s] > 0 for s in (200, 401, 403, 404, 422))  # scored, refused, not found and rejected
