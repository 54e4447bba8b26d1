"""The stream's cost per event against the size of an entity's window, and the state it keeps per event.

    python -m bench.window_state [--large 1000000 --events 2000]

On a fresh redis-server, with the built-in features (`feature_repo/`): one merchant is given `--large` events inside
its windows (30 days), another 10; then `--events` new events of each merchant arrive one per batch (the steady
low-rate case, where batching cannot amortise anything), in `--rounds` rounds that alternate which merchant goes
first (after a warm-up of both that is not counted), so that neither pays the warm-up or a quieter stretch of the
machine alone. Per event, in the same run: the updater's CPU (`time.process_time`) and Redis's CPU (`INFO cpu`), for
the small and the large merchant, their ratio over all rounds (flat means 1.0) and each round's ratio. Memory:
Redis's bytes for the large merchant's state (`MEMORY USAGE` of its keys) per event it keeps.
Writes bench/results/window_state-<date>.json.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.report import machine, print_table, write_result
from pipelines.features.catalog import load_catalog
from pipelines.stream.updater import OnlineUpdater
from tests.redis_process import RedisProcess

DAY_MS = 86_400_000


def event(i: int, merchant: str, ts_ms: int, rnd: random.Random) -> dict[str, Any]:
    return {
        "transaction_id": f"{merchant}-{i}",
        "card_id": f"c{rnd.randrange(200_000)}",
        "merchant_id": merchant,
        "device_id": f"d{rnd.randrange(100_000)}",
        "ip_address": f"10.0.{rnd.randrange(256)}.{rnd.randrange(256)}",
        "amount": round(rnd.uniform(1, 500), 2),
        "currency": "USD",
        "merchant_category": "5411",
        "country": "US",
        "ts_ms": ts_ms,
    }


def redis_cpu_s(client: Any) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def fill(updater: OnlineUpdater, merchant: str, count: int, end_ms: int, rnd: random.Random, console: Console) -> None:
    """`count` events of `merchant` spread over the 30 days before `end_ms`, folded in batches of 5,000 into the
    merchant's state alone (`OnlineUpdater.fold_only`: the merchant's state is what is measured; folding each event's
    card, device and IP too took 6 minutes for 1 M events)."""
    step = (30 * DAY_MS - 60_000) // max(count, 1)
    start = end_ms - count * step
    for first in range(0, count, 5000):
        batch = [event(i, merchant, start + i * step, rnd) for i in range(first, min(count, first + 5000))]
        updater.fold_only("merchant", merchant, batch)
        if first and first % 100_000 == 0:
            console.print(f"  {merchant}: {first:,} events")


def one_by_one(
    updater: OnlineUpdater, client: Any, merchant: str, events: int, start_ms: int, first_id: int = 10_000_000
) -> dict[str, float]:
    """`events` new events of `merchant`, one per batch, a second apart from `start_ms` (new ids from `first_id`:
    a redelivered id would cost less)."""
    rnd = random.Random(7)
    batch = [event(first_id + i, merchant, start_ms + i * 1000, rnd) for i in range(events)]
    cpu, redis_before = time.process_time(), redis_cpu_s(client)
    for e in batch:
        updater.apply([e], [])
    return {
        "worker_us_per_event": (time.process_time() - cpu) / events * 1e6,
        "redis_us_per_event": (redis_cpu_s(client) - redis_before) / events * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--large", type=int, default=1_000_000, help="events in the large merchant's windows")
    parser.add_argument("--small", type=int, default=10)
    parser.add_argument("--events", type=int, default=2000, help="events per merchant, one per batch, all rounds")
    parser.add_argument("--rounds", type=int, default=6, help="measured rounds, alternating which merchant is first")
    args = parser.parse_args()
    console = Console()
    catalog = load_catalog()
    end_ms = 1_790_000_000_000
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisProcess(Path(tmp) / "redis").start()
        try:
            client: Any = server.client()
            updater = OnlineUpdater(client, "fraudserve", timedelta(minutes=5), catalog=catalog)
            rnd = random.Random(1)
            started = time.perf_counter()
            fill(updater, "m_small", args.small, end_ms, rnd, console)
            fill(updater, "m_large", args.large, end_ms, rnd, console)
            fill_s = time.perf_counter() - started
            console.print(f"filled {args.small + args.large:,} events in {fill_s:.1f} s")
            per_round = max(1, args.events // args.rounds)
            warm_up = min(50, per_round)
            for merchant in ("m_small", "m_large"):
                one_by_one(updater, client, merchant, warm_up, end_ms, first_id=9_000_000)
            rounds: list[dict[str, dict[str, float]]] = []
            for index in range(args.rounds):
                start_ms = end_ms + (warm_up + index * per_round) * 1000
                first_id = 10_000_000 + index * per_round
                order = ("m_small", "m_large") if index % 2 == 0 else ("m_large", "m_small")
                figures = {m: one_by_one(updater, client, m, per_round, start_ms, first_id) for m in order}
                rounds.append({"small": figures["m_small"], "large": figures["m_large"]})
            keys = [k for k in client.scan_iter("fraudserve:{merchant:m_large}:*")]
            kept = int(client.zcard("fraudserve:{merchant:m_large}:win"))
            state_bytes = sum(int(client.memory_usage(k, samples=0) or 0) for k in keys)
            window_bytes = int(client.memory_usage("fraudserve:{merchant:m_large}:win", samples=0) or 0)
        finally:
            server.stop()

    def mean(which: str, figure: str) -> float:
        return sum(r[which][figure] for r in rounds) / len(rounds)

    small_worker, small_redis = mean("small", "worker_us_per_event"), mean("small", "redis_us_per_event")
    large = {"worker_us_per_event": mean("large", "worker_us_per_event"),
             "redis_us_per_event": mean("large", "redis_us_per_event")}  # fmt: skip
    round_ratios = [
        {
            "first": "small" if i % 2 == 0 else "large",
            "worker": r["large"]["worker_us_per_event"] / r["small"]["worker_us_per_event"],
            "redis": r["large"]["redis_us_per_event"] / r["small"]["redis_us_per_event"],
        }
        for i, r in enumerate(rounds)
    ]
    result = {
        "machine": machine(),
        "large_events": args.large,
        "small_events": args.small,
        "events_one_per_batch": per_round * args.rounds,
        "rounds": args.rounds,
        "round_ratios_large_to_small": round_ratios,
        "fill_events_per_s": (args.small + args.large) / fill_s,
        "small": {"worker_us_per_event": small_worker, "redis_us_per_event": small_redis},
        "large": large,
        "worker_ratio_large_to_small": large["worker_us_per_event"] / small_worker,
        "redis_ratio_large_to_small": large["redis_us_per_event"] / small_redis,
        "large_merchant_kept_events": kept,
        "large_merchant_state_bytes": state_bytes,
        "state_bytes_per_kept_event": state_bytes / max(kept, 1),
        "window_set_bytes_per_kept_event": window_bytes / max(kept, 1),
    }
    print_table(
        console,
        f"window state, {result['machine']['cores']} cores",
        ("merchant", "events in window", "worker us/event", "redis us/event"),
        [
            ("small", f"{args.small:,}", f"{small_worker:.0f}", f"{small_redis:.0f}"),
            ("large", f"{args.large:,}", f"{large['worker_us_per_event']:.0f}", f"{large['redis_us_per_event']:.0f}"),
        ],
    )
    for i, ratios in enumerate(round_ratios):
        console.print(
            f"round {i + 1} ({ratios['first']} first): worker {ratios['worker']:.2f}, redis {ratios['redis']:.2f}"
        )
    console.print(
        f"ratio large/small: worker {result['worker_ratio_large_to_small']:.2f}, "
        f"redis {result['redis_ratio_large_to_small']:.2f}; state {result['state_bytes_per_kept_event']:.0f} "
        f"bytes per kept event ({kept:,} kept; window set {result['window_set_bytes_per_kept_event']:.0f})"
    )
    write_result(console, "window_state", result)


if __name__ == "__main__":
    main()
