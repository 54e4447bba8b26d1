"""Request and response bodies of the HTTP API (they make the OpenAPI schema)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from pipelines.events import (
    COUNTRY_RE,
    CURRENCY_RE,
    ID_MAX_LEN,
    MAX_EPOCH_MS,
    MCC_RE,
    MIN_EPOCH_MS,
    RFC3339_RE,
    TRANSACTION_ID_MAX_LEN,
)

# Path parameters. A model name starts with a letter or digit, so it can never be "." or ".." (the registry keeps a
# model under a folder of its name); versions are positive and fit every integer type on the way.
MODEL_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
ModelName = Annotated[str, Path(min_length=1, max_length=64, pattern=MODEL_NAME_RE, examples=["fraud"])]
ModelVersion = Annotated[int, Path(ge=1, le=2**31 - 1, examples=[1])]
MAX_AMOUNT = 1e12  # far above any real payment; larger values are unit mistakes
MAX_TENSOR_VALUES = 1_000_000  # an infer tensor's values (rows x features)

TransactionId = Field(min_length=1, max_length=TRANSACTION_ID_MAX_LEN, examples=["tx_0039_0001234"])


def _event_time_kind(value: object) -> str:
    """Which form an event time is in, so that a rejection names only that form's rule (not both forms')."""
    return "epoch_ms" if isinstance(value, int | float) and not isinstance(value, bool) else "rfc3339"


EventTime = Annotated[
    Annotated[Annotated[str, Field(max_length=40, pattern=RFC3339_RE)], Tag("rfc3339")]
    | Annotated[Annotated[int, Field(ge=MIN_EPOCH_MS, le=MAX_EPOCH_MS)], Tag("epoch_ms")],
    Discriminator(_event_time_kind),
]


class TransactionEvent(BaseModel):
    """A transaction event as SPEC defines it (the same rules as the offline pipeline and the stream).

    Fields beyond SPEC's are accepted: those the Feast repo declares (typed fields of `transaction_features`) are
    checked by type and used, like the pipelines use them; undeclared ones are ignored."""

    model_config = ConfigDict(extra="allow")

    transaction_id: str = TransactionId
    card_id: str = Field(min_length=1, max_length=ID_MAX_LEN)
    merchant_id: str = Field(min_length=1, max_length=ID_MAX_LEN)
    device_id: str | None = Field(default=None, min_length=1, max_length=ID_MAX_LEN)
    ip_address: str | None = Field(default=None, min_length=1, max_length=ID_MAX_LEN)
    # strict: a JSON number only (true is not 1, "12.5" is not a number), as the pipelines' event rules say.
    amount: float = Field(ge=0, le=MAX_AMOUNT, allow_inf_nan=False, strict=True)
    currency: str = Field(pattern=CURRENCY_RE)
    merchant_category: str = Field(pattern=MCC_RE)
    country: str = Field(pattern=COUNTRY_RE)
    event_timestamp: EventTime = Field(
        description="RFC 3339 with a zone, or epoch milliseconds", examples=["2026-11-25T12:00:00Z"]
    )


class ScoreRequest(BaseModel):
    """Score an ingested transaction by id, or a transaction not yet ingested by its whole event."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"transaction_id": "tx_0039_0001234"}]})

    transaction_id: str | None = Field(default=None, min_length=1, max_length=TRANSACTION_ID_MAX_LEN)
    transaction: TransactionEvent | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ScoreRequest:
        if (self.transaction_id is None) == (self.transaction is None):
            raise ValueError('send exactly one of "transaction_id" or "transaction"')
        return self


class ModelRef(BaseModel):
    name: str
    version: int


class ReasonOut(BaseModel):
    feature: str
    value: float | None
    contribution: float = Field(description="Contribution to the score's log-odds")


class ScoreResponse(BaseModel):
    transaction_id: str
    score: float = Field(ge=0, le=1)
    label: Literal["not_fraud", "suspicious", "highly_suspicious", "uncertain"]
    model: ModelRef
    reasons: list[ReasonOut]
    feature_freshness_seconds: float | None
    uncertain_reasons: list[str] = Field(default_factory=list)


class ErrorBody(BaseModel):
    code: str
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class ErrorResponse(BaseModel):
    error: ErrorBody


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[ScoreRequest] = Field(
        min_length=1,
        max_length=10_000,
        description="At most FRAUDSERVE_MAX_BATCH items (256 by default; more: 422 invalid_request naming `items`)",
    )


class BatchItem(BaseModel):
    transaction_id: str | None
    result: ScoreResponse | None = None
    error: ErrorBody | None = None


class BatchResponse(BaseModel):
    results: list[BatchItem]


class PredictRequest(BaseModel):
    """Entity rows for the generic per-model API: each row is a transaction id or a whole transaction event."""

    model_config = ConfigDict(extra="forbid")

    rows: list[ScoreRequest] = Field(
        min_length=1,
        max_length=10_000,
        description="At most FRAUDSERVE_MAX_BATCH rows (256 by default; more: 422 invalid_request naming `rows`)",
    )


class PredictResponse(BaseModel):
    model: ModelRef
    feature_service: str
    scores: list[float | None]
    errors: list[ErrorBody | None]


# ------------------------------------------------------------------------ Open Inference Protocol (KServe v2) REST
class InferTensor(BaseModel):
    name: str = Field(min_length=1, max_length=128)
    shape: list[Annotated[int, Field(ge=0, le=MAX_TENSOR_VALUES)]] = Field(min_length=1, max_length=2)
    datatype: Literal["FP32", "FP64"]
    data: list[Any] = Field(max_length=MAX_TENSOR_VALUES)
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    id: str | None = Field(default=None, max_length=128)
    parameters: dict[str, Any] | None = None
    inputs: list[InferTensor] = Field(min_length=1, max_length=1)
    outputs: list[dict[str, Any]] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[InferTensor]


class ModelReady(BaseModel):
    name: str
    ready: bool


class ServerReady(BaseModel):
    ready: bool
    online_store: bool
    model_loaded: bool
    model_error: str | None = None


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Any] = Field(default_factory=dict)


ERRORS_OIP: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "unauthorized"},
    403: {"model": ErrorResponse, "description": "forbidden"},
    404: {"model": ErrorResponse, "description": "model_not_found"},
    413: {"model": ErrorResponse, "description": "payload_too_large"},
    422: {"model": ErrorResponse, "description": "invalid_request"},
    503: {"model": ErrorResponse, "description": "model_not_ready"},
}
