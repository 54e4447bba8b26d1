"""The floor for the API benchmark: a FastAPI endpoint on the same uvicorn set-up that returns a constant score.

It parses the same JSON body with the same pydantic request model and answers a response of the same shape, but
reads nothing and runs no model: what is left is HTTP, routing and (de)serialization.
"""

from __future__ import annotations

from fastapi import FastAPI

from inference_api.schemas import ModelRef, ReasonOut, ScoreRequest, ScoreResponse

app = FastAPI(title="constant")
_ANSWER = ScoreResponse(
    transaction_id="constant",
    score=0.01,
    label="not_fraud",
    model=ModelRef(name="fraud", version=1),
    reasons=[ReasonOut(feature="amount", value=1.0, contribution=0.1)] * 3,
    feature_freshness_seconds=1.0,
    uncertain_reasons=[],
)


@app.post("/v1/fraud/score", response_model=ScoreResponse)
async def score(body: ScoreRequest) -> ScoreResponse:
    return _ANSWER.model_copy(update={"transaction_id": body.transaction_id or "inline"})
