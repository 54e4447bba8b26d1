"""The performance targets in one table, from the latest result of each benchmark in bench/results/.

    python -m bench.targets

Reads the newest api-, score_batch-, stream-, window_state-, kafka-, model-, pipeline- and soak-*.json (each
measured a baseline in its own run) and prints, per target, the baseline, fraudserve's figure, the ratio, the target
and whether it is met. Rerun a benchmark (bench/README.md) to refresh its rows; a benchmark never run shows as not
measured.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.report import RESULTS


def latest(name: str, having: Callable[[dict[str, Any]], bool] = lambda _: True) -> tuple[str, dict[str, Any]] | None:
    """The newest result of a benchmark (that satisfies `having`)."""
    for path in sorted(RESULTS.glob(f"{name}-*.json"), reverse=True):
        result = json.loads(path.read_text())
        if having(result):
            return path.name, result
    return None


Row = tuple[str, str, str, str, str, str, str]


def _api_rows() -> list[Row]:
    # A run of every server: one with `--only` (a check of a few rows) lacks the others' rows.
    found = latest("api", lambda r: "ratios" in r and not (r.get("args") or {}).get("only"))
    if found is None:
        return [("score by id", "", "not measured", "", "", "", "python -m bench.api")]
    name, api = found
    ratios, rows = api["ratios"], []
    ours, constant = api.get("fraudserve | random | c8"), api.get("constant FastAPI | random | c8")
    if ours and constant:
        ratio = ratios["random c8 requests/s vs constant"]
        met = ratio >= 0.6 and ours["p99_ms"] <= 10 and ours["errors"] == 0
        rows.append((
            "score by id, random ids, 8 connections", f"constant FastAPI {constant['rps']:,.0f} req/s",
            f"{ours['rps']:,.0f} req/s, p99 {ours['p99_ms']:.2f} ms, {ours['errors']:.0f} non-2xx", f"{ratio:.2f}x",
            ">= 0.6x, p99 <= 10 ms, no non-2xx", "met" if met else "NOT met", name,
        ))  # fmt: skip
    user = api.get("fraudserve, user-declared service | random | c8")
    if user and constant:
        ratio = ratios["user-declared service c8 requests/s vs constant"]
        met = ratio >= 0.6 and user["p99_ms"] <= 10 and user["errors"] == 0
        rows.append((
            "score by id, user-declared service (batch + python on-demand view), 8 connections",
            f"constant FastAPI {constant['rps']:,.0f} req/s",
            f"{user['rps']:,.0f} req/s, p99 {user['p99_ms']:.2f} ms, {user['errors']:.0f} non-2xx", f"{ratio:.2f}x",
            ">= 0.6x, p99 <= 10 ms, no non-2xx", "met" if met else "NOT met", name,
        ))  # fmt: skip
    ours1, constant1 = api.get("fraudserve | random | c1"), api.get("constant FastAPI | random | c1")
    if ours1 and constant1:
        ratio = ratios["one connection p50 vs constant"]
        rows.append((
            "score by id, 1 connection", f"constant FastAPI p50 {constant1['p50_ms']:.2f} ms",
            f"p50 {ours1['p50_ms']:.2f} ms", f"{ratio:.1f}x the constant", "p50 within 2x",
            "met" if ratio <= 2 else "NOT met", name,
        ))  # fmt: skip
    for what, key, low, high in (
        ("score log on (sample 1.0) vs off", "score log on vs off, requests/s", 0.9, 1.1),  # above 1.1: noise
        ("random (old) vs recent transactions", "random vs recent transactions, requests/s", 0.9, 1.1),
    ):
        if key in ratios:
            met = ratios[key] >= low and (high is None or ratios[key] <= high)
            target = "within 10 %" if high else ">= 0.9x"
            rows.append((what, "", "", f"{ratios[key]:.2f}x requests/s", target, "met" if met else "NOT met", name))
    feast = api.get("feast serve | fraud_v2 (with its on-demand view) | c8")
    if ours and feast:
        ratio = ratios["vs feast serve fraud_v2, requests/s"]
        rows.append((
            "score by id vs feast serve (fraud_v2), 8 connections", f"feast serve {feast['rps']:,.0f} req/s",
            f"{ours['rps']:,.0f} req/s", f"{ratio:.1f}x", ">= 10x", "met" if ratio >= 10 else "NOT met", name,
        ))  # fmt: skip
    return rows


def _model_rows() -> list[Row]:
    found = latest("model")
    if found is None:
        return [("model", "", "not measured", "", "", "", "python -m bench.model")]
    name, model = found
    rows: list[Row] = []
    for flavor in ("lightgbm", "xgboost"):
        m = model.get(flavor)
        if not m:
            continue
        one = m["one_row"]
        rows.append((
            f"{flavor}, one row", f"native p50 {one['native']['median_us']:.1f} us",
            f"compiled p50 {one['compiled']['median_us']:.1f} us", f"{m['one_row_speedup_median']:.1f}x",
            ">= 5x, equal to 1e-6", "met" if m["one_row_speedup_median"] >= 5 else "NOT met", name,
        ))  # fmt: skip
        batch = m["batch_rows_per_s"]
        rows.append((
            f"{flavor}, 100k rows (CPU)", f"native {batch['native']:,.0f} rows/s",
            f"compiled {batch['compiled']:,.0f} rows/s", f"{m['batch_speedup']:.1f}x", ">= 2x",
            "met" if m["batch_speedup"] >= 2 else "NOT met", name,
        ))  # fmt: skip
    return rows


def _pipeline_rows() -> list[Row]:
    found = latest("pipeline", lambda r: "materialize_feast" in r)
    if found is None:
        return [("materialize into Redis", "", "not measured", "", "", "", "python -m bench.pipeline")]
    name, pipeline = found
    feast = pipeline["materialize_feast"]
    fast = pipeline.get("materialize_fast_baseline_span") or pipeline.get("materialize_fast") or {}
    ratio = fast.get("rows_per_second", 0) / feast["rows_per_second"]
    rows: list[Row] = [(
        "materialize into Redis", f"feast materialize {feast['rows_per_second']:,.0f} rows/s",
        f"{fast.get('rows_per_second', 0):,.0f} rows/s, same bytes", f"{ratio:.1f}x", ">= 10x",
        "met" if ratio >= 10 else "NOT met", name,
    )]  # fmt: skip
    at_10m = latest("pipeline", lambda r: r.get("backfill_parquet", {}).get("transactions", 0) >= 9_000_000)
    if at_10m is not None:
        name, backfill = at_10m[0], at_10m[1]["backfill_parquet"]
        rows.append((
            "backfill (Parquet)", "", f"{backfill['transactions']:,} transactions, "
            f"{backfill['transactions_per_second']:,.0f}/s", "", "figure at 10 M", "measured", name,
        ))  # fmt: skip
    return rows


def _score_batch_rows() -> list[Row]:
    found = latest("score_batch")
    if found is None:
        return [("score:batch by id", "", "not measured", "", "", "", "python -m bench.score_batch")]
    name, batch = found
    rows: list[Row] = []
    for size in (256, 1000):
        mine, base = batch.get(f"by id {size}"), batch.get(f"oip {size}")
        if not mine or not base:
            continue
        ratio = mine["p50_ms"] / base["p50_ms"]
        rows.append((
            f"score:batch, {size} ids by id", f"OIP v2 infer, {size} rows: p50 {base['p50_ms']:.1f} ms",
            f"p50 {mine['p50_ms']:.1f} ms ({mine['us_per_id']:.0f} us/id)", f"{ratio:.1f}x", "p50 <= 1.5x",
            "met" if ratio <= 1.5 else "NOT met", name,
        ))  # fmt: skip
    floor, base = batch.get("floor 256"), batch.get("oip 256")
    if floor and base:
        redis_ms = floor["redis"]["redis_us_per_request"] / 1000
        model = floor["model_alone"]  # predict and reasons from one walk where the run measured it
        model_ms = model.get("predict_and_reasons_us", model["predict_us"] + model["reasons_us"]) / 1000
        rows.append((
            "score:batch floor, 256 ids", f"OIP v2 p50 {base['p50_ms']:.1f} ms",
            f"Redis {redis_ms:.1f} ms + model and reasons {model_ms:.1f} ms",
            f"{(redis_ms + model_ms) / base['p50_ms']:.1f}x", "(what 1.5x must fit)", "", name,
        ))  # fmt: skip
    growth = batch.get("growth p50 1000 / 256")
    if growth is not None:
        rows.append((
            "score:batch, 256 -> 1,000 ids", "linear: 3.9x", f"p50 x{growth:.2f}", "", "linear or better",
            "met" if growth <= 3.91 * 1.1 else "NOT met", name,
        ))  # fmt: skip
    exact = batch.get("exactness", {})
    if exact:
        rows.append((
            "score:batch items = single scores", "", f"{exact['equal_to_single']}/{exact['items']} equal", "",
            "all equal", "met" if exact["equal_to_single"] == exact["items"] else "NOT met", name,
        ))  # fmt: skip
    saturation = batch.get("saturation")
    if saturation:
        answers = saturation["answers"]
        honest = set(answers) <= {"200", "503 overloaded"} and saturation["refused_with_retry_after"] == sum(
            n for k, n in answers.items() if k != "200"
        )
        counts = ", ".join(f"{k}: {n}" for k, n in sorted(answers.items()))
        rows.append((
            f"score:batch saturation, {saturation['clients']} clients x 256 ids", "", counts, "",
            "200 or 503 overloaded + Retry-After", "met" if honest else "NOT met", name,
        ))  # fmt: skip
    return rows


def _stream_rows() -> list[Row]:
    rows: list[Row] = []
    found = latest("stream", lambda r: "started" in r.get("workers_2", {}))
    if found is None:
        rows.append(("stream, 2 workers", "", "not measured", "", "", "", "python -m bench.stream"))
    else:
        name, stream = found
        two, base = stream["workers_2"]["started"], stream.get("baseline_workers_2", {}).get("started")
        rate = two["events_per_second"]
        rows.append((
            "stream, 2 workers, events/s once started", f"code before {base['events_per_second']:,.0f}/s" if base
            else "", f"{rate:,.0f}/s", f"{rate / base['events_per_second']:.2f}x" if base else "", ">= 5,000/s",
            "met" if rate >= 5000 else "NOT met", name,
        ))  # fmt: skip
    fresh = latest("stream", lambda r: "steady_2000" in r)  # a run with --rates "" measures no freshness
    if fresh is not None:
        name, steady = fresh[0], fresh[1]["steady_2000"]
        keeps_up = steady["freshness_p99_ms"] < 1000 and steady["lag_at_end"] == 0
        rows.append((
            "stream freshness at 2,000 events/s", "", f"p99 {steady['freshness_p99_ms']:,.0f} ms, "
            f"lag at end {steady['lag_at_end']}", "", "p99 < 1 s", "met" if keeps_up else "NOT met", name,
        ))  # fmt: skip
    window = latest("window_state")
    if window is not None:
        name, state = window
        worst = max(abs(state["worker_ratio_large_to_small"] - 1), abs(state["redis_ratio_large_to_small"] - 1))
        rows.append((
            f"stream cost, {state['large_events']:,} events in the window vs {state['small_events']}", "",
            f"worker {state['worker_ratio_large_to_small']:.2f}x, Redis {state['redis_ratio_large_to_small']:.2f}x",
            "", "within 20 %", "met" if worst <= 0.2 else "NOT met", name,
        ))  # fmt: skip
        per_event = state["state_bytes_per_kept_event"]
        rows.append((
            "stream state per kept event", "", f"{per_event:,.0f} B", "", "<= 200 B",
            "met" if per_event <= 200 else "NOT met", name,
        ))  # fmt: skip

    def drains(user: bool) -> Callable[[dict[str, Any]], bool]:
        return lambda r: "ratios_kafka_to_redis" in r and bool((r.get("args") or {}).get("user_features")) == user

    for user in (False, True):  # the newest drains of each feature set (bench.kafka --user-features)
        kafka = latest("kafka", drains(user))
        if kafka is None:
            continue
        name, result = kafka
        features = ", 10 declared aggregations" if user else ""
        for workers, ratio in sorted(result["ratios_kafka_to_redis"].items()):
            # every worker reading (Kafka: the group settled), and from the first event (a join's wait included)
            for key, how in (("all_working", "every worker reading"), ("started", "from the first event")):
                if key in ratio:
                    rows.append((
                        f"Kafka vs Redis Streams, {workers} worker(s), {how}{features}", "Redis Streams, same run", "",
                        f"{ratio[key]:.2f}x", ">= 0.8x", "met" if ratio[key] >= 0.8 else "NOT met", name,
                    ))  # fmt: skip
        two = [r["all_working"]["events_per_second"] for r in result["runs"] if r["transport"] == "kafka"
               and r["workers"] == 2]  # fmt: skip
        if two:
            rows.append((
                f"Kafka, 2 workers, events/s{features}", "", "", f"{max(two):,.0f}", ">= 5,000",
                "met" if max(two) >= 5000 else "NOT met", name,
            ))  # fmt: skip
    fresh = latest("kafka", lambda r: bool(r.get("freshness")))
    if fresh is not None:
        for item in fresh[1]["freshness"]:
            p99 = item["freshness_p99_ms"]
            rows.append((
                f"freshness p99 at {item['rate']:,}/s, {item['transport']}, {item['workers']} worker(s)", "", "",
                f"{p99:,.0f} ms", "< 1,000 ms", "met" if p99 is not None and p99 < 1000 else "NOT met", fresh[0],
            ))  # fmt: skip
    moved = latest("kafka", lambda r: bool(r.get("failover")))
    if moved is not None:
        for item in moved[1]["failover"]:
            rows.append((
                f"Kafka failover, {item['protocol']} protocol: SIGKILL to the survivor consuming", "", "",
                f"{item['moved_s']:.1f} s", f"session timeout {item['session_timeout_ms'] / 1000:g} s + a heartbeat",
                "", moved[0],
            ))  # fmt: skip
    return rows


def _soak_rows() -> list[Row]:
    found = latest("soak")
    if found is None:
        return [("API memory", "", "not measured", "", "", "", "python -m bench.soak")]
    name, soak = found
    workers = soak["workers"].values()
    slopes = [w["slope_mb_per_10min"] for w in workers]
    rss = ", ".join(f"{w['rss_end_mb']:.0f}" for w in workers)
    minutes = soak["args"]["minutes"]
    flat = all(abs(s) < 5 for s in slopes)
    return [(
        "API memory", "", f"RSS per worker {rss} MB, trend {max(slopes, key=abs):+.2f} MB/10 min",
        "", f"flat over {minutes:g} min", "met" if flat and minutes >= 10 else "NOT met", name,
    )]  # fmt: skip


def main() -> None:
    table = Table(title="fraudserve performance targets (latest bench/results/)")
    for column in ("what", "baseline (same run)", "fraudserve", "ratio", "target", "status", "from"):
        table.add_column(column)
    rows = (*_api_rows(), *_score_batch_rows(), *_stream_rows(), *_model_rows(), *_pipeline_rows(), *_soak_rows())
    for row in rows:
        table.add_row(*row)
    Console().print(table)


if __name__ == "__main__":
    main()
