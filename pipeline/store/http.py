"""The read API: the routes of docs/store.md, plus /docs, /openapi.json, /metrics, /healthz, /readyz.

    app = create_app(reader, keys, telemetry, not_ready)   # ASGI (FastAPI); not_ready() lists why not

Callers authenticate with the producer API's keys (`pipeline.auth`, the same code) and see only
their numbers: another number's message, contact or analytics is a 404, as if it did not exist. A
database that does not answer is a 503 with `Retry-After`; it never touches the producer API, which
runs in another process.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import orjson
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pipeline.auth import ApiKeys
from pipeline.config import ApiKey
from pipeline.contracts import FieldError
from pipeline.contracts.messages import utcnow
from pipeline.contracts.read_api import ROUTES
from pipeline.observability import get_logger
from pipeline.observability.http import metrics_endpoint
from pipeline.store import views
from pipeline.store.analytics import summarise
from pipeline.store.backend import Backend, BackendUnavailable, Cursor, Scope, Search
from pipeline.store.crypto import Sealer
from pipeline.store.queries import QueryParams, normalise_wa_id
from pipeline.store.telemetry import StoreTelemetry

log = get_logger(__name__)

DEFAULT_WINDOW = timedelta(days=7)
RETRY_AFTER_SECONDS = 5

Handler = Callable[[Request, Scope], Awaitable[Response]]


class _Refusal(Exception):
    def __init__(self, status: int, code: str, message: str, fields: list[FieldError] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.fields = status, code, message, fields or []


def error_body(status: int, code: str, message: str, fields: list[FieldError] | None = None) -> Response:
    """The producer API's one error shape."""
    body = {"error": {"status": status, "code": code, "message": message,
                      "fields": [f.model_dump(exclude_none=True) for f in fields or []]}}
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status == 503 else None
    if status == 401:
        headers = {"WWW-Authenticate": 'Bearer realm="whatsapp-delivery"'}
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type="application/json")


def _ok(body: Any) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")


_NOT_FOUND = "not_found"


class Reader:
    """The read side: a backend, the key to open sealed texts, the hooks; one method per route."""

    def __init__(self, backend: Backend, sealer: Sealer) -> None:
        self.backend = backend
        self.sealer = sealer

    async def message(self, request: Request, scope: Scope) -> Response:
        found = await self.backend.message(request.path_params["request_id"], scope)
        if found is None:
            raise _Refusal(404, _NOT_FOUND, "no such message")
        view, timeline = found
        return _ok(views.message_body(self.sealer.open_view(view), timeline))

    async def conversation(self, request: Request, scope: Scope) -> Response:
        wa_id = _contact(request)
        q = QueryParams(request.query_params)
        limit, before = q.limit(), q.cursor("before")
        _check(q)
        if not await self.backend.has_contact(wa_id, scope):
            raise _Refusal(404, _NOT_FOUND, "no such contact")
        items = await self.backend.conversation(wa_id, scope, limit, before)
        last = items[-1] if len(items) == limit else None
        return _ok({
            "wa_id": wa_id,
            "messages": [views.item_body(self.sealer.open_item(i)) for i in items],
            "next_cursor": views.encode_cursor(Cursor(last.at, last.id)) if last else None,
        })

    async def search(self, request: Request, scope: Scope) -> Response:
        q = QueryParams(request.query_params)
        search = Search(words=q.words(), wa_id=q.contact("to"), status_rank=q.status_rank(), since=q.time("since"),
                        until=q.time("until"), limit=q.limit(), cursor=q.cursor("cursor"))
        number = q.phone_number_id()
        q.window(search.since, search.until)
        if search.words and self.sealer.enabled:
            q.errors.append(FieldError(field="q", rule="encrypted", message=(
                "text search is unavailable: message text is encrypted at rest (STORE_ENCRYPTION_KEY)")))
        _check(q)
        scope = _narrow(scope, number)
        found = await self.backend.search(search, scope)
        last = found[-1] if len(found) == search.limit else None
        return _ok({
            "messages": [views.summary_body(self.sealer.open_view(v)) for v in found],
            "next_cursor": views.encode_cursor(Cursor(last.created_at, last.request_id)) if last else None,
        })

    async def analytics(self, request: Request, scope: Scope) -> Response:
        return await self._analytics(request, scope, None)

    async def contact_analytics(self, request: Request, scope: Scope) -> Response:
        return await self._analytics(request, scope, _contact(request))

    async def _analytics(self, request: Request, scope: Scope, wa_id: str | None) -> Response:
        q = QueryParams(request.query_params)
        number, since, until = q.phone_number_id(), q.time("since"), q.time("until")
        until = until or utcnow()
        since = since or until - DEFAULT_WINDOW
        q.window(since, until)
        _check(q)
        scope = _narrow(scope, number)
        if wa_id is not None and not await self.backend.has_contact(wa_id, scope):
            raise _Refusal(404, _NOT_FOUND, "no such contact")
        facts = await self.backend.analytics_facts(scope, since, until, wa_id)
        return _ok({"phone_number_id": number, "wa_id": wa_id, "since": views.rfc3339(since),
                    "until": views.rfc3339(until), **summarise(facts)})

    async def erase(self, request: Request, scope: Scope) -> Response:
        wa_id = _contact(request)
        erased = await self.backend.erase(wa_id, scope)
        # Audited without the number: the counts and the scope say what happened, not to whom.
        log.info("contact_erased", scope="all" if scope.numbers is None else scope.sorted_numbers,
                 outbound=erased.outbound, inbound=erased.inbound, statuses=erased.statuses)
        return _ok({"wa_id_erased": True, "deleted": {
            "outbound": erased.outbound, "inbound": erased.inbound, "statuses": erased.statuses}})


