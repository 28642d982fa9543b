"""The HTTP surface: `POST /v1/messages`, `POST /v1/messages:batch`, docs and ops routes.

    app = create_app(service, telemetry)     # ASGI; its lifespan starts and stops `service`

The two send routes are plain Starlette routes in front of a FastAPI app that serves the OpenAPI
document (/docs, /openapi.json, where the send routes are declared too), the AsyncAPI document and
nothing else. FastAPI's request machinery and its native tracing cost more CPU per request than
validating and publishing the message (docs/api.md has the measurement), and the API is CPU-bound.
Bodies are read and parsed here, not by model binding, because the API answers 401 before reading a
body, 413 before parsing one, and 422 in its own error shape after sanitising it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import FastAPI
from opentelemetry import trace
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route

from pipeline.api import asyncapi, openapi, reads
from pipeline.api.intake import Rejection, invalid, may_hold_controls, message_type_label
from pipeline.api.responses import accepted_body, batch_body, error_response, json_response
from pipeline.api.service import Accepted, ApiService, Outcome
from pipeline.config import ApiKey
from pipeline.contracts import FieldError
from pipeline.contracts.read_api import ROUTES as READ_ROUTES
from pipeline.observability import Telemetry, get_logger, ops_routes
from pipeline.observability import metrics as m
from pipeline.observability.context import context_from_headers
from pipeline.observability.metrics import exemplar

log = get_logger(__name__)

SINGLE = "/v1/messages"
BATCH = "/v1/messages:batch"
# Printable ASCII without spaces; short enough that `<key>:<item index>` still fits the contract's 255.
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")

Handler = Callable[[ApiService, Request], Awaitable[Response]]


class _TooLarge(Exception):
    pass


def create_app(service: ApiService, telemetry: Telemetry) -> Starlette:
    tracer = telemetry.tracer_provider.get_tracer("pipeline.api")

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        # Connect in the background: the server answers (503, /readyz false) while Kafka is away.
        starting = asyncio.create_task(service.start(), name="api-start")
        try:
            yield
        finally:
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            await service.stop()
            await reads.close_forwarder()

    def endpoint(route: str, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def handle(request: Request) -> Response:
            return await _served(tracer, route, request, lambda: handler(service, request))

        return handle

    single, batch = endpoint(SINGLE, _single), endpoint(BATCH, _batch)
    return Starlette(
        routes=[
            Route(SINGLE, single, methods=["POST"]),
            Route(BATCH, batch, methods=["POST"]),
            *reads.forward_routes(service.settings.api.store_url),
            *ops_routes(service.ready),
            Mount("", app=_docs_app(service, single, batch)),
        ],
        lifespan=lifespan,
    )


def _docs_app(service: ApiService, single: Any, batch: Any) -> FastAPI:
    """/docs, /openapi.json and /asyncapi; the send routes are declared here for the OpenAPI document."""
    settings = service.settings
    app = FastAPI(
        title="WhatsApp delivery pipeline — producer API",
        version="1.0.0",
        summary="Hand messages to the pipeline: a 202 means the request is durably in Kafka.",
        redoc_url=None,
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    app.post(SINGLE, status_code=202, **openapi.single_route(settings))(single)
    app.post(BATCH, status_code=202, **openapi.batch_route(settings))(batch)
    for method, path, spec in READ_ROUTES:  # the store's read API, forwarded by `reads`
        app.add_api_route(path, reads.forwarder(settings.api.store_url), methods=[method], **spec)

    @app.get("/asyncapi", include_in_schema=False)
    async def asyncapi_html() -> HTMLResponse:
        return HTMLResponse(asyncapi.html(settings.kafka))

    @app.get("/asyncapi.json", include_in_schema=False)
    async def asyncapi_json() -> Response:
        return json_response(200, asyncapi.document(settings.kafka))

    @app.get("/asyncapi.yaml", include_in_schema=False)
    async def asyncapi_yaml() -> Response:
        return Response(asyncapi.yaml_text(settings.kafka), media_type="application/yaml")

    openapi.install(app, settings)
    return app


async def _served(
    tracer: trace.Tracer, route: str, request: Request, handle: Callable[[], Awaitable[Response]]
) -> Response:
    """The server span (child of the caller's `traceparent`, parent of the produce span) and the timing.

    Written here rather than with OpenTelemetry's ASGI middleware (opentelemetry-instrumentation-asgi,
    since removed from the project): that cost 90-100 µs more CPU per request, about a quarter of the whole, even with
    spans unrecorded (docs/api.md), for attributes this API does not need.
    """
    started = time.perf_counter()
    with tracer.start_as_current_span(
        f"POST {route}",
        context=context_from_headers(request.headers) if "traceparent" in request.headers else None,
        kind=trace.SpanKind.SERVER,
        attributes={"http.request.method": "POST", "http.route": route, "url.path": route, "url.scheme": "http"},
    ) as span:
        try:
            response = await handle()
        finally:
            m.API_REQUEST_DURATION.labels(route=route).observe(time.perf_counter() - started, exemplar=exemplar())
        span.set_attribute("http.response.status_code", response.status_code)
        if response.status_code >= 500:
            span.set_status(trace.StatusCode.ERROR)
        return response


# --- the two routes ------------------------------------------------------------------------------


async def _single(service: ApiService, request: Request) -> Response:
    caller = _authenticate(service, request)
    if isinstance(caller, Response):
        return caller
    idempotency_key = _idempotency_header(request)
    if isinstance(idempotency_key, Rejection):
        return _refuse(idempotency_key)
    body = await _read_json(request, service.settings.api.max_body_bytes)
    if isinstance(body, Rejection):
        return _refuse(body)
    data = body.data
    [outcome] = await service.submit(caller, [data], [idempotency_key], sanitise=body.may_hold_controls)
    if isinstance(outcome, Accepted):
        log.debug("message_accepted", request_id=outcome.request_id, replayed=outcome.replayed)
        headers = {"Idempotent-Replayed": "true"} if outcome.replayed else None
        return json_response(202, accepted_body(outcome), headers)
    _log_rejection(outcome, message_type_label(data))
    return error_response(outcome, _retry_headers(service, [outcome]))


async def _batch(service: ApiService, request: Request) -> Response:
    caller = _authenticate(service, request)
    if isinstance(caller, Response):
        return caller
    batch_key = _idempotency_header(request)
    if isinstance(batch_key, Rejection):
        return _refuse(batch_key)
    body = await _read_json(request, service.settings.api.max_batch_body_bytes)
    if isinstance(body, Rejection):
        return _refuse(body)
    items = _batch_items(body.data, service.settings.api.max_batch_size)
    if isinstance(items, Rejection):
        return _refuse(items)
    # A batch's Idempotency-Key covers each item as `<key>:<index>` unless the item carries its own key.
    keys = [
        None if batch_key is None or (isinstance(item, dict) and item.get("idempotency_key") is not None)
        else f"{batch_key}:{index}"
        for index, item in enumerate(items)
    ]
    outcomes = await service.submit(caller, items, keys, sanitise=body.may_hold_controls)
    result = batch_body(outcomes)
    log.info("batch_received", messages=len(items), accepted=result["accepted"], rejected=result["rejected"])
    return json_response(_batch_status(outcomes), result, _retry_headers(service, outcomes))


# --- pieces --------------------------------------------------------------------------------------


def _authenticate(service: ApiService, request: Request) -> ApiKey | Response:
    """The caller's ApiKey, or the 401 response."""
    key = service.keys.authenticate(request.headers)
    if key is not None:
        return key
    service.count(Rejection(401, "unauthorized", ""), "unknown")
    log.info("request_unauthorized", path=request.url.path, key_presented=_has_credentials(request))
    return error_response(
        Rejection(
            status=401,
            code="unauthorized",
            message="missing or unknown API key: send `Authorization: Bearer <key>` or `X-API-Key: <key>`",
        ),
        {"WWW-Authenticate": 'Bearer realm="whatsapp-delivery"'},
    )


