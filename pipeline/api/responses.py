"""The API's response bodies: rendered straight to JSON bytes, described by the models for OpenAPI.

    json_response(202, accepted_body(outcome))
    error_response(rejection, headers={"Retry-After": "5"})

The schemathesis test checks every response against these models, so the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import orjson
from pydantic import BaseModel, Field
from starlette.responses import Response

from pipeline.api.intake import Rejection
from pipeline.api.service import Accepted, Outcome
from pipeline.contracts import FieldError

# --- models (documentation and tests) ----------------------------------------------------------


class AcceptedMessage(BaseModel):
    """The message is in Kafka and will reach a terminal outcome on `send.results`."""

    request_id: str = Field(description="identifies the message on every topic and in every log line")
    accepted_at: str = Field(description="RFC 3339 time the API first accepted it")
    phone_number_id: str = Field(description="the business number it will be sent from")
    replayed: bool = Field(description="true when this is the stored answer to an earlier request with the same key")


class ErrorDetail(BaseModel):
    status: int
    code: str = Field(description="stable machine-readable reason, e.g. invalid_request, unauthorized")
    message: str
    fields: list[FieldError] = Field(
        default_factory=list, description="one entry per offending field: its path, the rule and the limit"
    )


class ErrorBody(BaseModel):
    error: ErrorDetail


class BatchItemAccepted(AcceptedMessage):
    index: int
    status: Literal[202]


class BatchItemRejected(BaseModel):
    index: int
    status: int = Field(description="the status this item would have had on its own: 403, 409, 422, 503 or 504")
    error: ErrorDetail


class BatchResult(BaseModel):
    accepted: int
    rejected: int
    results: list[BatchItemAccepted | BatchItemRejected]


# --- rendering ---------------------------------------------------------------------------------


def accepted_body(outcome: Accepted) -> dict[str, Any]:
    return {
        "request_id": outcome.request_id,
        "accepted_at": outcome.accepted_at,
        "phone_number_id": outcome.phone_number_id,
        "replayed": outcome.replayed,
    }


def error_detail(rejection: Rejection) -> dict[str, Any]:
    return {
        "status": rejection.status,
        "code": rejection.code,
        "message": rejection.message,
        "fields": [f.model_dump() for f in rejection.fields],
    }


def batch_body(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    for index, outcome in enumerate(outcomes):
        if isinstance(outcome, Accepted):
            results.append({"index": index, "status": 202, **accepted_body(outcome)})
        else:
            results.append({"index": index, "status": outcome.status, "error": error_detail(outcome)})
    accepted = sum(isinstance(o, Accepted) for o in outcomes)
    return {"accepted": accepted, "rejected": len(outcomes) - accepted, "results": results}


def json_response(status: int, body: Any, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body, default=str), status_code=status, headers=headers,
                    media_type="application/json")


def error_response(rejection: Rejection, headers: Mapping[str, str] | None = None) -> Response:
    return json_response(rejection.status, {"error": error_detail(rejection)}, headers)
