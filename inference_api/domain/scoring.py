"""Scoring in business terms: a transaction in, a fraud score, a label, reasons and freshness out.

The request is translated into the data domain (the transaction and its entities), the model's representation is
built (its feature service's online features plus request-time features, in manifest order), the model predicts,
and the score is translated back (label from the manifest's thresholds, or `uncertain` when the inputs cannot be
trusted: a required feature group missing, or older than its feature view's TTL).
"""

from __future__ import annotations

import collections
import functools
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from core.errors import FraudserveError
from inference_api.domain.batch_lookup import BatchLookup
from inference_api.domain.features import FeatureColumns, FeatureSource, TransactionRecord, ViewValues
from inference_api.domain.models import LoadedModel, ModelManager
from inference_api.domain.plan import FeaturePlan, OnDemandRead, as_feast_returns
from inference_api.domain.redis_source import RedisFeatureSource
from inference_api.observability import Metrics
from pipelines.features.catalog import TRANSACTION_VIEW
from pipelines.features.request_time import request_time_arrays, request_time_row

log = logging.getLogger("fraudserve.scoring")
UNCERTAIN = "uncertain"


class TransactionNotFound(FraudserveError):
    code = "transaction_not_found"
    status = 404

    def __init__(self, transaction_id: str) -> None:
        super().__init__(
            f"transaction {transaction_id!r} is not in the online store: it has not been ingested (backfill and "
            'materialize, or the stream). Send the whole event as {"transaction": {...}} to score it anyway.',
            {"transaction_id": transaction_id},
        )


class Reason(NamedTuple):
    """A feature's contribution to the score (a tuple: a batch makes three per item, and a frozen dataclass costs
    several times as much to create)."""

    feature: str
    value: float | None
    contribution: float


# A Reason from a (feature, value, contribution) tuple: what `Reason._make` does, without its Python-level length check.
_reason = functools.partial(tuple.__new__, Reason)


@dataclass(slots=True)  # not frozen: a frozen dataclass sets each of its ten fields through object.__setattr__, 4x
class Score:  # the cost of building one, and a batch builds one per item (nothing changes a Score once built)
    transaction_id: str
    score: float
    label: str
    model: LoadedModel
    reasons: list[Reason]
    feature_freshness_seconds: float | None
    uncertain_reasons: list[str] = field(default_factory=list)
    # For the score log: the row the model saw (manifest order, NaN: missing), why this version scored it
    # (production, canary, shadow or direct: named by the request), and the candidate's shadow score of it.
    vector: np.ndarray | None = field(default=None, compare=False, repr=False)
    role: str = "production"
    shadow: Score | None = field(default=None, compare=False, repr=False)


@dataclass(slots=True)
class ScoredBatch:
    """score:batch's scores of one version by id, as columns over the found ids (`rows`: their positions in `ids`,
    in order): what the route writes the answer and the score log from, without a `Score` per item. `outcomes`
    gives the same items as `Score`s and `TransactionNotFound`s, in the order of `ids`."""

    ids: Sequence[str]
    model: LoadedModel
    role: str
    rows: list[int]
    scores: list[float]
    labels: list[str]
    freshness: list[float | None]
    uncertain: list[list[str]]
    matrix: np.ndarray  # the found rows' model matrix
    # Each row's top reasons, rows x top_reasons: the features (names), their values (NaN: missing) and gains.
    reasons: tuple[np.ndarray, np.ndarray, np.ndarray] | None

    @property
    def complete(self) -> bool:
        """Every id found."""
        return len(self.rows) == len(self.ids)

    def outcomes(self) -> list[Score | FraudserveError]:
        model, role, ids = self.model, self.role, self.ids
        if self.reasons is None:
            why: Sequence[list[Reason]] = [[] for _ in self.rows]
        else:
            features, picked, gains = self.reasons
            values = np.where(np.isnan(picked), np.array(None), picked).tolist()  # NaN: missing
            why = [
                list(map(_reason, zip(f, v, g, strict=True)))
                for f, v, g in zip(features.tolist(), values, gains.tolist(), strict=True)
            ]
        scored = [
            Score(ids[row], score, verdict, model, reasons, fresh, doubt, vector, role)
            for row, score, verdict, reasons, fresh, doubt, vector in zip(
                self.rows, self.scores, self.labels, why, self.freshness, self.uncertain, self.matrix, strict=True
            )
        ]
        if self.complete:
            return list(scored)
        placed: list[Score | None] = [None] * len(ids)  # each unknown id is its own TransactionNotFound
        for row, item in zip(self.rows, scored, strict=True):
            placed[row] = item
        return [TransactionNotFound(t) if o is None else o for t, o in zip(ids, placed, strict=True)]


