"""The OpenAPI document (served at /openapi.json, rendered at /docs).

The routes parse their own bodies (see app.py), so the request bodies, the Idempotency-Key header and
the two ways to authenticate are added here from the contracts' own JSON Schemas.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from pipeline.api.responses import AcceptedMessage, BatchResult, ErrorBody
from pipeline.config import Settings
from pipeline.contracts import SendRequest

_REF = "#/components/schemas/{model}"

_IDEMPOTENCY_HEADER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Repeat a request with the same key (1-200 printable ASCII characters) within the "
    "idempotency window to get the original answer instead of a second message. On the batch route it "
    "covers item i as `<key>:<i>`, unless the item has its own `idempotency_key`.",
    "schema": {"type": "string", "pattern": r"^[\x21-\x7e]{1,200}$"},
}


_MEANING = {
    400: "The body is not JSON.",
    401: "Missing or unknown API key.",
    403: "The API key may not send from this phone_number_id.",
    409: "A request with the same Idempotency-Key is still in progress (retry after `Retry-After`), or the "
    "caller-chosen request_id already names a different message (`request_id_in_use`: choose another).",
    413: "The body is larger than the route's limit.",
    422: "Every offending field with the rule it breaks and the limit, in one response.",
    503: "Kafka was unreachable or did not take the message in time: it was not written, and never will "
    "be. Retry after `Retry-After` seconds.",
    504: "Kafka received the message but did not confirm it in time: it may or may not be accepted. Retry "
    "with the same Idempotency-Key after `Retry-After` seconds to learn which.",
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorBody, "description": _MEANING[status]} for status in statuses}


def single_route(settings: Settings) -> dict[str, Any]:
    return {
        "summary": "Send one message",
        "description": (
            "202 means the request is durably in Kafka (acknowledged by all in-sync replicas) and will reach "
            "exactly one terminal outcome on `send.results`. `phone_number_id` defaults to the API's "
            "WHATSAPP_PHONE_NUMBER_ID; the recipient is a phone number in `to` (normalised to E.164) or a "
            "BSUID in `recipient_user_id`, exactly one; control characters are removed "
            "from text; `accepted_at` is set by the API."
        ),
        "responses": {202: {"model": AcceptedMessage, "description": "Accepted."}, **_errors(
            400, 401, 403, 409, 413, 422, 503, 504)},
        "openapi_extra": {
            "parameters": [_IDEMPOTENCY_HEADER],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": _REF.format(model="SendRequest")}}},
            },
        },
    }


def batch_route(settings: Settings) -> dict[str, Any]:
    limit = settings.api.max_batch_size
    return {
        "summary": f"Send up to {limit} messages",
        "description": (
            "Each item is judged on its own: valid items are accepted even when others are rejected, and the "
            "answer lists one result per item, in order. The status is 202 when any item was accepted, "
            "otherwise the items' common status (422 when they differ)."
        ),
        "responses": {
            202: {"model": BatchResult, "description": "At least one item accepted."},
            **_errors(400, 401, 413),
            # Refused as a whole (an ErrorBody), or every item refused with the same status (a BatchResult).
            **{status: {"description": f"{meaning} Every item refused: per-item results.",
                        "content": {"application/json": {"schema": {"anyOf": [
                            {"$ref": _REF.format(model="ErrorBody")}, {"$ref": _REF.format(model="BatchResult")}]}}}}
               for status, meaning in _MEANING.items() if status in (403, 409, 422, 503, 504)},
        },
        "openapi_extra": {
            "parameters": [_IDEMPOTENCY_HEADER],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": _REF.format(model="BatchRequest")}}},
            },
        },
    }


def request_schemas(settings: Settings) -> dict[str, Any]:
    """`SendRequest` (with every body type) and `BatchRequest`, as OpenAPI component schemas."""
    schema = SendRequest.model_json_schema(ref_template=_REF)
    components: dict[str, Any] = schema.pop("$defs", {})
    components["SendRequest"] = schema
    components["BatchRequest"] = {
        "type": "object",
        "title": "BatchRequest",
        "additionalProperties": False,
        "required": ["messages"],
        "properties": {
            "messages": {
                "type": "array",
                "items": {"$ref": _REF.format(model="SendRequest")},
                "minItems": 1,
                "maxItems": settings.api.max_batch_size,
            }
        },
    }
    return components


def install(app: FastAPI, settings: Settings) -> None:
    def build() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title, version=app.version, summary=app.summary, description=_DESCRIPTION,
                routes=app.routes,
            )
            components = document.setdefault("components", {})
            components.setdefault("schemas", {}).update(request_schemas(settings))
            components["securitySchemes"] = {
                "bearerAuth": {"type": "http", "scheme": "bearer", "description": "`Authorization: Bearer <key>`"},
                "apiKeyAuth": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            }
            document["security"] = [{"bearerAuth": []}, {"apiKeyAuth": []}]
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = build  # type: ignore[method-assign]


_DESCRIPTION = """\
Businesses hand WhatsApp messages to the delivery pipeline here. Other services may instead publish the
same `SendRequest` JSON straight to the `send.requests` Kafka topic (AsyncAPI document at `/asyncapi`).

Errors share one shape: `{"error": {"status", "code", "message", "fields": [{"field", "rule", "message",
"limit"}]}}`. Metrics at `/metrics`, health at `/healthz` and `/readyz`.
"""
