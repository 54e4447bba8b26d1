"""Offline pipeline benchmark: generate, backfill (Parquet and JSONL input), then materialize into Redis with Feast's
engine (the baseline) and the fast engine, the ratio of their rows/s measured in the same run.

    flock /tmp/fraudserve-bench.lock .venv/bin/python -m bench.pipeline                      # ~1 M transactions
    flock /tmp/fraudserve-bench.lock .venv/bin/python -m bench.pipeline --transactions 10m \\
        --feast-baseline-rows 1m                                                               # ~10 M transactions
    flock /tmp/fraudserve-bench.lock .venv/bin/python -m bench.pipeline --cluster --skip-jsonl  # 3-master cluster

`--transactions N` sizes `--cards` for `--days` (14) so that about N transactions are generated. At 10 M, Feast's
materialize would take half an hour, so `--feast-baseline-rows N` measures it on the most recent N transactions'
span (the same code path, fewer keys) and the fast engine on that same span too, for a like-for-like ratio, before
the fast engine loads everything. `--skip-feast` leaves the baseline out. Each engine writes into an empty database of
the benchmark's own embedded redis-server (appendonly everysec, as `fraudserve` runs it; FRAUDSERVE_REDIS is ignored
so that nobody's Redis is flushed). `--cluster` materializes into a local 3-master Redis Cluster instead
(`tests/redis_cluster.py`, every node appendonly everysec too, all on this machine's cores; Feast's
`redis_type: redis_cluster`). Wrap it in `flock` so that benchmarks of different people do not overlap.

Prints a table with the machine's core count and writes bench/results/pipeline-<date>.json. Peak RSS is this
process's, per step (sampled) and for the whole run (`getrusage`); redis-server's memory comes from its INFO
(summed over the masters on a cluster).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import duckdb
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn, TimeElapsedColumn

from bench.report import machine, print_table, write_result
from core import connections
from core.embedded_redis import online_store
from core.settings import RedisType, Settings
from fraudserve import feature_store
from pipelines.generate import GenerateConfig, generate
from pipelines.materialize import MaterializeSummary, materialize
from pipelines.offline.backfill import backfill

# Transactions per card per day of the generator's default world (1,056,532 for 45,000 cards over 14 days).
TRANSACTIONS_PER_CARD_DAY = 1_056_532 / (45_000 * 14)


def count(text: str) -> int:
    """1000000, 1_000_000, 1m, 10M, 500k."""
    text = text.strip().lower().replace("_", "")
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def peak_rss_mb() -> float:
    """This process's peak RSS since it started."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class StepRss:
    """The peak RSS of this process during one step (sampled from /proc every 50 ms), as ru_maxrss only ever grows."""

    interval_s = 0.05

    def __init__(self) -> None:
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def current_mb() -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self.current_mb())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self.current_mb())


def since_for_rows(transactions_file: Path, rows: int) -> datetime:
    """The event time from which the offline store holds about `rows` transactions (the most recent ones)."""
    con = duckdb.connect()
    ts = con.execute(
        f"SELECT event_timestamp FROM read_parquet('{transactions_file}') "
        f"ORDER BY event_timestamp DESC LIMIT 1 OFFSET {max(rows - 1, 0)}"
    ).fetchone()
    con.close()
    if ts is None:
        return datetime(1970, 1, 1, tzinfo=UTC)
    value: datetime = ts[0]
    return value.astimezone(UTC)


class ViewProgress:
    """A progress bar per feature view for the fast engine."""

    def __init__(self, progress: Progress, label: str) -> None:
        self.progress = progress
        self.label = label
        self.tasks: dict[str, TaskID] = {}

    def __call__(self, view: str, done: int, total: int) -> None:
        if view not in self.tasks:
            self.tasks[view] = self.progress.add_task(f"{self.label} {view}", total=max(total, done, 1))
        self.progress.update(self.tasks[view], completed=done)