def _age_text(seconds: float) -> str:
    return f"{seconds / 86400:.1f} days" if seconds >= 86400 else f"{seconds / 3600:.1f} hours"


# Up to this many rows `build_rows` computes the request-time features in plain Python (`request_time_row`): numpy's
# three arrays in and out cost more than the arithmetic for the single score's 1 to a few rows.
_PLAIN_REQUEST_TIME_ROWS = 8


def build_rows(
    plan: FeaturePlan, records: Sequence[TransactionRecord], fetched: Sequence[dict[str, ViewValues]], now: float
) -> tuple[np.ndarray, list[list[str]], list[float | None]]:
    """The model matrix (manifest order), the reasons each row is uncertain, and each row's feature freshness."""
    # Row by row: a request batch holds 1 to 64 records, so a list per column cost more than the values themselves.
    rows: list[dict[str, Any]] = []
    served, own = plan.served_by_view, plan.transaction_fields
    for record, views in zip(records, fetched, strict=True):
        row: dict[str, Any] = {}
        for group, names in served:
            row.update(zip(names, map(views[group].values.get, names), strict=True))
        row.update(zip(own, map(record.fields.get, own), strict=True))
        rows.append(row)
    if plan.request_time and len(records) <= _PLAIN_REQUEST_TIME_ROWS:  # the single score's 1 to a few rows
        for row, record, views in zip(rows, records, fetched, strict=True):
            fields, card = record.fields, views["card_features"].values
            mean = card.get("card_amount_mean_7d")
            at_request = request_time_row(fields.get("amount"), fields.get("event_time_ms"), mean)
            for name in plan.request_time:
                row[name] = at_request[name]
    elif plan.request_time:
        mean_7d = [views["card_features"].values.get("card_amount_mean_7d") for views in fetched]
        extra = request_time_arrays(
            np.array([r.fields.get("amount") for r in records], dtype=np.float64),  # None: NaN
            np.array([r.fields.get("event_time_ms") for r in records], dtype=np.float64),
            np.array(mean_7d, dtype=np.float64),
        )
        for name in plan.request_time:
            for row, value in zip(rows, extra[name].tolist(), strict=True):
                row[name] = value
    for odfv in plan.on_demand:
        for name, computed in on_demand_values(odfv, records, fetched).items():
            for row, value in zip(rows, computed, strict=True):
                row[name] = value
    # numpy's float64 makes None (a missing value) NaN.
    features = plan.features
    matrix = np.array([list(map(row.__getitem__, features)) for row in rows], dtype=np.float64).reshape(
        len(records), len(features)
    )

    uncertain: list[list[str]] = []
    freshness: list[float | None] = []
    for record, views in zip(records, fetched, strict=True):
        reasons: list[str] = []
        ages: list[float] = []
        fields = record.fields
        for view, join_key, ttl in plan.freshness_checks:
            if fields.get(join_key) is None:
                continue  # no device or IP on this transaction: that group is not required
            stamp = views[view.view].timestamp
            if stamp is None:
                reasons.append(f"no {view.subject} features for {join_key} {record.key(join_key)!r}")
                continue
            age = max(now - stamp, 0.0)
            ages.append(age)
            if ttl is not None and age > ttl:
                reasons.append(
                    f"{view.subject} features for {record.key(join_key)!r} are {_age_text(age)} old, older than the "
                    f"{view.view} TTL of {_age_text(ttl)}"
                )
        uncertain.append(reasons)
        freshness.append(max(ages) if ages else None)
    return matrix, uncertain, freshness


