"""The operator console in a real headless Chromium (Debian's `chromium`, driven by Playwright for Python) against a
real API on a real deployment: what it shows, promote and rollback by clicks, the admin key, and that the page asks
nothing of any host but the API's."""

from __future__ import annotations

import shutil
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from core.models.manifest import MANIFEST_FILE, Flavor, Manifest
from fraudserve.mlflow_models import register_mlflow
from tests.api_server import ApiServer
from tests.deployment import Deployment, deploy, serve_workers

playwright_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python (pip install -e '.[dev]')")
CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium: apt-get install chromium (Debian)")
WAIT_MS = 30_000  # a loaded CI machine: the traffic chart needs four looks, 3 s apart


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deploy(tmp_path_factory.mktemp("console"), flavors=(Flavor.lightgbm,)) as built:
        yield built


SERVERS: dict[str, ApiServer] = {}  # by URL: a failed wait shows the API's model manager (served_version)


@pytest.fixture(scope="module")
def api(deployment: Deployment) -> Iterator[str]:
    settings = deployment.settings.model_copy(update={"score_log_flush_seconds": 0.5})
    with ApiServer(settings) as server:
        SERVERS[server.url] = server
        yield server.url
        del SERVERS[server.url]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield launched
        launched.close()


class Page:
    """A fresh browser context on the console; every request it makes is recorded, and one to any host but the
    API's is aborted and counted as a failure."""

    def __init__(self, browser: Any, api: str) -> None:
        self.api = api
        self.context = browser.new_context(viewport={"width": 1280, "height": 800})
        self.requests: list[dict[str, Any]] = []
        self.foreign: list[str] = []
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.set_default_timeout(WAIT_MS)

    def _route(self, route: Any) -> None:
        request = route.request
        url = urlsplit(request.url)
        self.requests.append({"url": request.url, "headers": request.headers})
        if f"{url.scheme}://{url.netloc}" != self.api:
            self.foreign.append(request.url)
            route.abort()
            return
        route.continue_()

    def open(self) -> Any:
        self.page.goto(f"{self.api}/console")
        return self.page


@pytest.fixture
def console(browser: Any, api: str) -> Iterator[Page]:
    page = Page(browser, api)
    yield page
    page.context.close()
    assert page.foreign == [], f"the console asked hosts other than the API: {page.foreign}"
    assert any(r["url"].endswith("/v1/admin/console/traffic") for r in page.requests)


