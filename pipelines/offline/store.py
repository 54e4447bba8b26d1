"""Where the offline store's files live: one Parquet file per feature view under FRAUDSERVE_HOME/offline."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class OfflineLayout:
    """The offline store's file layout, shared by the backfill (writer) and `feature_repo/` (Feast's reader)."""

    root: Path
    transactions_name: str = "transactions"
    labels_name: str = "labels"

    def file(self, name: str) -> Path:
        return self.root / f"{name}.parquet"

    @property
    def transactions_file(self) -> Path:
        return self.file(self.transactions_name)

    @property
    def labels_file(self) -> Path:
        return self.file(self.labels_name)

    @property
    def work_dir(self) -> Path:
        return self.root / ".work"

    @property
    def quarantine_file(self) -> Path:
        return self.root.parent / "quarantine" / "rejected_events.parquet"
