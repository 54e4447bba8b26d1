"""What registration checks before it stores a model: safe files, a loadable model, the feature service's features,
and that the API can serve that feature service (resolved with the very code the API serves with)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from core.errors import FraudserveError
from core.models.manifest import MANIFEST_FILE, FeatureField, Manifest

PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib", ".dill", ".sav")
MAX_MODEL_BYTES = 512 * 1024 * 1024


class RegistrationError(FraudserveError):
    """A model package that cannot be registered; the message names every offending feature or field."""

    code = "invalid_model"
    status = 422

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        text = message if not problems else message + "\n" + "\n".join(f"  - {p}" for p in problems)
        super().__init__(text, {"problems": list(problems)})
        self.problems = list(problems)


def looks_like_pickle(content: bytes) -> bool:
    """Pickle protocol 2+ starts with 0x80 and the protocol number; joblib/numpy pickles too."""
    return len(content) >= 2 and content[0] == 0x80 and 2 <= content[1] <= 5


def read_package(folder: Path) -> tuple[Manifest, dict[str, bytes]]:
    """The manifest and the files of a package folder; refuses pickles, stray files and a broken manifest."""
    if not folder.is_dir():
        raise RegistrationError(f"{folder} is not a model package folder (manifest.json and the model file)")
    files = {p.name: p for p in folder.iterdir() if p.is_file()}
    pickles = [n for n, p in files.items() if n.endswith(PICKLE_SUFFIXES) or looks_like_pickle(p.read_bytes()[:2])]
    if pickles:
        raise RegistrationError(
            f"{folder} holds pickled files, which can run code when loaded and are never accepted: "
            f"{', '.join(sorted(pickles))}. Save the model in its framework's format (LightGBM text, XGBoost JSON/UBJ)."
        )
    if MANIFEST_FILE not in files:
        raise RegistrationError(f"{folder} has no {MANIFEST_FILE}")
    try:
        manifest = Manifest.model_validate_json(files[MANIFEST_FILE].read_bytes())
    except ValidationError as exc:
        problems = [f"{'.'.join(str(p) for p in e['loc']) or 'manifest'}: {e['msg']}" for e in exc.errors()]
        raise RegistrationError(f"{folder / MANIFEST_FILE} is not a valid manifest:", problems) from exc
    stray = sorted(set(files) - {MANIFEST_FILE, manifest.model_file})
    if stray:
        raise RegistrationError(
            f"{folder} holds files other than {MANIFEST_FILE} and {manifest.model_file}: {', '.join(stray)}"
        )
    if manifest.model_file not in files:
        raise RegistrationError(f"{folder} lacks the model file the manifest names: {manifest.model_file}")
    if files[manifest.model_file].stat().st_size > MAX_MODEL_BYTES:
        raise RegistrationError(f"{manifest.model_file} is larger than {MAX_MODEL_BYTES // 2**20} MiB")
    return manifest, {name: path.read_bytes() for name, path in files.items()}


@dataclass(frozen=True)
class ServiceField:
    name: str
    dtype: str


_COMPATIBLE = {"int64": {"int64", "bool"}, "float64": {"float64", "int64", "bool"}, "bool": {"bool"}}


def feature_problems(model: Sequence[FeatureField], service: Sequence[ServiceField], service_name: str) -> list[str]:
    """Every feature the model reads that the feature service lacks or serves as another type, one line each.

    A model may read any subset of its service's features, in any order (SPEC): the API builds each vector by name,
    in the model's order."""
    problems: list[str] = []
    by_name = {f.name: f.dtype for f in service}
    for feature in model:
        served = by_name.get(feature.name)
        if served is None:
            problems.append(
                f"extra feature {feature.name!r}: the model reads it, feature service {service_name} lacks it"
            )
        elif served not in _COMPATIBLE[feature.dtype]:
            problems.append(
                f"type of {feature.name!r}: the model expects {feature.dtype}, "
                f"feature service {service_name} serves {served}"
            )
    return problems


def serving_problems(services: object, feature_service: str) -> list[str]:
    """Why the API could not serve `feature_service`, one line per problem naming its view; [] when it can.

    `services` is the registry's FeatureServices: one with a `serving_problems(name)` method (the Feast-backed one
    of `fraudserve.registry`, which resolves the API's feature plan) answers; any other is not checked."""
    own = getattr(services, "serving_problems", None)
    if callable(own):
        return list(own(feature_service))
    return []
