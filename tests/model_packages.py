"""Real, tiny LightGBM and XGBoost model packages for registry tests (trained on random numbers in a blink)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.models.manifest import MANIFEST_FILE, FeatureField, Flavor, Manifest, Thresholds


def make_package(
    folder: Path,
    features: list[tuple[str, str]],
    flavor: Flavor = Flavor.lightgbm,
    feature_service: str = "svc",
    seed: int = 0,
) -> Path:
    """A package folder with a model trained on the given feature names and a matching manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(400, len(features)))
    y = (x[:, 0] + rng.normal(scale=0.5, size=400) > 1).astype(int)
    names = [n for n, _ in features]
    if flavor is Flavor.lightgbm:
        import lightgbm

        booster = lightgbm.train(
            {"objective": "binary", "verbose": -1, "num_threads": 1, "min_data_in_leaf": 5},
            lightgbm.Dataset(x, y, feature_name=names),
            num_boost_round=5,
        )
        model_file = "model.txt"
        booster.save_model(str(folder / model_file))
    else:
        import xgboost

        xgb_booster = xgboost.train(
            {"objective": "binary:logistic", "nthread": 1}, xgboost.DMatrix(x, y, feature_names=names), 5
        )
        model_file = "model.json"
        xgb_booster.save_model(str(folder / model_file))
    manifest = Manifest(
        flavor=flavor,
        model_file=model_file,
        feature_service=feature_service,
        features=[FeatureField(name=n, dtype=t) for n, t in features],  # type: ignore[arg-type]
        thresholds=Thresholds(suspicious=0.3, highly_suspicious=0.7),
    )
    (folder / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2))
    return folder
