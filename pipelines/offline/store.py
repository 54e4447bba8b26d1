"""Where the offline store's files live: one Parquet file per feature view under FRAUDSERVE_HOME/offline."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from feast import FeatureStore, FeatureView


def computed_file(view: Any) -> Path | None:
    """Where the backfill writes a window view (a `StreamFeatureView` with aggregations): beside the events file that
    its source reads, named after the view. None for any other view (its own batch source holds its rows)."""
    from feast.stream_feature_view import StreamFeatureView

    if not isinstance(view, StreamFeatureView) or not view.aggregations:
        return None
    events = getattr(view.batch_source, "path", None)
    if events is None:
        return None
    return Path(str(events)).parent / f"{view.name}.parquet"


def offline_view(store: FeatureStore, view: FeatureView) -> FeatureView:
    """The view as Feast's engines can read it offline: a window view becomes a plain `FeatureView` over the file
    the backfill computed (same name, entities, TTL and features); any other view is returned as it is.

    Feast's own engines cannot compute aggregations (its local engine refuses them, its file store raises KeyError
    on their names), so `materialize --engine feast` reads what fraudserve computed, exactly as the fast engine does.
    """
    from feast import FeatureView as PlainView
    from feast import Field
    from feast.infra.offline_stores.file_source import FileSource
    from feast.types import from_value_type

    path = computed_file(view)
    if path is None:
        return view
    entities = [store.get_entity(name) for name in view.entities]
    # Feast does not infer a stream view's entity columns; the computed file has one per join key.
    keys = view.entity_columns or [Field(name=e.join_key, dtype=from_value_type(e.value_type)) for e in entities]
    plain = PlainView(
        name=view.name,
        entities=entities,
        ttl=view.ttl,
        schema=[*keys, *view.features],
        source=FileSource(name=f"{view.name}_computed", path=str(path), timestamp_field="event_timestamp"),
        online=view.online,
    )
    plain.entity_columns = list({f.name: f for f in plain.entity_columns}.values())  # the schema's and the entities'
    return plain