def score(api: str, transaction_id: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    response = httpx.post(f"{api}/v1/fraud/score", json={"transaction_id": transaction_id}, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def version_row(page: Any, version: int, alias: str | None = None) -> Any:
    """Model fraud's table row of one version (its cell reads exactly `v2`: the feature service `fraud_v2` of every row
    must not match), with that alias when one is given (its alias badge, not a button's text)."""
    row = page.locator('[data-model="fraud"] tr').filter(has=page.get_by_text(f"v{version}", exact=True))
    return row if alias is None else row.filter(has=page.locator(f".alias.{alias}"))


def served_version(api: str, deployment: Deployment, wanted: int) -> int:
    # The API follows the registry by notice (or its poll); a loaded CI machine once needed more than 15 s, and a
    # fresh-clone CI run more than 60 s once (the whole suite running beside it).
    deadline = time.monotonic() + 120
    started = time.monotonic()
    version = score(api, deployment.recent[0])["model"]["version"]
    while version != wanted and time.monotonic() < deadline:
        time.sleep(0.2)
        version = score(api, deployment.recent[0])["model"]["version"]
    if version != wanted:  # say why: the manager's last error, its swaps and failures, the registry's production
        state = SERVERS[api].app.state.models.state
        registered = deployment.registry.get("fraud", "production").version
        raise AssertionError(
            f"the API served version {version}, not {wanted}, {time.monotonic() - started:.0f} s after asking; "
            f"registry production: {registered}; manager: production "
            f"{state.production.version if state.production else None}, swaps {state.swaps}, failures "
            f"{state.failures}, last error {state.last_error!r}, loaded {list(state.by_version)}"
        )
    return int(version)


def test_models_traffic_features_and_quality(deployment: Deployment, api: str, console: Page) -> None:
    page = console.open()
    model = page.locator('[data-model="fraud"]')
    version_row(page, 1, "production").wait_for()
    row = model.locator("tr", has_text="production").first.inner_text()
    assert "lightgbm" in row and "fraud_v2" in row and "ROC-AUC 0." in row and "serving" in row and "ok" in row
    assert "production v1" in page.locator("#serving").inner_text()
    assert "canary 0 % of requests" in page.locator("#serving").inner_text()

    # Live traffic: scores sent now appear as a rate, latency and label mix for version 1, and as a drawn line.
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            for transaction_id in deployment.recent[:10]:
                score(api, transaction_id)
            time.sleep(0.1)

    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    try:
        page.locator("#traffic tr", has_text="fraud v1").wait_for()
        page.wait_for_function(
            "() => [...document.querySelectorAll('#traffic-svg path.series')].some(p => p.getAttribute('d')"
            ".split('L').length > 2)"
        )
    finally:
        stop.set()
        sender.join()
    line = page.locator("#traffic tr", has_text="fraud v1").inner_text()
    assert "production" in line and "/s" in line and " ms" in line and "not fraud" in line
    per_second = float(line.split("\t")[2].removesuffix("/s"))
    assert per_second > 0

    features = page.locator("#features")
    features.locator("tr", has_text="transaction_features").wait_for()
    text = features.inner_text()
    assert "fresh" in text or "older than TTL" in text  # materialized rows have an age
    assert "ago" in text and "card_id" in text
    assert "Stream (redis)" in page.locator("#stream").inner_text()

    # Quality: the scores logged just now, in the report (the page reads it at start: load it again).
    page.reload()
    version = page.locator('.quality-version[data-version="1"]')
    version.wait_for()
    assert "scores;" in version.inner_text()
    assert version.locator("svg").count() >= 1

    # A narrow window: one column, nothing wider than the window (wide tables scroll inside their panel).
    page.set_viewport_size({"width": 400, "height": 800})
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 400


def mlflow_folder(package: Path, into: Path) -> Path:
    """A local MLflow model folder (what `mlflow.lightgbm.save_model` writes: MLmodel and the native file) holding
    the package's LightGBM model."""
    manifest = Manifest.model_validate_json((package / MANIFEST_FILE).read_text())
    into.mkdir()
    shutil.copy(package / manifest.model_file, into / manifest.model_file)
    document = {"flavors": {"lightgbm": {"data": manifest.model_file, "model_class": "lightgbm.basic.Booster"}},
                "run_id": "5f0c1a2b3d4e4f60718293a4b5c6d7e8", "mlflow_version": "3.17.2"}  # fmt: skip
    (into / "MLmodel").write_text(yaml.safe_dump(document))
    return into


def test_promote_and_rollback_by_clicks(deployment: Deployment, api: str, console: Page, tmp_path: Path) -> None:
    # Version 2 comes from MLflow: the models table shows where from.
    folder = mlflow_folder(deployment.packages[0], tmp_path / "mlflow-model")
    candidate = register_mlflow(
        str(folder), name="fraud", feature_service="fraud_v2", thresholds=(0.3, 0.8), settings=deployment.settings,
        registry=deployment.registry,
    )  # fmt: skip
    assert candidate.version == 2 and "candidate" in candidate.aliases
    assert served_version(api, deployment, 1) == 1
    page = console.open()
    row = version_row(page, 2, "candidate")
    row.wait_for()
    source = row.locator(".source").inner_text()
    assert str(folder) in source and "run 5f0c1a2b3d4e4f60718293a4b5c6d7e8" in source and "MLflow 3.17.2" in source
    assert "package" in version_row(page, 1).inner_text()
    promote = page.locator('button[data-action="promote"][data-version="2"]')
    promote.click()
    assert "Promote fraud version 2" in page.locator("#confirm-text").inner_text()
    page.locator("#confirm-cancel").click()  # cancelled: nothing changes
    time.sleep(1)
    assert served_version(api, deployment, 1) == 1

    promote.click()
    page.locator("#confirm-ok").click()
    version_row(page, 2, "production").wait_for()
    assert served_version(api, deployment, 2) == 2

    page.locator('button[data-action="rollback"][data-model="fraud"]').click()
    assert "Roll fraud back" in page.locator("#confirm-text").inner_text()
    page.locator("#confirm-ok").click()
    version_row(page, 1, "production").wait_for()
    history = httpx.get(f"{api}/v1/admin/models/fraud").json()["alias_history"]
    assert served_version(api, deployment, 1) == 1, history
    moves = [(h["from"], h["to"], h["reason"]) for h in history if h["alias"] == "production"]
    assert moves == [(None, 1, "first version"), (1, 2, "promote"), (2, 1, "rollback")]  # one click, one move


def test_an_admin_key_is_asked_once_and_a_wrong_one_refused(deployment: Deployment, api: str, console: Page) -> None:
    from core.keys import KeyStore, Scope

    keys = KeyStore(deployment.settings.keys_file)
    try:
        _, admin_key = keys.create("console-ops", [Scope.admin, Scope.score])
        _, score_key = keys.create("console-service", [Scope.score])
        page = console.open()
        page.locator("#login").wait_for()
        assert page.locator("#panels").is_hidden()
        for wrong, status in (("fs_0000_nope", "401"), (score_key, "403")):
            page.fill("#key", wrong)
            page.click("#login button[type=submit]")
            page.locator("#login-error", has_text=f"That key was refused ({status}").wait_for()
            assert page.locator("#panels").is_hidden()
            assert page.evaluate("() => sessionStorage.length") == 0  # a refused key is not kept
        page.fill("#key", admin_key)
        page.click("#login button[type=submit]")
        page.locator('[data-model="fraud"] tr', has_text="production").first.wait_for()
        assert page.locator("#login").is_hidden()
        page.reload()  # asked once: the tab keeps the key
        page.locator('[data-model="fraud"] tr', has_text="production").first.wait_for()
        assert page.locator("#login").is_hidden()
        admin_calls = [r for r in console.requests if "/v1/admin/" in r["url"]]
        assert admin_calls and all(admin_key not in r["url"] for r in console.requests)
        assert admin_calls[-1]["headers"].get("authorization") == f"Bearer {admin_key}"
        # The page and its files hold no data: open; the data is not.
        assert httpx.get(f"{api}/console").status_code == 200
        assert httpx.get(f"{api}/v1/admin/console/traffic").status_code == 401
        assert httpx.get(f"{api}/console/../app.py").status_code == 404
    finally:
        deployment.settings.keys_file.unlink(missing_ok=True)


def test_with_two_workers_each_one_shows_the_whole_services_traffic(deployment: Deployment) -> None:
    server, url = serve_workers(deployment, workers=2, ready_within_s=150)  # each worker imports Feast
    try:
        # A connection per request, so that both worker processes answer (each keeps its own traffic window).
        with httpx.Client(base_url=url, timeout=30, limits=httpx.Limits(max_keepalive_connections=0)) as client:

            def looks(until: set[int]) -> dict[int, dict[str, Any]]:
                """Traffic answers by process, 4 at a time (one idle worker would take every sequential one), until
                the processes `until` answered (a second worker may still be starting), for 60 s at most."""
                seen: dict[int, dict[str, Any]] = {}
                deadline = time.monotonic() + 60
                with ThreadPoolExecutor(4) as pool:
                    while not (until and until <= set(seen)) and time.monotonic() < deadline:
                        for body in pool.map(lambda _: client.get("/v1/admin/console/traffic").json(), range(4)):
                            seen[body["process"]] = body
                        if not until and len(seen) == 2:
                            break
                        time.sleep(0.2)  # the CPU to a worker still starting, not to polling the ready one
                return seen

            first = looks(until=set())
            assert len(first) == 2, f"only process {set(first)} answered the console for 60 s"
            time.sleep(1.1)  # the next look is a second snapshot, not a replacement of the first
            sent: dict[tuple[str, int], int] = {}
            for transaction_id in deployment.recent[:30]:
                response = client.post("/v1/fraud/score", json={"transaction_id": transaction_id})
                assert response.status_code == 200, response.text
                model = response.json()["model"]
                sent[(model["name"], model["version"])] = sent.get((model["name"], model["version"]), 0) + 1
            time.sleep(1.1)
            after = looks(until=set(first))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    assert set(after) == set(first)
    for pid, body in after.items():
        assert body["processes"] == 2, body
        versions = {(v["model"], v["version"]): v for v in body["versions"]}
        # Every score of the service, whichever worker answered it: the scores and the latency observations.
        got = {key: (versions[key]["scores"], versions[key]["requests"]) for key in sent if key in versions}
        assert got == {key: (float(n), float(n)) for key, n in sent.items()}, f"process {pid}: {body['versions']}"
