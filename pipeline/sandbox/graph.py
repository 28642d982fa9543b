"""The Graph API endpoints the pipeline uses, answered the way Meta answers them.

    POST   /{version}/{phone_number_id}/messages   JSON send body -> {"messaging_product", "contacts", "messages"}
                                                   (or {"status": "read", "message_id"} -> {"success": true})
    POST   /{version}/{phone_number_id}/media      multipart file, type, messaging_product -> {"id"}
    GET    /{version}/{object_id}[?fields=a,b]     a business number's details (or an uploaded media item)
    DELETE /{version}/{media_id}                   forget an upload
    GET|POST /{version}/{phone_number_id}/whatsapp_business_profile   the business profile
    GET    /whatsapp_business/attachments/?mid=…   an upload's bytes (the media URL; bearer token required)

Every answer (errors included) waits the configured latency; an outage answers 503, hangs, or drops
the connection instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
from aiohttp import web

from pipeline.sandbox.errors import NOT_EMULATED, GraphError
from pipeline.sandbox.metrics import outcome_of
from pipeline.sandbox.scenarios import OK, Answer, scenario_for
from pipeline.sandbox.state import SandboxState
from pipeline.sandbox.validation import NotEmulated, check_mark_read, check_send_body

log = logging.getLogger(__name__)
STATE: web.AppKey[SandboxState] = web.AppKey("sandbox_state", SandboxState)
MEDIA_PATH = "/whatsapp_business/attachments/"  # the path of Meta's media URLs (lookaside.fbsbx.com)
MEDIA_URL_TTL = 300.0  # Meta's media URLs expire after 5 minutes


def routes() -> list[web.RouteDef]:
    return [
        web.get(MEDIA_PATH, download_media),
        web.get("/{version}/{phone_number_id}/whatsapp_business_profile", get_profile),
        web.post("/{version}/{phone_number_id}/whatsapp_business_profile", update_profile),
        web.post("/{version}/{phone_number_id}/messages", send_message),
        web.post("/{version}/{phone_number_id}/media", upload_media),
        web.get("/{version}/{object_id}", get_object),
        web.delete("/{version}/{object_id}", delete_object),
    ]


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


async def _answer(state: SandboxState, endpoint: str, error: GraphError, delay: float) -> web.Response:
    state.count(endpoint, outcome_of(error.code), error.code)
    if delay > 0:
        state.metrics.delay.observe(delay)
        await asyncio.sleep(delay)
    return _json(error.body(), error.status)


async def _outage(state: SandboxState, request: web.Request, endpoint: str, mode: str) -> web.StreamResponse:
    state.count(endpoint, f"outage_{mode}")
    if mode == "disconnect":
        # A dropped connection, as a load balancer does mid-incident: the client sees no HTTP answer.
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError
    if mode == "timeout":
        await asyncio.sleep(state.settings.hang_seconds)
    return _json(GraphError(2, "Service temporarily unavailable (sandbox outage)").body(), 503)


async def _guard(
    state: SandboxState, request: web.Request, endpoint: str, number: str | None
) -> web.StreamResponse | None:
    """The checks every Graph endpoint shares: outage, token, version and (for numbers) the number's id."""
    mode = state.outage_for(number or "")
    if mode is not None:
        return await _outage(state, request, endpoint, mode)
    authorization = request.headers.get("Authorization")
    query_token = request.query.get("access_token") if authorization is None else None
    if not state.token_ok(authorization, query_token):
        error = GraphError(190, "Invalid OAuth access token - Cannot parse access token")
        return await _answer(state, endpoint, error, state.latency())
    try:
        state.check_version(request.match_info["version"])
        if number is not None:
            state.check_number(number)
    except GraphError as error:
        return await _answer(state, endpoint, error, state.latency())
    return None