class OnlineRedis:
    """The benchmark's online store: one redis-server, or every master of a local cluster."""

    def __init__(self, connection: str, clients: list[Any]) -> None:
        self.connection = connection
        self.clients = clients  # one plain client per node

    def flush(self) -> None:
        for client in self.clients:
            client.flushdb()

    def keys(self) -> int:
        return sum(int(client.dbsize()) for client in self.clients)

    def used_memory_mb(self) -> float:
        return sum(int(client.info("memory")["used_memory"]) for client in self.clients) / 2**20

    def close(self) -> None:
        for client in self.clients:
            client.close()


@contextlib.contextmanager
def online_redis(settings: Settings, cluster_dir: Path | None) -> Iterator[OnlineRedis]:
    """The embedded redis-server, or with `cluster_dir` a fresh local 3-master Redis Cluster there."""
    if cluster_dir is None:
        with online_store(None, settings.embedded_redis_dir, settings.redis_server_bin) as connection:
            online = OnlineRedis(connection, [connections.redis_client(settings, connection)])
            yield online
            online.close()
        return
    from tests.redis_cluster import RedisCluster

    with RedisCluster(cluster_dir, appendonly=True) as cluster:
        online = OnlineRedis(cluster.connection_string, [cluster.node_client(port) for port in cluster.ports])
        yield online
        online.close()