def _contact(request: Request) -> str:
    wa_id = normalise_wa_id(request.path_params["wa_id"])
    if wa_id is None:
        raise _Refusal(422, "invalid_request", "the contact is not a phone number", [FieldError(
            field="wa_id", rule="phone_number", message="must be a phone number of 8 to 15 digits")])
    return wa_id


def _check(q: QueryParams) -> None:
    if q.errors:
        raise _Refusal(422, "invalid_request", f"{len(q.errors)} problem(s) with the query; see `fields`", q.errors)


def _narrow(scope: Scope, number: str | None) -> Scope:
    if number is not None and not scope.allows(number):
        raise _Refusal(404, _NOT_FOUND, "no such business number")
    return scope.narrowed(number)


ReadyCheck = Callable[[], Awaitable[list[str]]]


def create_app(reader: Reader, keys: ApiKeys, telemetry: StoreTelemetry, not_ready: ReadyCheck) -> FastAPI:
    """`not_ready()` lists why the store is not ready (empty: ready); /readyz shows the reasons."""
    app = FastAPI(
        title="WhatsApp delivery pipeline — message store",
        version="1.0.0",
        summary="What happened to each message, conversations, search, analytics and erasure.",
        redoc_url=None,
    )
    handlers: dict[tuple[str, str], Handler] = {
        ("GET", "/v1/messages/{request_id}"): reader.message,
        ("GET", "/v1/contacts/{wa_id}/messages"): reader.conversation,
        ("GET", "/v1/messages"): reader.search,
        ("GET", "/v1/analytics"): reader.analytics,
        ("GET", "/v1/contacts/{wa_id}/analytics"): reader.contact_analytics,
        ("DELETE", "/v1/contacts/{wa_id}"): reader.erase,
    }
    for method, path, spec in ROUTES:
        app.add_api_route(path, _endpoint(path, handlers[(method, path)], keys, telemetry), methods=[method], **spec)

    async def readyz(_: Request) -> Response:
        reasons = await not_ready()
        return JSONResponse({"ready": not reasons, "reasons": reasons}, status_code=503 if reasons else 200)

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    app.router.routes.extend(
        [Route("/metrics", metrics_endpoint), Route("/healthz", healthz), Route("/readyz", readyz)])
    return app


def _endpoint(route: str, handler: Handler, keys: ApiKeys, telemetry: StoreTelemetry) -> Callable[..., Any]:
    async def endpoint(request: Request) -> Response:
        with telemetry.reading(route):
            key = keys.authenticate(request.headers)
            if key is None:
                return error_body(401, "unauthorized", "missing or unknown API key: send "
                                  "`Authorization: Bearer <key>` or `X-API-Key: <key>`")
            try:
                return await handler(request, _scope(key))
            except _Refusal as refusal:
                return error_body(refusal.status, refusal.code, refusal.message, refusal.fields)
            except BackendUnavailable as exc:
                telemetry.db_error("read", exc)
                return error_body(503, "store_unavailable", "the message store's database is unavailable; retry later")

    return endpoint


def _scope(key: ApiKey) -> Scope:
    return Scope.of(key)
