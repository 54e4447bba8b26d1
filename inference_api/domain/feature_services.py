"""The registry's view of Feast: feature services, their typed features, offline rows for a smoke test, and the
API's own feature plan (so that a registered model never fails to load or answers a 500 for its features)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import duckdb
import numpy as np

from core.registry.checks import ServiceField
from core.settings import OfflineLayout
from pipelines.training.dataset import entity_columns, service_features

if TYPE_CHECKING:
    from feast import FeatureStore


class FeastFeatureServices:
    """The registry's FeatureServices on a Feast store (the CLI's offline store, or the API's own)."""

    def __init__(self, store: FeatureStore, layout: OfflineLayout) -> None:
        self.store = store
        self.layout = layout

    def service_names(self) -> list[str]:
        return sorted(s.name for s in self.store.list_feature_services())

    def service_fields(self, name: str) -> list[ServiceField]:
        return [ServiceField(f.name, f.dtype) for f in service_features(self.store, name)]

    def sample_matrix(self, name: str, rows: int) -> np.ndarray:
        path = self.layout.transactions_file
        if not path.exists():
            return np.empty((0, len(self.service_fields(name))))
        entity_rows = (
            duckdb.connect()
            .execute(
                f"SELECT {', '.join(entity_columns())}, event_timestamp FROM read_parquet('{path}') "
                f"ORDER BY event_timestamp DESC LIMIT {int(rows)}"
            )
            .df()
        )
        service = self.store.get_feature_service(name)
        frame = self.store.get_historical_features(entity_df=entity_rows, features=service).to_df()
        names = [f.name for f in self.service_fields(name)]
        return frame[names].astype("float64").to_numpy(dtype=np.float64, na_value=np.nan)

    def serving_problems(self, name: str) -> list[str]:
        """Why the API could not serve `name`: its feature plan resolved as the API resolves it when it loads a
        model, so a model registered here never fails to load or answers a 500 for its features."""
        from inference_api.domain.plan import UnknownFeatureService, resolve_plan

        try:
            resolve_plan(self.store, name)
        except UnknownFeatureService as exc:
            return exc.problems or [str(exc)]
        return []
