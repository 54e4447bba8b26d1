"""`fraudserve models`: the model registry."""

from __future__ import annotations

import importlib.abc
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from core.errors import FraudserveError
from fraudserve.commands.common import fail, load_settings, out

app = typer.Typer(no_args_is_help=True, help="The model registry: register, list, show, promote, rollback.")


@contextmanager
def sklearn_hidden() -> Iterator[None]:
    """LightGBM and XGBoost import scikit-learn (and with it SciPy) at their own import when it is installed, for
    their scikit-learn wrappers: about 1 s of CPU, a third of a registration in a fresh process. Checking a package
    never uses the wrappers, so this short-lived command imports the frameworks with scikit-learn hidden."""
    if "sklearn" in sys.modules:
        yield
        return
    sys.modules["sklearn"] = None  # type: ignore[assignment]  # `import sklearn` raises ImportError meanwhile
    try:
        yield
    finally:
        if sys.modules.get("sklearn", 0) is None:
            del sys.modules["sklearn"]


@contextmanager
def feast_as_optimized() -> Iterator[None]:
    """Feast imported as under `python -O`: without typeguard's run-time type checks on its classes. Feast decorates
    its definition classes with typeguard's `@typechecked`, which at import parses and recompiles every method of
    them (about 4.3 of the 5.7 s of CPU that importing Feast takes, most of a registration that misses the cache
    of fraudserve.service_cache). typeguard itself makes the decorator a no-op under `-O` ("checks not meant to be
    run in production"); this short-lived command only reads what `features apply` stored and checked, so it takes
    the same choice for the imports made meanwhile. The decorator is swapped only when Feast is about to be imported
    (a registration that finds the cache imports neither), and restored after; nothing changes once Feast is
    imported."""
    if "feast" in sys.modules:
        yield
        return
    swapped: dict[str, Any] = {}

    def as_optimized(target: Any = None, **_: Any) -> Any:
        return (lambda found: found) if target is None else target

    class BeforeFeast(importlib.abc.MetaPathFinder):
        def find_spec(self, name: str, path: Any, target: Any = None) -> None:
            """Finds nothing (the usual finders import Feast): swaps the decorator first."""
            if name == "feast" and not swapped:
                import typeguard

                swapped["typechecked"] = typeguard.typechecked
                typeguard.typechecked = as_optimized

    finder = BeforeFeast()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        if swapped:
            import typeguard

            typeguard.typechecked = swapped["typechecked"]


# --------------------------------------------------------------------------------------------------------- models
@app.command("register")
def models_register(
    path: Annotated[
        str,
        typer.Argument(
            help="Model package folder (manifest.json and the model file), or an MLflow model: models:/NAME/VERSION, "
            "models:/NAME@ALIAS, runs:/RUN_ID/PATH or a local MLflow model folder (with fraudserve[mlflow])."
        ),
    ],
    name: Annotated[str, typer.Option(help="Model name.")],
    feature_service: Annotated[str, typer.Option(help="The feature service the model was trained on.")],
    thresholds: Annotated[
        str | None,
        typer.Option(
            help="MLflow models: label thresholds 'SUSPICIOUS,HIGHLY' (default: the version's fraudserve.thresholds "
            "tag, else chosen on the latest mature labelled days).",
            show_default=False,
        ),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(envvar="FRAUDSERVE_URL", help="Register through the API running there (e.g. http://host:8000)."),
    ] = None,
    key: Annotated[
        str | None, typer.Option(envvar="FRAUDSERVE_API_KEY", help="An admin API key for --url.", show_default=False)
    ] = None,
) -> None:
    """Validate a model package against its feature service and store it as the next version (here, or with --url
    in the registry of a running API, which runs the same checks)."""
    from fraudserve.registry import open_registry

    try:
        if url is not None:
            remote = open_registry(url=url, key=key).register(Path(path), name=name, feature_service=feature_service)
            version, aliases = remote["version"], remote["aliases"]
        else:
            from fraudserve.mlflow_models import is_mlflow_source, parse_thresholds, register_mlflow

            if is_mlflow_source(path):
                model = register_mlflow(
                    path,
                    name=name,
                    feature_service=feature_service,
                    thresholds=parse_thresholds(thresholds),
                    settings=load_settings(),
                    report=out.print,
                )
            else:
                with sklearn_hidden(), feast_as_optimized():
                    model = open_registry(load_settings()).register(path, name=name, feature_service=feature_service)
            version, aliases = model.version, list(model.aliases)
            source = model.manifest.params.get("source")
            if source:
                out.print(f"from {source['uri']} (run {source['run_id']}, MLflow {source['mlflow_version']})")
    except FraudserveError as exc:
        raise fail(exc) from exc
    out.print(f"registered {name} version {version} ({', '.join(aliases) or 'no alias'})")


@app.command("list")
def models_list() -> None:
    """Registered models, their versions and aliases."""
    from fraudserve.registry import open_registry

    registry = open_registry(load_settings(), check_features=False)
    table = Table(title="registered models")
    for column in ("name", "version", "aliases", "flavor", "feature service", "PR-AUC", "registered"):
        table.add_column(column)
    for name in registry.names():
        for model in registry.versions(name):
            m = model.manifest
            pr_auc = m.evaluation.model.pr_auc if m.evaluation else None
            table.add_row(
                name,
                str(model.version),
                ", ".join(model.aliases),
                m.flavor.value,
                m.feature_service,
                "-" if pr_auc is None else f"{pr_auc:.4f}",
                f"{m.registered_at:%Y-%m-%d %H:%M}" if m.registered_at else "-",
            )
    out.print(table)


@app.command("show")
def models_show(
    name: str, version: Annotated[str, typer.Argument(help="Version number or alias.")] = "production"
) -> None:
    """A version's manifest (as JSON) and the alias history of the model."""
    from fraudserve.registry import open_registry

    registry = open_registry(load_settings(), check_features=False)
    try:
        model = registry.get(name, version)
    except FraudserveError as exc:
        raise fail(exc) from exc
    document = {
        "name": name,
        "version": model.version,
        "aliases": list(model.aliases),
        "manifest": json.loads(model.manifest.model_dump_json()),
        "alias_history": registry.history(name),
        # "ok", or why the stored files are not the registered ones (the API refuses to load such a version)
        "integrity": registry.verify(name, model.version) or "ok",
    }
    out.print_json(json.dumps(document))


@app.command("promote")
def models_promote(
    name: str, version: int, alias: Annotated[str, typer.Option(help="Alias to move.")] = "production"
) -> None:
    """Point an alias (production by default) at a version."""
    from fraudserve.registry import open_registry

    try:
        model = open_registry(load_settings(), check_features=False).promote(name, version, alias)
    except FraudserveError as exc:
        raise fail(exc) from exc
    out.print(f"{name}: {alias} -> version {model.version}")


@app.command("rollback")
def models_rollback(name: str) -> None:
    """Move production back to the version it pointed to before."""
    from fraudserve.registry import open_registry

    try:
        model = open_registry(load_settings(), check_features=False).rollback(name)
    except FraudserveError as exc:
        raise fail(exc) from exc
    out.print(f"{name}: production -> version {model.version}")