def _has_credentials(request: Request) -> bool:
    return "authorization" in request.headers or "x-api-key" in request.headers


def _idempotency_header(request: Request) -> str | Rejection | None:
    value = request.headers.get("idempotency-key")
    if value is None:
        return None
    if not _IDEMPOTENCY_KEY.match(value):
        return invalid(
            [
                FieldError(
                    field="Idempotency-Key",
                    rule="pattern",
                    message="must be 1 to 200 printable ASCII characters without spaces",
                    limit=200,
                )
            ]
        )
    return value


@dataclass(frozen=True)
class _Body:
    data: Any
    may_hold_controls: bool


async def _read_json(request: Request, limit: int) -> _Body | Rejection:
    """The parsed body, or a Rejection (413 over `limit` bytes, 400 when it is not JSON)."""
    try:
        raw = await _read_limited(request, limit)
    except ClientDisconnect:
        # The caller hung up mid-body: nothing to answer, and no traceback for the operator to chase.
        return Rejection(status=400, code="client_disconnected", message="the client closed the connection "
                         "before sending the whole body")
    except _TooLarge:
        return Rejection(
            status=413,
            code="payload_too_large",
            message=f"the body is larger than this route's limit of {limit} bytes",
            fields=[FieldError(field="(body)", rule="too_large", message="body too large", limit=limit)],
        )
    try:
        return _Body(orjson.loads(raw), may_hold_controls(raw))
    except orjson.JSONDecodeError as exc:
        return Rejection(
            status=400,
            code="invalid_json",
            message="the body is not valid JSON",
            fields=[FieldError(field="(body)", rule="json_invalid", message=str(exc))],
        )


