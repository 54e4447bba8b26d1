"""What the shipped Grafana dashboard and Prometheus alert rules query, and what an exposition page exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "fraudserve.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
_METRIC = re.compile(r"\b(fraudserve_[a-z0-9_]+)\b")
_SUFFIXES = {"histogram": ("_bucket", "_sum", "_count")}


def queried_metrics() -> dict[str, set[str]]:
    """Metric names each query of the dashboard and the alert rules reads, by where it is."""
    found: dict[str, set[str]] = {}
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel["targets"]:
            found[f"dashboard: {panel['title']}"] = found.get(f"dashboard: {panel['title']}", set()) | set(
                _METRIC.findall(target["expr"])
            )
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            found[f"alert: {rule['alert']}"] = set(_METRIC.findall(rule["expr"]))
    return found


def exported_metrics(exposition: str) -> set[str]:
    """Every sample name an exposition page can carry, from its `# TYPE` lines (families without samples too)."""
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(" ", 3)  # a counter's family already ends in _total
            names.update(family + suffix for suffix in _SUFFIXES.get(kind, ("",)))
    return names
