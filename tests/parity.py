"""Online (read through Feast's SDK) against offline (each entity's latest row in the offline store)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import duckdb

from core.settings import OfflineLayout
from pipelines.features.catalog import Catalog, load_catalog


def latest_rows(path: Path, key: str) -> dict[str, dict[str, object]]:
    """The offline row of each entity's latest event."""
    relation = duckdb.sql(
        f"SELECT * FROM read_parquet('{path}') QUALIFY row_number() OVER (PARTITION BY {key} "
        "ORDER BY event_timestamp DESC) = 1"
    )
    assert relation is not None
    rows = relation.fetchdf()
    return {r[key]: r for r in rows.to_dict("records")}


def same(a: object, b: object, rel: float = 1e-12) -> bool:
    if a is None or (isinstance(a, float) and math.isnan(a)):
        return b is None or (isinstance(b, float) and math.isnan(b))
    if isinstance(a, float) or isinstance(b, float):
        return b is not None and math.isclose(float(a), float(b), rel_tol=rel)  # type: ignore[arg-type]
    return a == b


def entity_mismatches(
    store: Any, layout: OfflineLayout, rel: float = 1e-12, catalog: Catalog | None = None
) -> tuple[int, list[tuple[object, ...]]]:
    """(values compared, mismatches) over every window feature of every window view of the catalog."""
    compared, mismatches = 0, list[tuple[object, ...]]()
    for view in (catalog or load_catalog()).window_views:
        offline = latest_rows(layout.file(view.view), view.join_key)
        names = [f.name for f in view.features]
        keys = sorted(offline)
        online = store.get_online_features(
            features=[f"{view.view}:{n}" for n in names], entity_rows=[{view.join_key: k} for k in keys]
        ).to_dict()
        for i, key in enumerate(keys):
            for name in names:
                compared += 1
                if not same(offline[key][name], online[name][i], rel):
                    mismatches.append((view.view, key, name, offline[key][name], online[name][i]))
    return compared, mismatches
