"""Models from MLflow: `models:/NAME/VERSION`, `models:/NAME@ALIAS`, `runs:/RUN_ID/PATH` or a local MLflow model
folder becomes a fraudserve package (the framework's own file format and a manifest), then a registered version.

Needs the optional extra `fraudserve[mlflow]` (the `mlflow-skinny` client) and `MLFLOW_TRACKING_URI` for
`models:/` and `runs:/`. Only native model files are taken: LightGBM text (`mlflow.lightgbm` with a Booster) and
XGBoost JSON/UBJ (`mlflow.xgboost`, a Booster or a scikit-learn wrapper). A pickled, cloudpickled or skops model
(`mlflow.sklearn`, or `mlflow.lightgbm` with an LGBMClassifier) can run code when loaded and is refused with the fix.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.models.manifest import Thresholds
from core.registry import RegistrationError
from core.settings import Settings

SCHEMES = ("models:/", "runs:/")
MLMODEL = "MLmodel"
THRESHOLDS_TAG = "fraudserve.thresholds"
NATIVE_FIX = (
    "log the framework's own model instead: mlflow.lightgbm.log_model(model.booster_, ...) for an LGBMClassifier, "
    "mlflow.xgboost.log_model(model.get_booster(), ...) (or the XGBClassifier itself) for XGBoost"
)


def is_mlflow_source(source: str | Path) -> bool:
    """A `models:/` or `runs:/` URI, or a local folder holding an MLflow `MLmodel` file."""
    text = str(source)
    return text.startswith(SCHEMES) or (Path(text) / MLMODEL).is_file()


@dataclass(frozen=True)
class MlflowModel:
    uri: str
    folder: Path  # the downloaded (or local) MLflow model folder
    flavor: str  # lightgbm or xgboost
    model_file: Path
    run_id: str | None
    mlflow_version: str | None
    signature_inputs: list[str] | None  # the signature's input names, where it has named columns
    tags: dict[str, str]  # the registered version's tags (models:/ only)

    def load(self) -> Any:
        """The framework's Booster, loaded from the native file (never unpickled)."""
        if self.flavor == "lightgbm":
            import lightgbm

            return lightgbm.Booster(model_file=str(self.model_file))
        import xgboost

        return xgboost.Booster(model_file=str(self.model_file))

    @property
    def source(self) -> dict[str, Any]:
        return {"uri": self.uri, "run_id": self.run_id, "mlflow_version": self.mlflow_version}


def _mlflow() -> Any:
    try:
        import mlflow
    except ImportError as exc:
        raise RegistrationError(
            "reading MLflow needs the mlflow extra: pip install 'fraudserve[mlflow]' (the mlflow-skinny client)"
        ) from exc
    return mlflow


def fetch(uri: str, into: Path) -> MlflowModel:
    """Download (or read) the MLflow model at `uri` and find its native model file; refuse anything else."""
    folder = Path(uri)
    tags: dict[str, str] = {}
    if uri.startswith(SCHEMES):
        mlflow = _mlflow()
        try:
            folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(into)))
        except Exception as exc:  # MlflowException, connection errors: say what and where
            raise RegistrationError(
                f"cannot read {uri} from MLflow at {mlflow.get_tracking_uri()}: {exc}. Set MLFLOW_TRACKING_URI to "
                "the tracking server, and check the name, version, alias or run id"
            ) from exc
        if uri.startswith("models:/"):
            tags = _version_tags(mlflow, uri)
    if not (folder / MLMODEL).is_file():
        raise RegistrationError(f"{uri} is not an MLflow model: {folder} has no {MLMODEL} file")
    import yaml

    document = yaml.safe_load((folder / MLMODEL).read_text()) or {}
    flavors: dict[str, Any] = document.get("flavors") or {}
    flavor, model_file = _native_file(uri, folder, flavors)
    return MlflowModel(
        uri=uri,
        folder=folder,
        flavor=flavor,
        model_file=model_file,
        run_id=document.get("run_id"),
        mlflow_version=document.get("mlflow_version"),
        signature_inputs=_signature_inputs(document.get("signature")),
        tags=tags,
    )


NATIVE_SUFFIXES = {"lightgbm": (".lgb", ".txt"), "xgboost": (".json", ".ubj", ".xgb")}


def _native_file(uri: str, folder: Path, flavors: dict[str, Any]) -> tuple[str, Path]:
    for flavor, suffixes in NATIVE_SUFFIXES.items():
        config = flavors.get(flavor)
        if config is None:
            continue
        data = str(config.get("data", ""))
        path = folder / data
        if not data.endswith(suffixes) or not path.is_file() or _looks_pickled(path):
            how = config.get("serialization_format") or Path(data).suffix.lstrip(".") or "no file"
            raise RegistrationError(
                f"{uri}: the {flavor} model is stored as {data or 'nothing'} ({how}), not in {flavor}'s own format; "
                f"pickle, cloudpickle and skops files can run code when loaded and are never accepted: {NATIVE_FIX}"
            )
        return flavor, path
    if "sklearn" in flavors:
        serialization = flavors["sklearn"].get("serialization_format", "pickle")
        raise RegistrationError(
            f"{uri} is an mlflow.sklearn model ({serialization}), which can run code when loaded: {NATIVE_FIX}"
        )
    raise RegistrationError(
        f"{uri} has no LightGBM or XGBoost model (its flavors: {', '.join(sorted(flavors)) or 'none'}): {NATIVE_FIX}"
    )


