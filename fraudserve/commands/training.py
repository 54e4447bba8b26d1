"""`fraudserve train`: a training set from Feast, a model, its evaluation and package."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer

from core.errors import FraudserveError
from core.models.manifest import Flavor
from fraudserve.commands.common import console, fail, load_settings, out, parse_end, progress_bar


# ---------------------------------------------------------------------------------------------------------- train
def train_command(
    feature_service: Annotated[
        str | None, typer.Option(help="Feast feature service to train on (fraud_v1, fraud_v2).")
    ] = None,
    flavor: Annotated[Flavor, typer.Option(help="Model framework.")] = Flavor.lightgbm,
    register: Annotated[str | None, typer.Option(help="Register the package under this model name.")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Package folder (default under home).")] = None,
    seed: int = 7,
    label_maturity_days: Annotated[
        float, typer.Option(help="Leave out transactions younger than this at the label cut-off.")
    ] = 10.0,
    valid_days: Annotated[float, typer.Option(help="Days before the test days, for early stopping.")] = 5.0,
    test_days: Annotated[float, typer.Option(help="Latest days, held out for evaluation.")] = 5.0,
    cutoff: Annotated[str | None, typer.Option(help="Label cut-off (RFC 3339); default: the data's end.")] = None,
    from_logs: Annotated[
        bool, typer.Option("--from-logs", help="Train on the vectors the API served (the score log), not Feast's.")
    ] = False,
    log_model: Annotated[
        str | None, typer.Option("--model", help="--from-logs: the registered model whose logged vectors to use.")
    ] = None,
    since: Annotated[str | None, typer.Option(help="--from-logs: only scores logged since (RFC 3339).")] = None,
) -> None:
    """Training set from Feast (point in time), train, evaluate against a rules baseline, write a model package."""
    from fraudserve.feature_store import open_offline_store
    from fraudserve.registry import open_registry
    from pipelines.training.dataset import LabelPolicy, build_training_set
    from pipelines.training.train import TrainConfig, describe, train

    settings = load_settings()
    try:
        policy = LabelPolicy(cutoff=parse_end(cutoff) if cutoff else None, maturity=timedelta(days=label_maturity_days))
        if from_logs:
            from fraudserve.log_training import logged_training_set

            logged = parse_end(since) if since else None
            training_set = logged_training_set(
                settings, log_model or settings.model_name, logged, policy.cutoff, policy.maturity
            )
            feature_service = training_set.feature_service
        elif feature_service is None:
            raise ValueError("--feature-service is needed (or --from-logs, to train on the score log)")
        else:
            store = open_offline_store(settings)
            with progress_bar() as progress:
                task = progress.add_task(f"training set from {feature_service} (Feast, point in time)", total=None)
                training_set = build_training_set(
                    store,
                    feature_service,
                    settings.offline,
                    policy,
                    progress=lambda done, total: progress.update(task, completed=done, total=total),
                )
        frame = training_set.frame
        out.print(
            f"training set: {len(frame):,} rows, {int(frame['is_fraud'].sum()):,} known fraud, "
            f"{len(training_set.features)} features, labels as of {training_set.cutoff:%Y-%m-%d %H:%M} "
            f"({training_set.seconds:.1f} s)"
        )
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        package = out_dir or settings.packages_dir / f"{feature_service}-{flavor.value}-{stamp}"
        config = TrainConfig(flavor=flavor, seed=seed, valid_days=valid_days, test_days=test_days)
        with console.status("training ...") as status:
            result = train(training_set, config, package, progress=status.update)
        if from_logs:
            from fraudserve.log_training import mark_from_logs

            result = dataclasses.replace(
                result, manifest=mark_from_logs(result.package, log_model or settings.model_name, training_set)
            )
        out.print(f"model package: {result.package} ({result.seconds:.1f} s)")
        out.print(describe(result.manifest), highlight=False)
        if not result.beats_baseline:
            out.print("[bold yellow]the model does not beat the rules baseline on PR-AUC[/]")
        if register:
            if not result.beats_baseline:
                raise ValueError(f"{register} was not registered: the model does not beat the rules baseline")
            model = open_registry(settings).register(result.package, name=register, feature_service=feature_service)
            out.print(f"registered {model.name} version {model.version} ({', '.join(model.aliases) or 'no alias'})")
    except (FraudserveError, ValueError) as exc:
        raise fail(exc) from exc
