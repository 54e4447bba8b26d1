"""Where the fold script's Redis CPU goes: the script as it is against copies with one part taken out, same run.

    python -m bench.fold_profile [--events 8000 --batch 500] [--batches 500,2000,8000]

`bench.stream --user-features`'s events (6,000 cards, 3 days; the built-ins plus 10 declared aggregations) applied
in-process by `OnlineUpdater.apply` in batches, each batch applied in turn to one fresh redis-server per variant of
FOLD (so every variant sees the same load over time; the script as it is runs first and last, and their difference
is the noise). Per variant: Redis's CPU per event (`INFO cpu`) and its ratio to the first. A variant that takes a
part out (the eviction reads, the label records, the last-seen inserts, the Feast row writes) says what that part
costs; "calls" adds 5 cheap commands (EXISTS) per entity and event, the price of a `redis.call` itself; "phases"
times the script's phases inside it with TIME (its own calls inflate the total; the split is what it is for).
The values the variants compute are not checked: most of them are wrong on purpose. `--batches A,B,...`: instead,
the script as it is with the events applied in batches of each size (the stream worker's read size under a
backlog), each size on its own redis-server, in rounds over the same stretches of events so that every size sees
the same load; Redis's CPU and the updater's (this process's) per event, and ratios to the first size. Writes
bench/results/fold_profile-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

import pipelines.stream.updater as updater_module
from bench.report import machine, write_result
from bench.user_features import extra_views
from pipelines.events import TRANSACTIONS
from pipelines.features.catalog import load_catalog
from pipelines.generate import GenerateConfig, generate
from pipelines.stream.producer import normalized
from pipelines.stream.window_state import FOLD
from pipelines.validation import check
from tests.redis_process import RedisProcess
from tests.user_repo import user_repo

# The phases the script goes through per entity, each timed up to the anchor that follows it.
_PHASES = [
    ("-- new events: quads (ts, member, values as the member holds them, distinct values)\n", "state read"),
    ("-- 1. t moves from t0 to t1", "arguments"),
    ("-- pending labels up to t1 are in force now", "eviction"),
    ("-- 3. new events join the windows", "labels due"),
    ("-- 4. new labels:", "new events"),
    ("if t1 == nil then return {'none'} end\n", "new labels"),
    ("local out = {S[10], t1}\n", "state write"),
    ("if row and t1 >= 0 then\n", "answer"),
]
_TIMER = (
    "local function now() local t = redis.call('TIME'); return t[1] * 1000000 + t[2] end\n"
    "local PROF, LAST = {}, 0\n"
    "local function mark(name) local t = now(); PROF[name] = (PROF[name] or 0) + (t - LAST); LAST = t end\n"
)


def _phases() -> list[tuple[str, str]]:
    edits = [
        ("local H, R, L, P = K[1], K[2], K[3], K[4]\n", "LAST = now()\nlocal H, R, L, P = K[1], K[2], K[3], K[4]\n")
    ]
    edits += [(anchor, f"mark('{name}')\n{anchor}") for anchor, name in _PHASES]
    edits.append(("  return {S[10], t1}\nend\nreturn out\n", "  mark('rows')\n  return {S[10], t1}\nend\nreturn out\n"))
    edits.append(
        ("local specs = cmsgpack.unpack(ARGV[1])\n", "local T0 = now()\nlocal specs = cmsgpack.unpack(ARGV[1])\n")
    )
    edits.append(
        (
            "return cmsgpack.pack(answers)\n",
            "local packed = cmsgpack.pack(answers)\nPROF['call in all'] = now() - T0\n"
            "for k, v in pairs(PROF) do redis.call('HINCRBY', 'fraudserve:bench:phases', k, v) end\nreturn packed\n",
        )
    )
    return edits


# name -> edits (anchor, replacement) of FOLD's text
VARIANTS: dict[str, list[tuple[str, str]]] = {
    "as is": [],
    "no eviction reads": [("    if raw and n[wi] > 0 then\n      local gone", "    if false then\n      local gone")],
    "no label records": [
        (
            "        if labelled then\n          -- a record only",
            "        if false then\n          -- a record only",
        ),
    ],
    "no last-seen inserts": [("            redis.call('ZADD', K[6 + i], 'GT', ms(ts), v)\n", "")],
    "no row writes": [
        ("if row and t1 >= 0 then\n", "if row and t1 >= 0 then\n  if true then return {S[10], t1} end\n")
    ],
    "calls +5 per event": [
        (
            "for _, e in ipairs(events) do\n  local ts, member, vals, dv = e[1], e[2], e[3], e[4]\n",
            "for _, e in ipairs(events) do\n  local ts, member, vals, dv = e[1], e[2], e[3], e[4]\n"
            "  for _k = 1, 5 do redis.call('EXISTS', H) end\n",
        ),
    ],
    "phases": [("local function fmt(x)", _TIMER + "local function fmt(x)"), *_phases()],
}


def variant(name: str) -> str:
    script = FOLD
    for anchor, replacement in VARIANTS[name]:
        if anchor not in script:
            raise SystemExit(f"bench.fold_profile: variant {name!r} no longer matches FOLD (missing {anchor!r}); "
                             "update its edits in VARIANTS to the script's new text")  # fmt: skip
        script = script.replace(anchor, replacement, 1)
    return script


def events_of(folder: Path) -> list[dict[str, Any]]:
    generated = generate(folder, GenerateConfig(seed=9, cards=6000, days=3, end=datetime(2026, 11, 1, tzinfo=UTC)))
    rows = [json.loads(line) for line in generated.files["transactions_jsonl"].read_text().splitlines()]
    columns = {name: [r.get(name) for r in rows] for name in TRANSACTIONS.schema.names}
    return normalized(TRANSACTIONS, check(TRANSACTIONS, columns, np.arange(1, len(rows) + 1)).valid)


def use(script: str) -> None:
    """The FOLD text the updater sends from now on (it reads its module's name on each batch)."""
    setattr(updater_module, "FOLD", script)  # noqa: B010  (mypy: the module does not export the name)


def redis_cpu_s(client: Any) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def batch_sizes(
    console: Console, events: list[dict[str, Any]], sizes: list[int], catalog: Any, tmp: Path
) -> list[dict[str, Any]]:
    """The script as it is, the events applied in batches of each size: Redis's CPU and the updater's per event.

    The events go in stretches of the largest size; each stretch is applied by every size in turn (in batches of
    that size), the size that goes first rotating, so that each sees the machine's load of the same moments."""
    servers = [RedisProcess(tmp / f"redis-batch-{size}").start() for size in sizes]
    try:
        clients: list[Any] = [server.client() for server in servers]
        updaters = [
            updater_module.OnlineUpdater(client, "fraudserve", timedelta(minutes=5), catalog=catalog)
            for client in clients
        ]
        redis_s, updater_s = [0.0] * len(sizes), [0.0] * len(sizes)
        stretch = max(sizes)
        for round_index, start in enumerate(range(0, len(events), stretch)):
            part = events[start : start + stretch]
            order = list(range(len(sizes)))
            order = order[round_index % len(order) :] + order[: round_index % len(order)]
            for i in order:
                before, cpu = redis_cpu_s(clients[i]), time.process_time()
                for first in range(0, len(part), sizes[i]):
                    updaters[i].apply(part[first : first + sizes[i]], [])
                updater_s[i] += time.process_time() - cpu
                redis_s[i] += redis_cpu_s(clients[i]) - before
    finally:
        for server in servers:
            server.stop()
    rows = [
        {"batch": size, "redis_us_per_event": r * 1e6 / len(events), "updater_us_per_event": u * 1e6 / len(events),
         "redis_ratio": r / redis_s[0], "updater_ratio": u / updater_s[0]}
        for size, r, u in zip(sizes, redis_s, updater_s, strict=True)
    ]  # fmt: skip
    for row in rows:
        console.print(f"batch {row['batch']:6,d}: Redis {row['redis_us_per_event']:6.1f} us/event "
                      f"({row['redis_ratio']:.2f}x), updater {row['updater_us_per_event']:6.1f} us/event "
                      f"({row['updater_ratio']:.2f}x)")  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=8000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--batches", help="batch sizes to compare (the script as it is), e.g. 500,2000,8000")
    args = parser.parse_args()
    console = Console()
    if args.batches:
        sizes = [int(size) for size in args.batches.split(",")]
        with tempfile.TemporaryDirectory(prefix="fraudserve-fold-") as tmp:
            events = events_of(Path(tmp) / "raw")[: args.events]
            catalog = load_catalog(
                user_repo(Path(tmp) / "repo" / "feature_repo", {"bench_windows.py": extra_views(60)})
            )
            rows = batch_sizes(console, events, sizes, catalog, Path(tmp))
        write_result(console, "fold_profile", {"machine": machine(), "started": datetime.now(UTC).isoformat(),
                                               "args": vars(args), "events": len(events), "batches": rows,
                                               "time": time.time()})  # fmt: skip
        return
    names = [*VARIANTS, "as is"]
    scripts = [variant(name) for name in names]
    with tempfile.TemporaryDirectory(prefix="fraudserve-fold-") as tmp:
        events = events_of(Path(tmp) / "raw")[: args.events]
        catalog = load_catalog(user_repo(Path(tmp) / "repo" / "feature_repo", {"bench_windows.py": extra_views(60)}))
        servers = [RedisProcess(Path(tmp) / f"redis-{i}").start() for i in range(len(names))]
        try:
            clients: list[Any] = [server.client() for server in servers]
            updaters = []
            for script, client in zip(scripts, clients, strict=True):
                use(script)  # the updater sends its module's FOLD: set before each use
                updaters.append(
                    updater_module.OnlineUpdater(client, "fraudserve", timedelta(minutes=5), catalog=catalog)
                )
                updaters[-1].apply(events[: args.batch], [])  # first batch: not counted
            spent = [0.0] * len(names)
            for start in range(args.batch, len(events), args.batch):
                for i, (script, updater, client) in enumerate(zip(scripts, updaters, clients, strict=True)):
                    use(script)
                    before = redis_cpu_s(client)
                    updater.apply(events[start : start + args.batch], [])
                    spent[i] += redis_cpu_s(client) - before
            phases = {
                k.decode(): int(v) for k, v in clients[names.index("phases")].hgetall("fraudserve:bench:phases").items()
            }
        finally:
            use(FOLD)
            for server in servers:
                server.stop()
    counted = len(events) - args.batch
    rows = [
        {"variant": name, "redis_us_per_event": s * 1e6 / counted, "ratio": s / spent[0]}
        for name, s in zip(names, spent, strict=True)
    ]
    for row in rows:
        console.print(f"{row['variant']:22s} Redis {row['redis_us_per_event']:6.1f} us/event  {row['ratio']:.3f}x")
    in_script = {name: round(us / counted, 1) for name, us in sorted(phases.items(), key=lambda kv: -kv[1])}
    console.print(f"phases, us per event (timed with TIME inside the script): {in_script}")
    write_result(console, "fold_profile", {"machine": machine(), "started": datetime.now(UTC).isoformat(),
                                           "args": vars(args), "events": counted, "variants": rows,
                                           "phases_us_per_event": in_script, "time": time.time()})  # fmt: skip


if __name__ == "__main__":
    main()