def run_materialize(
    console: Console,
    online: OnlineRedis,
    store: Any,
    settings: Settings,
    engine: str,
    label: str,
    since: datetime | None,
) -> tuple[MaterializeSummary, dict[str, object]]:
    online.flush()
    console.log(f"materialize: {label} into an empty Redis database")
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(), console=console
    )
    with progress, StepRss() as rss:
        summary = materialize(
            store,
            settings.offline,
            engine=engine,  # type: ignore[arg-type]
            progress=ViewProgress(progress, label),
            since=since,
        )
    figures: dict[str, object] = {
        "engine": summary.engine,
        "since": since,
        "rows": summary.rows,
        "rows_by_view": summary.entity_rows,
        "written_by_view": summary.written,
        "seconds": summary.seconds,
        "rows_per_second": summary.rows_per_second,
        "redis_keys": online.keys(),
        "redis_used_memory_mb": online.used_memory_mb(),
        "step_peak_rss_mb": rss.peak_mb,
    }
    console.log(f"{label}: {summary.rows:,} rows in {summary.seconds:.1f} s, {summary.rows_per_second:,.0f} rows/s")
    return summary, figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cards", type=int, default=45_000)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--transactions", type=count, help="size --cards for about this many transactions (10m)")
    parser.add_argument("--skip-jsonl", action="store_true", help="backfill the Parquet input only")
    parser.add_argument("--skip-materialize", action="store_true")
    parser.add_argument("--skip-feast", action="store_true", help="no Feast baseline (fast engine only)")
    parser.add_argument("--cluster", action="store_true", help="materialize into a local 3-master Redis Cluster")
    parser.add_argument(
        "--feast-baseline-rows",
        type=count,
        help="measure Feast (and the fast engine, for the ratio) on the span of the latest N transactions only",
    )
    args = parser.parse_args()
    if args.transactions:
        args.cards = max(1, round(args.transactions / (TRANSACTIONS_PER_CARD_DAY * args.days)))
    os.environ.pop("FRAUDSERVE_REDIS", None)  # always the benchmark's own server: it is flushed
    os.environ["FRAUDSERVE_REDIS_TYPE"] = RedisType.redis_cluster.value if args.cluster else RedisType.redis.value
    console = Console()
    rows: list[tuple[str, str, str, str]] = []
    result: dict[str, object] = {
        "machine": machine(),
        "started": datetime.now(UTC).isoformat(),
        "arguments": dict(vars(args)),
        "online_store": "local Redis Cluster, 3 masters (appendonly everysec)" if args.cluster else "redis-server",
    }
    with tempfile.TemporaryDirectory(prefix="fraudserve-bench-") as tmp:
        home = Path(tmp) / "home"
        os.environ["FRAUDSERVE_HOME"] = str(home)
        settings = Settings()
        console.log(f"generate: {args.cards:,} cards over {args.days} days")
        started = time.perf_counter()
        with StepRss() as rss:
            generated = generate(
                Path(tmp) / "raw",
                GenerateConfig(seed=11, cards=args.cards, days=args.days, end=datetime(2026, 11, 1, tzinfo=UTC)),
            )
        gen_s = time.perf_counter() - started
        rows.append(
            (
                "generate",
                f"{generated.transactions:,} transactions",
                f"{generated.transactions / gen_s:,.0f}/s",
                f"{rss.peak_mb:,.0f} MB",
            )
        )
        result["generate"] = {"transactions": generated.transactions, "seconds": gen_s, "step_peak_rss_mb": rss.peak_mb}

        for fmt in ("parquet",) if args.skip_jsonl else ("parquet", "jsonl"):
            console.log(f"backfill: {fmt} input")
            with StepRss() as rss:
                summary = backfill(
                    generated.files[f"transactions_{fmt}"],
                    generated.files[f"labels_{fmt}"],
                    settings.offline,
                    threads=settings.backfill_threads,
                )
            rows.append(
                (
                    f"backfill ({fmt} input)",
                    f"{summary.transactions.valid:,} transactions in {summary.seconds:.1f} s",
                    f"{summary.transactions_per_second:,.0f} transactions/s",
                    f"{rss.peak_mb:,.0f} MB",
                )
            )
            result[f"backfill_{fmt}"] = {
                "transactions": summary.transactions.valid,
                "seconds": summary.seconds,
                "transactions_per_second": summary.transactions_per_second,
                "rows_written": summary.rows_written,
                "step_peak_rss_mb": rss.peak_mb,
            }

        if not args.skip_materialize:
            cluster_dir = Path(tmp) / "redis-cluster" if args.cluster else None
            with online_redis(settings, cluster_dir) as online:
                feature_store.apply(settings, online.connection)
                store = feature_store.open_store(settings, online.connection)
                since = None
                if args.feast_baseline_rows and args.feast_baseline_rows < generated.transactions:
                    since = since_for_rows(settings.offline.transactions_file, args.feast_baseline_rows)
                scope = "" if since is None else f", latest {args.feast_baseline_rows:,} transactions' span"
                runs: list[tuple[str, str, str, datetime | None]] = []
                if not args.skip_feast:
                    runs.append(("materialize_feast", "feast", f"Feast (local engine{scope})", since))
                    if since is not None:
                        runs.append(("materialize_fast_baseline_span", "fast", f"fast (same span{scope})", since))
                runs.append(("materialize_fast", "fast", "fast (all rows)", None))
                measured: dict[str, MaterializeSummary] = {}
                for key, engine, label, run_since in runs:
                    summary_m, figures = run_materialize(console, online, store, settings, engine, label, run_since)
                    measured[key] = summary_m
                    result[key] = figures
                    rows.append(
                        (
                            f"materialize, {label}",
                            f"{summary_m.rows:,} entity rows in {summary_m.seconds:.1f} s",
                            f"{summary_m.rows_per_second:,.0f} rows/s",
                            f"{figures['step_peak_rss_mb']:,.0f} MB",
                        )
                    )
            if "materialize_feast" in measured:
                feast = measured["materialize_feast"].rows_per_second
                like = measured.get("materialize_fast_baseline_span", measured["materialize_fast"])
                ratio = like.rows_per_second / feast if feast else 0.0
                ratio_all = measured["materialize_fast"].rows_per_second / feast if feast else 0.0
                result["ratio_fast_to_feast"] = ratio
                result["ratio_fast_all_rows_to_feast"] = ratio_all
                rows.append(("ratio fast / Feast", "rows/s, same span", f"{ratio:.1f}x", ""))
                if like is not measured["materialize_fast"]:
                    rows.append(("ratio fast / Feast", "rows/s, fast on all rows", f"{ratio_all:.1f}x", ""))
            else:
                rows.append(("ratio fast / Feast", "Feast baseline skipped (--skip-feast)", "-", ""))
    result["peak_rss_mb"] = peak_rss_mb()
    rows.append(("whole run", "", "", f"{result['peak_rss_mb']:,.0f} MB"))
    columns = ("step", "work", "throughput", "peak RSS")
    where = ", 3-master Redis Cluster" if args.cluster else ""
    print_table(console, f"fraudserve offline pipeline on {os.cpu_count()} cores{where}", columns, rows)
    write_result(console, "pipeline", result)


if __name__ == "__main__":
    main()