async def send_message(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    number = request.match_info["phone_number_id"]
    refused = await _guard(state, request, "messages", number)
    if refused is not None:
        return refused
    raw = await request.read()
    try:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise GraphError(100, "the request body must be JSON") from None
        if isinstance(body, dict) and "status" in body:
            check_mark_read(body)
            state.count("messages", "marked_read")
            state.reads.append({"phone_number_id": number, "message_id": body["message_id"],
                                "typing_indicator": "typing_indicator" in body, "at": time.time()})
            await asyncio.sleep(state.latency())
            return _json({"success": True})
        message = state.resolve_recipient(check_send_body(body))
        # Test recipients are picked by a number's last digits; a BSUID the sandbox never saw is ordinary.
        scenario = scenario_for(message.wa_id) if message.wa_id.isdigit() else OK
        wamid = state.accept(number, message, scenario, asyncio.get_running_loop().time())
    except NotEmulated as missing:
        return await _answer(state, "messages", GraphError(NOT_EMULATED, str(missing)), state.latency())
    except GraphError as error:
        return await _answer(state, "messages", error, state.latency())
    state.count("messages", "accepted" if scenario.answer is not Answer.HANG else "accepted_held")
    delay = state.latency(scenario)
    if delay > 0:
        state.metrics.delay.observe(delay)
        await asyncio.sleep(delay)
    # A BSUID send is answered with the BSUID (no wa_id); a template send says it was accepted.
    contact = {"input": message.to, "user_id": message.user_id} if message.by_bsuid else {
        "input": message.to, "wa_id": message.wa_id}
    sent: dict[str, str] = {"id": wamid}
    if message.type == "template":
        sent["message_status"] = "accepted"
    return _json({"messaging_product": "whatsapp", "contacts": [contact], "messages": [sent]})


async def upload_media(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    number = request.match_info["phone_number_id"]
    refused = await _guard(state, request, "media", number)
    if refused is not None:
        return refused
    try:
        if not request.content_type.startswith("multipart/"):
            raise GraphError(100, "the upload must be multipart/form-data with file, type and messaging_product")
        form = await request.post()
        if form.get("messaging_product") != "whatsapp":
            raise GraphError(100, "The parameter messaging_product is required and must be 'whatsapp'.")
        mime = form.get("type")
        if not isinstance(mime, str) or not mime:
            raise GraphError(100, "The parameter type is required (the file's MIME type).")
        upload = form.get("file")
        if not isinstance(upload, web.FileField):
            raise GraphError(100, "The parameter file is required (a file part).")
        content = upload.file.read()
        item = state.media.upload(content, mime, number, time.time(), state.settings.media_ttl_seconds)
    except GraphError as error:
        return await _answer(state, "media", error, state.latency())
    state.count("media", "accepted")
    state.metrics.media_uploads.inc()
    await asyncio.sleep(state.latency())
    return _json({"id": item.id})


async def get_object(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    object_id = request.match_info["object_id"]
    item = state.media.get(object_id)
    refused = await _guard(state, request, "object", None if item is not None else object_id)
    if refused is not None:
        return refused
    state.count("object", "accepted")
    await asyncio.sleep(state.latency())
    if item is not None:
        expires = int(time.time() + MEDIA_URL_TTL)
        return _json({
            "messaging_product": "whatsapp",
            "url": f"{request.url.origin()}{MEDIA_PATH}?mid={item.id}&expires={expires}",
            "mime_type": item.mime_type,
            "sha256": item.sha256,
            "file_size": item.size,
            "id": item.id,
        })
    s = state.settings
    rate = state.rate_for(object_id)
    number = {
        "verified_name": "Sandbox Business",
        "code_verification_status": "VERIFIED",
        "display_phone_number": f"+{s.display_phone_number}",
        "quality_rating": "GREEN",
        "platform_type": "CLOUD_API",
        "throughput": {"level": "HIGH" if rate >= 1000 else "STANDARD"},
        "id": object_id,
    }
    fields = request.query.get("fields")
    if fields:  # Graph answers what `fields` names (and always the id); unknown names are left out
        wanted = {name.strip() for name in fields.split(",")} | {"id"}
        number = {name: value for name, value in number.items() if name in wanted}
    return _json(number)


async def download_media(request: web.Request) -> web.StreamResponse:
    """The media URL: the upload's bytes, to a request carrying the access token, as Meta's URLs serve them."""
    state = request.app[STATE]
    authorization = request.headers.get("Authorization")
    if not state.token_ok(authorization, None):
        error = GraphError(190, "Invalid OAuth access token - the media URL needs the bearer token")
        return await _answer(state, "media_download", error, 0)
    item = state.media.get(request.query.get("mid", ""))
    expires = request.query.get("expires", "")
    if item is None or not expires.isdigit() or int(expires) < time.time():
        error = GraphError(100, "mid: unknown or expired media URL; get a new one from GET /{media_id}", 404)
        return await _answer(state, "media_download", error, 0)
    state.count("media_download", "accepted")
    return web.Response(body=state.media.content(item), content_type=item.mime_type)


async def get_profile(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    number = request.match_info["phone_number_id"]
    refused = await _guard(state, request, "profile", number)
    if refused is not None:
        return refused
    state.count("profile", "accepted")
    profile = {"messaging_product": "whatsapp", **state.profile}
    fields = request.query.get("fields")
    if fields:
        wanted = {name.strip() for name in fields.split(",")} | {"messaging_product"}
        profile = {name: value for name, value in profile.items() if name in wanted}
    return _json({"data": [profile]})


async def update_profile(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    number = request.match_info["phone_number_id"]
    refused = await _guard(state, request, "profile", number)
    if refused is not None:
        return refused
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict) or body.get("messaging_product") != "whatsapp":
        return await _answer(state, "profile", GraphError(100, "The parameter messaging_product is required."), 0)
    state.profile.update({k: v for k, v in body.items() if k in state.profile})
    state.count("profile", "accepted")
    return _json({"success": True})


async def not_found(request: web.Request) -> web.Response:
    """Graph's answer to a path it does not know, in Graph's error shape (never aiohttp's text 404)."""
    path = request.path
    error = GraphError(2500, f"Unknown path components: {path}", 400)
    request.app[STATE].count("unknown_path", "rejected", 2500)
    return _json(error.body(), error.status)


async def delete_object(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    object_id = request.match_info["object_id"]
    refused = await _guard(state, request, "object", None)
    if refused is not None:
        return refused
    if not state.media.delete(object_id):
        error = GraphError(100, f"Unsupported delete request. Object with ID '{object_id}' does not exist.", subcode=33)
        return await _answer(state, "object", error, state.latency())
    state.count("object", "accepted")
    return _json({"success": True})