async def _read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    chunks = []
    size = 0
    async for chunk in request.stream():  # also bounds chunked bodies, which declare no length
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _batch_items(data: Any, max_size: int) -> list[Any] | Rejection:
    if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
        return invalid([FieldError(field="messages", rule="list_type",
                                   message='the body must be an object {"messages": [...]}')])
    unknown = sorted(set(data) - {"messages"})
    problems = [FieldError(field=name, rule="extra_forbidden", message="unknown field") for name in unknown]
    items: list[Any] = data["messages"]
    if not items:
        problems.append(FieldError(field="messages", rule="too_short", message="at least 1 message", limit=1))
    if len(items) > max_size:
        problems.append(FieldError(field="messages", rule="too_long", message=f"at most {max_size} messages per batch",
                                   limit=max_size))
    return invalid(problems) if problems else items


def _batch_status(outcomes: list[Outcome]) -> int:
    """202 when any item was accepted; otherwise the items' common status, or 422 when they differ."""
    if any(isinstance(o, Accepted) for o in outcomes):
        return 202
    statuses = {o.status for o in outcomes if isinstance(o, Rejection)}
    return statuses.pop() if len(statuses) == 1 else 422


def _retry_headers(service: ApiService, outcomes: list[Outcome]) -> dict[str, str] | None:
    retry = any(isinstance(o, Rejection) and o.status in (409, 503, 504) for o in outcomes)
    return {"Retry-After": str(service.settings.api.retry_after_seconds)} if retry else None


def _refuse(rejection: Rejection) -> Response:
    ApiService.count(rejection, "unknown")
    _log_rejection(rejection, "unknown")
    return error_response(rejection)


def _log_rejection(rejection: Rejection, message_type: str) -> None:
    # Field paths and rules only: values may be message text or phone numbers.
    fields = [f"{f.field}:{f.rule}" for f in rejection.fields]
    if rejection.status >= 500:
        log.warning("request_unavailable", code=rejection.code)
    else:
        log.info("request_rejected", status=rejection.status, code=rejection.code, fields=fields,
                 message_type=message_type)


__all__ = ["BATCH", "SINGLE", "create_app"]