def top_positions(contributions: list[float], count: int) -> list[int]:
    """The positions of the `count` largest contributions, largest first, ties in feature order: what
    `np.argsort(-row, kind="stable")[:count]` gives (NaN last), without numpy's per-call cost on one short row."""
    if any(map(math.isnan, contributions)):  # NaN sorts last in numpy, nowhere in particular in Python
        top: list[int] = np.argsort(-np.asarray(contributions), kind="stable")[:count].tolist()
        return top
    return sorted(range(len(contributions)), key=contributions.__getitem__, reverse=True)[:count]


def build_matrix(
    plan: FeaturePlan, columns: FeatureColumns, rows: np.ndarray, now: float
) -> tuple[np.ndarray, list[list[str]], list[float | None]]:
    """`build_rows` column-wise, for the `rows` (indices) of a batch read by `FeatureSource.columns`: the same model
    matrix, uncertain reasons and freshness, with numpy over whole columns. Only a row that is uncertain costs
    Python of its own (its reasons name keys and ages, as `build_rows` words them)."""
    columns_of: dict[str, np.ndarray] = {}
    for view in plan.views:
        for name in view.served:
            columns_of[name] = columns.numbers[f"{view.view}:{name}"][rows]
    for name in plan.transaction_fields:
        columns_of[name] = columns.numbers[f"{TRANSACTION_VIEW}:{name}"][rows]
    if plan.request_time:
        extra = request_time_arrays(
            columns.numbers[f"{TRANSACTION_VIEW}:amount"][rows],
            columns.numbers[f"{TRANSACTION_VIEW}:event_time_ms"][rows],
            columns.numbers["card_features:card_amount_mean_7d"][rows],
        )
        for name in plan.request_time:
            columns_of[name] = np.asarray(extra[name], dtype=np.float64)
    matrix = np.empty((len(rows), len(plan.features)), dtype=np.float64)
    for j, name in enumerate(plan.features):
        matrix[:, j] = columns_of[name]

    ages = np.full((len(rows), len(plan.views)), np.nan)
    doubtful = np.zeros(len(rows), dtype=bool)
    for v, view in enumerate(plan.views):
        required = columns.present[view.join_key][rows]
        stamp = columns.stamps[view.view][rows]
        age = np.maximum(now - stamp, 0.0)
        known = required & ~np.isnan(stamp)
        ages[:, v] = np.where(known, age, np.nan)
        doubtful |= required & np.isnan(stamp)
        if view.ttl is not None:
            doubtful |= known & (age > view.ttl.total_seconds())
    uncertain: list[list[str]] = [[] for _ in rows]
    for i in np.flatnonzero(doubtful):
        row = int(rows[i])
        for v, view in enumerate(plan.views):
            if not columns.present[view.join_key][row]:
                continue
            key = str(columns.text(view.join_key, row))
            if np.isnan(columns.stamps[view.view][row]):
                uncertain[i].append(f"no {view.subject} features for {view.join_key} {key!r}")
            elif view.ttl is not None and ages[i, v] > (ttl := view.ttl.total_seconds()):
                uncertain[i].append(
                    f"{view.subject} features for {key!r} are {_age_text(float(ages[i, v]))} old, older than the "
                    f"{view.view} TTL of {_age_text(ttl)}"
                )
    freshest = np.fmax.reduce(ages, axis=1) if len(plan.views) else np.full(len(rows), np.nan)
    freshness = [None if math.isnan(f) else f for f in freshest.tolist()]
    return matrix, uncertain, freshness


