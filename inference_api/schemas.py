"""Request and response bodies of the HTTP API (they make the OpenAPI schema)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipelines.events import COUNTRY_RE, CURRENCY_RE, ID_MAX_LEN, MCC_RE, TRANSACTION_ID_MAX_LEN

TransactionId = Field(min_length=1, max_length=TRANSACTION_ID_MAX_LEN, examples=["tx_0039_0001234"])


class TransactionEvent(BaseModel):
    """A transaction event as SPEC defines it (the same rules as the offline pipeline and the stream)."""

    model_config = ConfigDict(extra="forbid")

    transaction_id: str = TransactionId
    card_id: str = Field(min_length=1, max_length=ID_MAX_LEN)
    merchant_id: str = Field(min_length=1, max_length=ID_MAX_LEN)
    device_id: str | None = Field(default=None, min_length=1, max_length=ID_MAX_LEN)
    ip_address: str | None = Field(default=None, min_length=1, max_length=ID_MAX_LEN)
    amount: float = Field(ge=0, allow_inf_nan=False)
    currency: str = Field(pattern=CURRENCY_RE)
    merchant_category: str = Field(pattern=MCC_RE)
    country: str = Field(pattern=COUNTRY_RE)
    event_timestamp: str | int = Field(
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

    items: list[ScoreRequest] = Field(min_length=1, max_length=10_000)


class BatchItem(BaseModel):
    transaction_id: str | None
    result: ScoreResponse | None = None
    error: ErrorBody | None = None


class BatchResponse(BaseModel):
    results: list[BatchItem]


class PredictRequest(BaseModel):
    """Entity rows for the generic per-model API: each row is a transaction id or a whole transaction event."""

    model_config = ConfigDict(extra="forbid")

    rows: list[ScoreRequest] = Field(min_length=1, max_length=10_000)


class PredictResponse(BaseModel):
    model: ModelRef
    feature_service: str
    scores: list[float | None]
    errors: list[ErrorBody | None]


# ------------------------------------------------------------------------ Open Inference Protocol (KServe v2) REST
class InferTensor(BaseModel):
    name: str
    shape: list[int] = Field(min_length=1, max_length=2)
    datatype: Literal["FP32", "FP64"]
    data: list[Any]
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[InferTensor] = Field(min_length=1, max_length=1)
    outputs: list[dict[str, Any]] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[InferTensor]


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
    404: {"model": ErrorResponse, "description": "model_not_found"},
    422: {"model": ErrorResponse, "description": "invalid_request"},
    503: {"model": ErrorResponse, "description": "model_not_ready"},
}