def _looks_pickled(path: Path) -> bool:
    from core.registry.checks import looks_like_pickle

    try:
        with path.open("rb") as handle:
            return looks_like_pickle(handle.read(2))
    except OSError:
        return False


def _signature_inputs(signature: Any) -> list[str] | None:
    if not isinstance(signature, dict) or not signature.get("inputs"):
        return None
    try:
        columns = json.loads(signature["inputs"])
    except (TypeError, ValueError):
        return None
    names = [c.get("name") for c in columns if isinstance(c, dict)]
    return [str(n) for n in names] if names and all(names) else None


def _version_tags(mlflow: Any, uri: str) -> dict[str, str]:
    """The registered version's tags of models:/NAME/VERSION or models:/NAME@ALIAS ({} for a logged model id)."""
    rest = uri[len("models:/") :].strip("/")
    client = mlflow.MlflowClient()
    try:
        if "@" in rest:
            name, alias = rest.split("@", 1)
            version = client.get_model_version_by_alias(name, alias)
        elif "/" in rest:
            name, number = rest.split("/", 1)
            version = client.get_model_version(name, number)
        else:
            return {}
    except Exception:
        return {}
    return dict(version.tags or {})


def parse_thresholds(text: str | None) -> tuple[float, float] | None:
    """'A,B' (suspicious, highly suspicious) from the command line."""
    if text is None:
        return None
    try:
        suspicious, highly = (float(v) for v in text.split(","))
    except ValueError as exc:
        raise RegistrationError(
            f"--thresholds {text!r}: give two scores, suspicious and highly suspicious: 0.3,0.8"
        ) from exc
    return suspicious, highly


def thresholds_from_tags(tags: dict[str, str]) -> Thresholds | None:
    raw = tags.get(THRESHOLDS_TAG)
    if raw is None:
        return None
    try:
        suspicious, highly = (float(v) for v in raw.split(","))
        return Thresholds(suspicious=suspicious, highly_suspicious=highly, method=f"MLflow tag {THRESHOLDS_TAG}")
    except ValueError as exc:
        raise RegistrationError(f"the MLflow tag {THRESHOLDS_TAG}={raw!r} is not two scores 'A,B' with A <= B") from exc


def register_mlflow(
    uri: str,
    *,
    name: str,
    feature_service: str,
    thresholds: tuple[float, float] | None = None,
    settings: Settings | None = None,
    report: Any = None,
    registry: Any = None,
) -> Any:
    """Register the MLflow model at `uri` as the next version of `name` (see the module's docstring).

    Thresholds: given, else the version's `fraudserve.thresholds` tag, else chosen on the latest mature labelled
    days of the offline store by `fraudserve train`'s rule (reported through `report`, e.g. print)."""
    from fraudserve.models import native_model, save_package
    from fraudserve.registry import open_registry

    resolved = settings or Settings()
    with tempfile.TemporaryDirectory(prefix="fraudserve-mlflow-") as work:
        model = fetch(uri, Path(work) / "download")
        booster = model.load()
        native = native_model(booster)
        if model.signature_inputs is not None and model.signature_inputs != native.features:
            problems = [f"model file: {', '.join(native.features)}", f"signature: {', '.join(model.signature_inputs)}"]
            raise RegistrationError(
                f"{uri}: the MLflow signature's inputs are not the model file's features:", problems
            )
        chosen: Thresholds | tuple[float, float] | None = thresholds or thresholds_from_tags(model.tags)
        validation = None
        if chosen is None:
            validation = latest_window(feature_service, resolved)
        package = Path(work) / "package"
        manifest = save_package(
            booster,
            package,
            feature_service=feature_service,
            thresholds=chosen,
            validation=validation,
            settings=resolved,
            extra={"source": model.source},
        )
        if chosen is None and report is not None:
            held = manifest.thresholds
            report(
                f"thresholds chosen on the latest {len(validation) if validation is not None else 0:,} mature "
                f"labelled rows: suspicious {held.suspicious:.4f}, highly_suspicious {held.highly_suspicious:.4f} "
                f"({held.method})"
            )
        target = registry if registry is not None else open_registry(resolved)
        return target.register(package, name=name, feature_service=feature_service)


VALIDATION_DAYS = 5.0  # `fraudserve train`'s validation days


def latest_window(feature_service: str, settings: Settings) -> Any:
    """The latest `VALIDATION_DAYS` of mature labelled rows of the offline store (the label rule of train)."""
    import pandas as pd

    from fraudserve.training import training_frame

    frame = training_frame(feature_service, settings=settings)
    start = frame["event_timestamp"].max() - pd.Timedelta(days=VALIDATION_DAYS)
    return frame[frame["event_timestamp"] > start]
