"""The shipped Prometheus configuration and alert rules pass promtool; every query names a metric that exists."""

from __future__ import annotations

import shutil
import subprocess
import urllib.request

from tests.observability_config import ALERTS, ROOT, exported_metrics, queried_metrics


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: install Debian's `prometheus` package (.ci/run does)"
    return found


def test_the_alert_rules_and_the_scrape_config_pass_promtool() -> None:
    rules = subprocess.run([promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True, check=False)
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "8 rules found" in rules.stdout
    config = ROOT / "deploy" / "prometheus" / "prometheus.yml"
    checked = subprocess.run([promtool(), "check", "config", str(config)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_stream_query_names_a_metric_a_worker_serves() -> None:
    """The stream panels and alerts against a worker's own metrics page, served over HTTP."""
    from core.embedded_redis import free_port
    from pipelines.stream.worker import WorkerMetrics

    port = free_port()
    WorkerMetrics().serve(port)
    page = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    served = exported_metrics(page)
    stream = {where: names for where, names in queried_metrics().items() if any("_stream_" in n for n in names)}
    assert len(stream) >= 4
    assert {where: names - served for where, names in stream.items() if names - served} == {}


def test_the_scan_finds_the_metrics_of_a_query() -> None:
    page = "\n".join(
        [
            "# TYPE fraudserve_errors_total counter",
            "# TYPE fraudserve_stage_seconds histogram",
            "# TYPE fraudserve_stream_lag gauge",
        ]
    )
    expected = {"fraudserve_errors_total", "fraudserve_stage_seconds_bucket", "fraudserve_stream_lag"}
    assert exported_metrics(page) >= expected
    assert "fraudserve_errors" not in exported_metrics(page)
