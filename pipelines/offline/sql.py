"""The declared window features (the catalog read from the Feast repo) compiled to DuckDB SQL window queries.

Each window feature (one Feast `Aggregation`) becomes one window aggregate over the entity's events ordered by epoch
milliseconds, with a RANGE frame of (W - 1 ms) PRECEDING: the frame (t - W, t] of SPEC. RANGE frames include the
current row's peers, so events of an entity that share a timestamp get the same values, as SPEC asks. The fraud rate
needs labels as known at t, which no frame expresses; it is a running sum of +1/-1 steps at the instants each fraud
verdict starts and stops counting (see `fraud_known_sql`).

Inputs are two relations: `tx` (canonical transactions with `ts_ms`) and `labels` (with `label_ms`).
"""

from __future__ import annotations

from pipelines.features.catalog import Agg, WindowFeature, WindowView

_NEVER = 2**62


def _frame(feature: WindowFeature) -> str:
    return f"RANGE BETWEEN {feature.window_ms - 1} PRECEDING AND CURRENT ROW"


def feature_sql(feature: WindowFeature, key: str) -> str:
    """One SELECT expression computing `feature` for every event of the entity keyed by `key`."""
    over = f"OVER (PARTITION BY {key} ORDER BY ts_ms {{frame}})"
    if feature.agg is Agg.SECONDS_SINCE_PREV:
        prev = "max(ts_ms) " + over.format(frame="RANGE BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING")
        return f"(ts_ms - {prev}) / 1000.0"
    frame = over.format(frame=_frame(feature))
    column = feature.column
    if feature.agg is Agg.COUNT:
        return f"count(*) {frame}" if column is None else f"count({_quote(column)}) {frame}"
    if feature.agg is Agg.FRAUD_RATE:
        return f"coalesce(fraud_known, 0) / (count(*) {frame})::DOUBLE"
    if column is None:
        raise ValueError(f"feature {feature.name} ({feature.agg}) needs a column")
    quoted = _quote(column)
    if feature.agg is Agg.DISTINCT:
        return f"count(DISTINCT {quoted}) {frame}"
    number = f"{quoted}::DOUBLE"  # float features, whatever the column's numeric type (a no-op on amount)
    if feature.agg is Agg.SUM:  # 0 over a window without values, as the pure semantics
        return f"coalesce(sum({number}) {frame}, 0.0)"
    if feature.agg is Agg.MEAN:
        return f"sum({number}) {frame} / count({quoted}) {frame}"
    if feature.agg is Agg.MIN:
        return f"min({number}) {frame}"
    if feature.agg is Agg.MAX:
        return f"max({number}) {frame}"
    raise ValueError(f"unknown aggregation {feature.agg}")


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def fraud_known_sql(feature: WindowFeature, key: str) -> str:
    """Per (key, ts_ms) of the entity's events: how many of its window's transactions are known fraud at ts_ms.

    A transaction j (time t_j) with a fraud verdict in force over [L, L_next) counts at time t exactly when
    max(t_j, L) <= t < min(t_j + W, L_next): +1 at the first instant, -1 at the second. Query points sort after
    the steps of the same instant, so a verdict known at t counts and a transaction leaving the window at t does not.
    """
    w = feature.window_ms
    return f"""
    WITH verdicts AS (
        SELECT transaction_id, is_fraud, label_ms,
               lead(label_ms) OVER (PARTITION BY transaction_id ORDER BY label_ms, is_fraud) AS next_ms
        FROM labels
    ),
    spans AS (
        SELECT tx.{key} AS k, greatest(tx.ts_ms, v.label_ms) AS start_ms,
               least(tx.ts_ms + {w}, coalesce(v.next_ms, {_NEVER})) AS end_ms
        FROM tx JOIN verdicts v USING (transaction_id)
        WHERE v.is_fraud AND tx.{key} IS NOT NULL
    ),
    timeline AS (
        SELECT k, start_ms AS at_ms, 1 AS step, 0 AS is_query FROM spans WHERE start_ms < end_ms
        UNION ALL
        SELECT k, end_ms, -1, 0 FROM spans WHERE start_ms < end_ms
        UNION ALL
        SELECT DISTINCT {key}, ts_ms, 0, 1 FROM tx WHERE {key} IS NOT NULL
    ),
    running AS (
        SELECT k, at_ms, is_query,
               sum(step) OVER (PARTITION BY k ORDER BY at_ms, is_query
                               ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS fraud_known
        FROM timeline
    )
    SELECT k AS {key}, at_ms AS ts_ms, fraud_known FROM running WHERE is_query = 1
    """


def view_features_sql(view: WindowView) -> str:
    """One row per (entity key, event time) with every window feature of the view, as of that time."""
    key = view.join_key
    features = view.features
    rate = [f for f in features if f.agg is Agg.FRAUD_RATE]
    if len(rate) > 1:
        raise ValueError(f"view {view.view} has more than one fraud-rate feature")
    source = "tx"
    if rate:
        source = (
            f"(SELECT tx.*, r.fraud_known FROM tx LEFT JOIN ({fraud_known_sql(rate[0], key)}) r USING ({key}, ts_ms))"
        )
    columns = ",\n        ".join(f"{feature_sql(f, key)} AS {_quote(f.name)}" for f in features)
    return f"""
    SELECT {key}, epoch_ms(ts_ms)::TIMESTAMPTZ AS event_timestamp,
        {columns}
    FROM {source} AS events
    WHERE {key} IS NOT NULL
    QUALIFY row_number() OVER (PARTITION BY {key}, ts_ms ORDER BY transaction_id) = 1
    """
