"""Imports run one way: core below pipelines and inference_api, the CLI (fraudserve) on top."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# What each package may not import (at module level or inside a function).
FORBIDDEN = {
    "core": {"pipelines", "inference_api", "fraudserve", "feature_repo"},
    "pipelines": {"inference_api", "fraudserve"},
    "inference_api": {"fraudserve"},
}


def imported_packages(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_run_one_way(package: str) -> None:
    wrong = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for name in sorted(imported_packages(path) & FORBIDDEN[package])
    ]
    assert wrong == []


def test_the_scan_sees_imports_inside_functions(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from fraudserve.cli import app\n    import inference_api.app\n")
    assert imported_packages(module) == {"fraudserve", "inference_api"}
