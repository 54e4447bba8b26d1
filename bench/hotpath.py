"""Where a score-by-id request's CPU time goes, stage by stage, in-process (no HTTP), at batch sizes 1 and 8.

    python -m bench.hotpath [--home DIR] [--iterations 2000]

Builds (or reuses, with --home) the deployment of bench.api and times, with the process's CPU clock, each stage of
`score_requests` on real transactions: the one-round-trip lookup (transaction + entity features), the two-round-trip
lookup it replaced, building the model matrix, predicting (compiled and native engines), the reasons (decision path
and TreeSHAP), the whole `score_requests` call and the response body. The HTTP layer's own cost is what
bench.api's constant FastAPI endpoint measures. Writes bench/results/hotpath-<date>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.api import prepare
from bench.report import machine, print_table, write_result
from core.embedded_redis import online_store
from core.settings import Settings


def _cpu_us(calls: int, fn: Callable[[int], Any]) -> float:
    started = time.process_time()
    for i in range(calls):
        fn(i)
    return (time.process_time() - started) / calls * 1e6


async def _acpu_us(calls: int, fn: Callable[[int], Any]) -> float:
    started = time.process_time()
    for i in range(calls):
        await fn(i)
    return (time.process_time() - started) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, help="reuse the deployment bench.api built here")
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--cards", type=int, default=2000)
    parser.add_argument("--days", type=int, default=30)
    args = parser.parse_args()
    console = Console()
    result: dict[str, object] = {"machine": machine(), "started": datetime.now(UTC).isoformat()}
    with contextlib.ExitStack() as stack:
        root = args.home or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fraudserve-hotpath-")))
        os.environ["FRAUDSERVE_HOME"] = str(root / "home")
        os.environ.pop("FRAUDSERVE_REDIS", None)
        settings = Settings()
        connection = stack.enter_context(online_store(None, settings.embedded_redis_dir, settings.redis_server_bin))
        ids = [r[0] for r in prepare(root, settings, connection, args.cards, args.days, console)]
        settings.export_feast_environment(connection)
        rows = asyncio.run(_measure(settings, ids, args.iterations))
    result["stages_us_per_request"] = {f"{stage} (batch {batch})": us for stage, batch, us in rows}
    print_table(
        console,
        f"CPU time per request by stage, in-process, {os.cpu_count()} cores",
        ("stage", "batch 1, us/request", "batch 8, us/request"),
        [
            (stage, f"{dict(((s, b), u) for s, b, u in rows)[(stage, 1)]:,.1f}",
             f"{dict(((s, b), u) for s, b, u in rows)[(stage, 8)]:,.1f}")
            for stage in dict.fromkeys(s for s, _, _ in rows)
        ],
    )  # fmt: skip
    write_result(console, "hotpath", result)


async def _measure(settings: Settings, ids: list[str], calls: int) -> list[tuple[str, int, float]]:
    from feast import FeatureStore

    from core.models.attribution import RuntimeExplainer
    from core.models.runtime import load_runtime
    from fraudserve.registry import open_registry
    from inference_api.domain.models import ModelManager
    from inference_api.domain.redis_source import RedisFeatureSource
    from inference_api.domain.scoring import ScoringService
    from inference_api.observability import Metrics

    store = FeatureStore(repo_path=str(settings.feature_repo))
    source = RedisFeatureSource(store, 1.0)
    manager = ModelManager(open_registry(settings, check_features=False), store, settings.model_name)
    manager.refresh()
    model = manager.production()
    service = ScoringService(source, manager, Metrics())
    native = load_runtime(model.manifest.flavor, manager.registry.model_path(model.name, model.version))
    rows: list[tuple[str, int, float]] = []
    for batch in (1, 8):
        stages = await _stages(batch, ids, calls, source, service, model, native, RuntimeExplainer(native))
        rows.extend((stage, batch, us / batch) for stage, us in stages)
    await source.close()
    return rows


async def _stages(
    batch: int, ids: list[str], calls: int, source: Any, service: Any, model: Any, native: Any, shap: Any
) -> list[tuple[str, float]]:
    from inference_api.domain.scoring import Score, build_rows, score_requests
    from inference_api.routes.fraud import score_body

    window = len(ids) - 8

    def chunk(i: int) -> list[str]:
        start = (i * batch) % window
        return ids[start : start + batch]

    records = [r for r in await source.transactions(chunk(0), model.plan) if r is not None]
    fetched = [r.views or {} for r in records]
    matrix, _, _ = build_rows(model.plan, records, fetched, time.time())
    scores = [s for s in await score_requests(service, [(i, None) for i in chunk(0)]) if isinstance(s, Score)]

    async def fused(i: int) -> Any:
        return await source.transactions(chunk(i), model.plan)

    async def two_trips(i: int) -> Any:
        found = [r for r in await source.transactions(chunk(i)) if r is not None]
        return await source.views(model.plan, found)

    async def whole(i: int) -> Any:
        return await score_requests(service, [(t, None) for t in chunk(i)])

    return [
        ("lookup, one round trip (Lua)", await _acpu_us(calls, fused)),
        ("lookup, two round trips (before)", await _acpu_us(calls, two_trips)),
        ("build model matrix", _cpu_us(calls, lambda i: build_rows(model.plan, records, fetched, time.time()))),
        (f"predict, {type(model.runtime).__name__}", _cpu_us(calls, lambda i: model.predict(matrix))),
        ("predict, native (before)", _cpu_us(calls, lambda i: native.predict(matrix))),
        ("reasons, decision path", _cpu_us(calls, lambda i: model.explainer.contributions(matrix))),
        ("reasons, TreeSHAP (before)", _cpu_us(max(calls // 20, 20), lambda i: shap.contributions(matrix))),
        ("score_requests, all of the above", await _acpu_us(calls, whole)),
        ("response body (JSON)", _cpu_us(calls, lambda i: [json.dumps(score_body(s)) for s in scores])),
    ]


if __name__ == "__main__":
    main()