def _predict_and_explain(model: LoadedModel, matrix: np.ndarray, explain: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """The model's scores of `matrix` and, with `explain`, its contributions: from one walk of the trees when the
    explainer can (a compiled LightGBM model's decision paths, the same numbers), else by two calls."""
    both = getattr(model.explainer, "predict_and_explain", None) if explain else None
    if both is not None and (result := both(matrix)) is not None:
        scores, contributions = result
        return scores, contributions
    return model.predict(matrix), model.explainer.contributions(matrix) if explain else None


def on_demand_values(
    read: OnDemandRead, records: Sequence[TransactionRecord], fetched: Sequence[dict[str, ViewValues]]
) -> dict[str, list[Any]]:
    """An on-demand view's served features for each record, computed as Feast's online read computes them.

    The input is what Feast's response holds for the view (`_augment_response_with_on_demand_transforms`): the
    entity columns, the features of its source projections and its request data, as python values (None where
    missing), one list per column; python mode calls the user's function on it as `transform_dict` does
    (`OnDemandRead.python_values`, without Feast's per-call type checks), pandas mode `transform_arrow` on it as an
    Arrow table. The outputs are converted as Feast converts them (to the schema's type and back:
    `as_feast_returns`)."""
    import pyarrow as pa

    inputs: dict[str, list[Any]] = {}
    for key in read.join_keys:
        inputs[key] = [record.get(key) for record in records]
    for view, feature in read.inputs:
        if view == TRANSACTION_VIEW:
            inputs[feature] = [record.fields.get(feature) for record in records]
        else:
            inputs[feature] = [views[view].values.get(feature) for views in fetched]
    for name in read.request_fields:
        inputs[name] = [record.get(name) for record in records]
    computed = read.python_values(inputs)
    if computed is not None:
        return computed
    odfv = read.odfv
    outputs: dict[str, Any]
    if odfv.mode == "python":
        if odfv.singleton:
            rows = [odfv.transform_dict({k: [v[i]] for k, v in inputs.items()}) for i in range(len(records))]
            outputs = {name: [row[name] for row in rows] for name in read.features}
        else:
            outputs = odfv.transform_dict(inputs)
    else:
        table = odfv.transform_arrow(pa.Table.from_pydict(inputs), False)
        outputs = {name: table[name].to_numpy(zero_copy_only=False) for name in read.features}
    return {name: as_feast_returns(outputs[name], kind) for name, kind in zip(read.features, read.types, strict=True)}


class ScoringService:
    def __init__(
        self,
        source: FeatureSource,
        models: ModelManager,
        metrics: Metrics,
        top_reasons: int = 3,
        canary_percent: float = 0.0,
        shadow: bool = False,
    ) -> None:
        self.source = source
        self.models = models
        self.metrics = metrics
        self.top_reasons = top_reasons
        self.canary_percent = canary_percent
        self.shadow = shadow
        # score:batch's read without Lua on a single Redis (`batch_lookup.py`); other sources read `columns` themselves.
        self.batch_lookup = BatchLookup(source) if isinstance(source, RedisFeatureSource) and source.columnar else None
        self._names: dict[int, tuple[FeaturePlan, np.ndarray]] = {}

    async def close(self) -> None:
        """Close the batch lookup's connections (the source's own are closed by the source)."""
        if self.batch_lookup is not None:
            await self.batch_lookup.close()

    def choose(self) -> tuple[LoadedModel, str]:
        """The version that scores one request, and why (production, or candidate for the canary share)."""
        production = self.models.production()
        candidate = self.models.candidate()
        if candidate is not None and self.canary_percent > 0 and random.random() * 100 < self.canary_percent:
            return candidate, "canary"
        return production, "production"

    async def lookup(
        self, transaction_ids: Sequence[str], plan: FeaturePlan | None = None
    ) -> list[TransactionRecord | None]:
        """The transactions, and with `plan` (the production model's) their entity features when the source can
        read both in one round trip."""
        started = time.perf_counter()
        try:
            return await self.source.transactions(transaction_ids, plan)
        finally:
            self.metrics.stage("transaction_lookup", time.perf_counter() - started)

    async def score(self, records: Sequence[TransactionRecord], model: LoadedModel | None = None) -> list[Score]:
        """Score transactions (looked up, or inline) with one feature fetch and one model call.

        `model`: a specific version (the generic per-model API); by default production, or candidate for the
        canary share.
        """
        if model is not None:
            return await self._score(records, model, serving_default=False)
        chosen = [self.choose()[0] for _ in records]  # the canary share is drawn per request, not per batch
        if all(m is chosen[0] for m in chosen):
            return await self._score(records, chosen[0], serving_default=True)
        results: dict[int, Score] = {}
        for version in {id(m): m for m in chosen}.values():
            indices = [i for i, m in enumerate(chosen) if m is version]
            scored = await self._score([records[i] for i in indices], version, serving_default=True)
            results.update(zip(indices, scored, strict=True))
        return [results[i] for i in range(len(records))]

    async def _score(
        self, records: Sequence[TransactionRecord], model: LoadedModel, serving_default: bool, role: str | None = None
    ) -> list[Score]:
        if all(r.views is not None and r.views_plan is model.plan for r in records):
            fetched = [r.views for r in records if r.views is not None]  # read with the transactions
        else:
            started = time.perf_counter()
            fetched = await self.source.views(model.plan, records)
            self.metrics.stage("feature_fetch", time.perf_counter() - started)

        started = time.perf_counter()
        matrix, uncertain, freshness = build_rows(model.plan, records, fetched, time.time())
        scores, contributions = _predict_and_explain(model, matrix, bool(self.top_reasons))
        self.metrics.stage("predict", time.perf_counter() - started)
        shadows = self._shadow(records, fetched, scores) if self.shadow and serving_default else None
        if role is None:
            production = model is self.models.state.production
            role = "direct" if not serving_default else "production" if production else "canary"

        names = model.plan.features
        width, top = len(names), self.top_reasons
        label_of = model.manifest.thresholds.label
        listed: list[float] = scores.tolist()
        gains: list[list[float]] | None = None if contributions is None else contributions.tolist()
        values: list[list[float]] = matrix.tolist()
        results = []
        labels: dict[str, int] = {}
        for i, record in enumerate(records):
            score = listed[i]
            label = UNCERTAIN if uncertain[i] else label_of(score)
            reasons: list[Reason] = []
            if gains is not None:
                row, seen = gains[i][:width], values[i]  # the explainer's last column is the bias, never a reason
                reasons = [
                    _reason((names[j], None if seen[j] != seen[j] else seen[j], row[j]))  # NaN: missing
                    for j in top_positions(row, top)
                ]
            results.append(
                Score(record.transaction_id, score, label, model, reasons, freshness[i], uncertain[i], matrix[i], role,
                      None if shadows is None else shadows[i])
            )  # fmt: skip
            labels[label] = labels.get(label, 0) + 1
        for label, count in labels.items():  # one metric call per label, not per score
            self.metrics.scored(model.name, model.version, label, count)
        return results

    async def score_columns(self, ids: Sequence[str], model: LoadedModel, role: str) -> list[Score | FraudserveError]:
        """Score transactions by id column-wise with one version (`columns`), as one `Score` per id or
        `TransactionNotFound` for an unknown id, in the order of `ids`: each item equal to what `_score` gives."""
        return (await self.columns(ids, model, role)).outcomes()

    async def columns(self, ids: Sequence[str], model: LoadedModel, role: str) -> ScoredBatch:
        """Score transactions by id column-wise with one version: one batch read (`BatchLookup.columns`, or the
        source's own `columns`), one model matrix, one prediction, one explanation and one reasons pass for the whole
        batch, kept as columns (`ScoredBatch`): no object per item until the answer is written."""
        plan = model.plan
        numeric = tuple(dict.fromkeys([*plan.transaction_fields, *(("amount", "event_time_ms") if plan.request_time
                                                                     else ())]))  # fmt: skip
        started = time.perf_counter()
        if self.batch_lookup is not None:
            columns = await self.batch_lookup.columns(ids, plan, numeric)
        else:
            columns = await self.source.columns(ids, plan, numeric)  # type: ignore[attr-defined]
        self.metrics.stage("transaction_lookup", time.perf_counter() - started)

        started = time.perf_counter()
        rows = np.flatnonzero(columns.found)
        matrix, uncertain, freshness = build_matrix(plan, columns, rows, time.time())
        if len(rows):
            scores, contributions = _predict_and_explain(model, matrix, bool(self.top_reasons))
        else:
            scores, contributions = np.empty(0), None
        self.metrics.stage("predict", time.perf_counter() - started)

        reasons = None
        if contributions is not None:
            width = len(plan.features)
            top = np.argsort(-contributions[:, :width], axis=1, kind="stable")[:, : self.top_reasons]
            at = np.arange(len(top))[:, None]  # each row's own picks (take_along_axis builds this in Python per call)
            reasons = (self._feature_names(plan)[top], matrix[at, top], contributions[at, top])
        listed = scores.tolist()
        verdicts = model.manifest.thresholds.labels(scores)
        for i in [i for i, doubt in enumerate(uncertain) if doubt]:
            verdicts[i] = UNCERTAIN
        counts = collections.Counter(verdicts)
        for verdict, count in counts.items():
            self.metrics.labels.labels(model.name, str(model.version), verdict).inc(count)
        return ScoredBatch(ids, model, role, rows.tolist(), listed, verdicts, freshness, uncertain, matrix, reasons)

    def _feature_names(self, plan: FeaturePlan) -> np.ndarray:
        """The plan's feature names as a numpy object array (reasons pick them by index for a whole batch)."""
        cached = self._names.get(id(plan))
        if cached is None or cached[0] is not plan:
            if len(self._names) > 32:  # plans of versions no longer served
                self._names.clear()
            cached = self._names[id(plan)] = (plan, np.array(plan.features, dtype=object))
        return cached[1]

    def _shadow(
        self, records: Sequence[TransactionRecord], fetched: Sequence[dict[str, ViewValues]], served: np.ndarray
    ) -> list[Score] | None:
        candidate = self.models.candidate()
        if candidate is None:
            return None
        try:
            matrix, uncertain, freshness = build_rows(candidate.plan, records, fetched, time.time())
            shadow = candidate.predict(matrix)
        except Exception as exc:  # a shadow model must never break a served request
            log.warning("shadow scoring failed", extra={"error": str(exc)})
            return None
        label = candidate.manifest.thresholds.label
        labels = [UNCERTAIN if u else label(float(s)) for u, s in zip(uncertain, shadow, strict=True)]
        scored = [
            Score(r.transaction_id, float(s), lab, candidate, [], f, u, matrix[i], "shadow")
            for i, (r, s, lab, f, u) in enumerate(zip(records, shadow, labels, freshness, uncertain, strict=True))
        ]
        for record, ours, theirs in zip(records, served, shadow, strict=True):
            self.metrics.shadow(candidate.version, float(abs(theirs - ours)))
            log.info(
                "shadow score",
                extra={"transaction_id": record.transaction_id, "served": float(ours), "candidate": float(theirs),
                       "candidate_version": candidate.version},
            )  # fmt: skip
        return scored


def record_from_event(
    event: dict[str, Any], fields: Sequence[str] = (), extra: Sequence[tuple[str, str]] = ()
) -> TransactionRecord:
    """An inline transaction event, checked with the pipelines' own rules, as a record to score.

    `fields`: the transaction view's fields (the plan's `record_fields`); `extra`: the declared event fields beyond
    SPEC's (name, type), checked by type like the pipelines check them. Undeclared fields are ignored."""
    from core.errors import InvalidInput
    from pipelines.events import with_extra_fields
    from pipelines.validation import check

    kind = with_extra_fields(dict(extra))
    checked = check(kind, {name: [event.get(name)] for name in kind.schema.names}, np.array([1]))
    if checked.rejected.num_rows:
        problem = checked.rejected.to_pylist()[0]
        raise InvalidInput(
            f"transaction.{problem['field']}: {problem['reason']} (got {problem['value']})",
            {"field": f"transaction.{problem['field']}", "value": problem["value"]},
        )
    row = checked.valid.to_pylist()[0]
    moment = row.pop("event_timestamp")
    transaction_id = str(row.pop("transaction_id"))
    row["event_time_ms"] = int(moment.timestamp() * 1000)
    for name in fields:
        row.setdefault(name, None)
    return TransactionRecord(transaction_id, row)


Request = tuple[str | None, dict[str, Any] | None]  # (transaction_id, inline event): exactly one is set


async def score_requests(
    service: ScoringService, requests: Sequence[Request], model: LoadedModel | None = None
) -> list[Score | FraudserveError]:
    """Score many requests with one transaction lookup, one feature fetch and one model call; errors per item."""
    # Not the columnar path of score:batch even for ids only: at the dynamic batcher's sizes (1 to 64) it costs more
    # than this one (1.7x at one id, about the same at eight: bench/hotpath.py, its two score_requests rows).
    plan = (model or service.models.production()).plan  # no model: say so (503) before any lookup
    return await _score_records(service, plan, requests, lambda records: service.score(records, model))


def _columnar(service: ScoringService, model: LoadedModel, requests: Sequence[Request]) -> bool:
    """Whether `requests` can take the columnar path with `model`: ids only, a source that reads column-wise, no
    generic on-demand view and no shadow scoring (those read records)."""
    return (
        getattr(service.source, "columnar", False)
        and not model.plan.on_demand
        and not service.shadow
        and all(event is None and tid is not None for tid, event in requests)
    )


async def _score_records(
    service: ScoringService,
    plan: FeaturePlan,
    requests: Sequence[Request],
    score: Callable[[list[TransactionRecord]], Awaitable[list[Score]]],
) -> list[Score | FraudserveError]:
    """The requests as records (ids looked up with one call, inline events checked), scored by `score` in one call;
    an unknown id or an invalid event is that item's own error."""
    outcomes: list[Score | FraudserveError | TransactionRecord | None] = [None] * len(requests)
    ids = [(i, tid) for i, (tid, event) in enumerate(requests) if event is None and tid is not None]
    if ids:
        found = await service.lookup([tid for _, tid in ids], plan)
        for (i, tid), record in zip(ids, found, strict=True):
            outcomes[i] = record if record is not None else TransactionNotFound(tid)
    for i, (_, event) in enumerate(requests):
        if event is not None:
            try:
                outcomes[i] = record_from_event(event, plan.record_fields, plan.extra_fields)
            except FraudserveError as exc:
                outcomes[i] = exc
    ready = [(i, o) for i, o in enumerate(outcomes) if isinstance(o, TransactionRecord)]
    if ready:
        scores = await score([o for _, o in ready])
        for (i, _), scored in zip(ready, scores, strict=True):
            outcomes[i] = scored
    return [o for o in outcomes if isinstance(o, Score | FraudserveError)]


async def score_batch(service: ScoringService, requests: Sequence[Request]) -> list[Score | FraudserveError]:
    """`score_batch_columns`, each item as its `Score` or its error, in request order."""
    scored = await score_batch_columns(service, requests)
    return scored.outcomes() if isinstance(scored, ScoredBatch) else scored


async def score_batch_columns(
    service: ScoringService, requests: Sequence[Request]
) -> ScoredBatch | list[Score | FraudserveError]:
    """A `score:batch` request: every item scored by one version, chosen once (production, or candidate for the
    canary share), so that a promotion during the batch never splits it between two versions.

    Ids only, on a source that reads column-wise, with no generic on-demand view and no shadow scoring: the columnar
    path (`ScoringService.columns`), answered as a `ScoredBatch`. Otherwise (inline transactions, Feast's SDK, a Redis
    Cluster, on-demand views, shadow) `score_requests`' path, pinned to the same version, one item each."""
    model, role = service.choose()
    if _columnar(service, model, requests):
        return await service.columns([tid for tid, _ in requests if tid is not None], model, role)
    return await _score_records(
        service, model.plan, requests, lambda records: service._score(records, model, serving_default=True, role=role)
    )
