"""Registration of a 50-tree model: `fraudserve models register` (a new process each time) and `open_registry()
.register` from Python (a notebook, Feast and LightGBM already imported), with the Feast answers cached and not.

    python -m bench.registration [--home DIR] [--repeat 3]

Builds (or reuses with --home) a home with generated data, `features apply` and a backfill, and a 50-tree LightGBM
package on fraud_v1. Each figure is wall and CPU seconds (CPU: the process's own, child's for the CLI). Cold: the
cache under FRAUDSERVE_HOME/cache/registration removed first (as after `features apply` or a backfill), so Feast is
imported, opened and asked for offline rows; warm: the next registrations; after fill: the cache as the command that
changed Feast's registry or the offline store would leave it with `fraudserve.service_cache.fill` (Feast open there).
Writes bench/results/registration-*.json.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from bench.report import machine, print_table, write_result

CLI = [sys.executable, "-m", "fraudserve", "models", "register"]
# The baseline: the same command with Feast imported first, type-checked by typeguard as before `models register`
# imported it as under `python -O` (Feast already imported: the command changes nothing).
CHECKED = "import sys, feast; from fraudserve.cli import app; sys.argv[0] = 'fraudserve'; app()"
CLI_CHECKED = [sys.executable, "-c", CHECKED, "models", "register"]


def build_home(root: Path) -> Path:
    """A home with data, Feast applied and backfilled, and a 50-tree LightGBM package on fraud_v1."""
    package = root / "pkg50"
    if package.exists():
        return package
    from core.settings import Settings
    from fraudserve import feature_store
    from fraudserve.models import save_package
    from fraudserve.training import training_frame
    from pipelines.generate import GenerateConfig, generate
    from pipelines.offline.backfill import backfill
    from tests.redis_process import RedisProcess

    redis = RedisProcess(root / "redis").start()
    try:
        settings = Settings()
        generated = generate(
            root / "raw", GenerateConfig(seed=21, cards=700, days=32, end=datetime(2026, 11, 1, tzinfo=UTC))
        )
        feature_store.apply(settings, redis.connection_string)
        backfill(generated.files["transactions_parquet"], generated.files["labels_parquet"], settings.offline)
    finally:
        redis.stop()
    import lightgbm

    frame = training_frame("fraud_v1")
    features = list(frame.attrs["fraudserve"]["features"])
    booster = lightgbm.train(
        {"objective": "binary", "verbose": -1, "num_threads": 2},
        lightgbm.Dataset(frame[features], frame["is_fraud"]),
        num_boost_round=50,
    )
    save_package(booster, package, feature_service="fraud_v1", thresholds=(0.3, 0.8))
    return package


def cli_once(package: Path, command: list[str] = CLI) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([*command, str(package), "--name", "bench", "--feature-service", "fraud_v1"], check=True,
                   capture_output=True, env=os.environ.copy())  # fmt: skip
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def python_once(package: Path) -> tuple[float, float]:
    from fraudserve.registry import open_registry

    started, cpu = time.perf_counter(), time.process_time()
    open_registry().register(package, name="bench", feature_service="fraud_v1")
    return time.perf_counter() - started, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    console = Console()
    root = args.home or Path(tempfile.mkdtemp(prefix="bench-registration-"))
    root.mkdir(parents=True, exist_ok=True)
    os.environ["FRAUDSERVE_HOME"] = str(root / "home")
    os.environ.pop("FRAUDSERVE_REDIS", None)
    package = build_home(root)
    for variable in ("FRAUDSERVE_REDIS", "FRAUDSERVE_REDIS_TYPE"):  # `features apply` exported its (stopped) Redis
        os.environ.pop(variable, None)
    cache = root / "home" / "cache" / "registration"
    figures: dict[str, list[tuple[float, float]]] = {
        k: [] for k in ("cli cold, Feast type-checked", "cli cold", "cli warm", "cli after fill", "python cold",
                        "python warm")
    }  # fmt: skip
    for _ in range(args.repeat):
        shutil.rmtree(cache, ignore_errors=True)
        figures["cli cold, Feast type-checked"].append(cli_once(package, CLI_CHECKED))
        shutil.rmtree(cache, ignore_errors=True)
        figures["cli cold"].append(cli_once(package))
        figures["cli warm"].append(cli_once(package))
    import feast  # noqa: F401  (a notebook has Feast and LightGBM imported already: training_frame, training)
    import lightgbm  # noqa: F401

    from core.settings import Settings
    from fraudserve.feature_store import open_offline_store
    from fraudserve.service_cache import fill
    from inference_api.domain.feature_services import FeastFeatureServices

    for _ in range(args.repeat):  # the cache as `features apply` or a backfill would leave it, with fill()
        shutil.rmtree(cache, ignore_errors=True)
        settings = Settings()
        fill(settings, FeastFeatureServices(open_offline_store(settings), settings.offline))
        figures["cli after fill"].append(cli_once(package))

    for _ in range(args.repeat):
        shutil.rmtree(cache, ignore_errors=True)
        figures["python cold"].append(python_once(package))
        figures["python warm"].append(python_once(package))
    rows = [
        [name, f"{min(w for w, _ in runs):.2f}", f"{sorted(w for w, _ in runs)[len(runs) // 2]:.2f}",
         f"{min(c for _, c in runs):.2f}"]
        for name, runs in figures.items()
    ]  # fmt: skip
    title = f"registering a 50-tree LightGBM model ({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f})"
    print_table(console, title, ["path", "wall min s", "wall median s", "cpu min s"], rows)
    baseline = min(c for _, c in figures["cli cold, Feast type-checked"])
    for name in ("cli cold", "cli after fill"):
        console.print(
            f"{name}: {min(c for _, c in figures[name]) / baseline:.2f}x the CPU of the type-checked cold run"
        )
    write_result(console, "registration", {"machine": machine(), "load": os.getloadavg(), "figures": figures})


if __name__ == "__main__":
    main()
