"""Control endpoints under /_sandbox/ (not Meta's): switch outages, change limits, read what happened.

    PATCH  /_sandbox/config            {"rate_per_second": 1000, "latency_median_seconds": 0}   -> the new config
    POST   /_sandbox/outage            {"mode": "error"|"timeout"|"disconnect", "phone_number_id"?}
    DELETE /_sandbox/outage[?phone_number_id=]
    POST   /_sandbox/reset
    GET    /_sandbox/stats | /_sandbox/sends | /_sandbox/webhooks | /_sandbox/media | /_sandbox/scenarios
    POST   /_sandbox/inbound           {"from", "text" | "button_reply" | "list_reply", "hide_number"?, ...}
    POST   /_sandbox/webhook-verify    {"verify_token"}   (Meta's GET hub.challenge handshake)

Bad input answers 400 {"error": "<field>: <rule>"}. docs/sandbox.md lists every endpoint.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from pipeline.sandbox import ids, payloads
from pipeline.sandbox.graph import STATE
from pipeline.sandbox.scenarios import SCENARIOS


def routes() -> list[web.RouteDef]:
    return [
        web.get("/_sandbox/config", get_config),
        web.patch("/_sandbox/config", patch_config),
        web.post("/_sandbox/outage", start_outage),
        web.delete("/_sandbox/outage", end_outage),
        web.post("/_sandbox/reset", reset),
        web.get("/_sandbox/stats", stats),
        web.get("/_sandbox/sends", sends),
        web.get("/_sandbox/webhooks", webhooks),
        web.get("/_sandbox/media", media),
        web.get("/_sandbox/media/{media_id}", media_item),
        web.post("/_sandbox/media/{media_id}/expire", expire_media),
        web.get("/_sandbox/scenarios", scenarios),
        web.post("/_sandbox/inbound", inbound),
        web.post("/_sandbox/webhook-verify", verify_webhook),
    ]


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _bad(problem: str, status: int = 400) -> web.HTTPException:
    error = web.HTTPConflict if status == 409 else web.HTTPBadRequest
    return error(text=orjson.dumps({"error": problem}).decode(), content_type="application/json")


async def _object(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        body = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        raise _bad("body: must be JSON") from None
    if not isinstance(body, dict):
        raise _bad("body: must be a JSON object")
    return body


def _optional_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise _bad(f"{key}: must be a non-empty string")
    return value


def _str(body: dict[str, Any], key: str) -> str:
    value = _optional_str(body, key)
    if value is None:
        raise _bad(f"{key}: required")
    return value


async def get_config(request: web.Request) -> web.Response:
    return _json(request.app[STATE].public_config())


async def patch_config(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        state.configure(await _object(request))
    except ValueError as exc:
        raise _bad(str(exc)) from None
    return _json(state.public_config())


async def start_outage(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = await _object(request)
    try:
        state.set_outage(str(body.get("mode", "error")), _optional_str(body, "phone_number_id"))
    except ValueError as exc:
        raise _bad(str(exc)) from None
    return _json({"outages": state.outages})


async def end_outage(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.end_outage(request.query.get("phone_number_id"))
    return _json({"outages": state.outages})


async def reset(request: web.Request) -> web.Response:
    request.app[STATE].reset()
    return _json({"reset": True})


async def stats(request: web.Request) -> web.Response:
    return _json(request.app[STATE].stats())


async def sends(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        after = int(request.query.get("after", "0"))
        limit = int(request.query.get("limit", "100000"))
    except ValueError:
        raise _bad("after, limit: must be integers") from None
    records = state.send_log(request.query.get("phone_number_id"), after, limit)
    return _json({"sends": records, "total": state.stats()["sends"]["total"]})


async def webhooks(request: web.Request) -> web.Response:
    dispatcher = request.app[STATE].webhooks
    return _json({"summary": dispatcher.summary(), "deliveries": list(dispatcher.log)})


async def media(request: web.Request) -> web.Response:
    return _json(request.app[STATE].media.summary())


async def media_item(request: web.Request) -> web.Response:
    item = request.app[STATE].media.get(request.match_info["media_id"])
    if item is None:
        raise web.HTTPNotFound(text='{"error": "media_id: unknown"}', content_type="application/json")
    return _json(asdict(item))


async def expire_media(request: web.Request) -> web.Response:
    if not request.app[STATE].media.expire(request.match_info["media_id"], time.time()):
        raise web.HTTPNotFound(text='{"error": "media_id: unknown"}', content_type="application/json")
    return _json({"expired": True})


async def scenarios(_: web.Request) -> web.Response:
    return _json([{"suffix": s.suffix, "name": s.name, "what": s.what} for s in SCENARIOS])


def _number_for(state_numbers: list[str], body: dict[str, Any]) -> str:
    number = _optional_str(body, "phone_number_id")
    if number is None:
        if not state_numbers:
            raise _bad("phone_number_id: required (no phone_number_ids configured to default to)")
        return state_numbers[0]
    if not number.isdigit():
        raise _bad("phone_number_id: must be digits")
    return number


async def inbound(request: web.Request) -> web.Response:
    """Post a user's message to the webhook, as if they had written to the business number."""
    state = request.app[STATE]
    settings = state.settings
    body = await _object(request)
    if settings.webhook_url is None:
        raise _bad("webhook_url: not configured, so there is nowhere to post the message", status=409)
    number = _number_for(settings.phone_number_ids, body)
    sender = _str(body, "from")
    if not sender.isdigit():
        raise _bad("from: must be the user's wa_id (digits)")
    hide_number = body.get("hide_number", False)
    if not isinstance(hide_number, bool):
        raise _bad("hide_number: must be true or false")
    user_id = state.bsuid_of(sender)
    shown = None if hide_number else sender  # a user with a username: Meta sends only their BSUID
    reply_to = _optional_str(body, "context_message_id")
    context = {"from": settings.display_phone_number, "id": reply_to} if reply_to else None
    wamid = ids.inbound_wamid(sender)
    now = int(time.time())
    text, button, listed = body.get("text"), body.get("button_reply"), body.get("list_reply")
    if sum(x is not None for x in (text, button, listed)) != 1:
        raise _bad("text, button_reply, list_reply: give exactly one")
    if text is not None:
        if not isinstance(text, str):
            raise _bad("text: must be a string")
        message = payloads.inbound_message(wamid, shown, now, user_id=user_id, text=text, context=context)
    else:
        if context is None:  # a reply answers a message: Meta's always carry its context
            raise _bad("context_message_id: required for button and list replies (the wamid they answer)")
        reply = button if button is not None else listed
        if not isinstance(reply, dict):
            raise _bad("button_reply / list_reply: must be an object with id and title")
        reply_id, title = _str(reply, "id"), _str(reply, "title")
        if button is not None:
            message = payloads.inbound_message(
                wamid, shown, now, user_id=user_id, button_reply=(reply_id, title), context=context
            )
        else:
            description = _optional_str(reply, "description")
            message = payloads.inbound_message(
                wamid, shown, now, user_id=user_id, list_reply=(reply_id, title, description), context=context
            )
    name = _optional_str(body, "name") or "Sandbox User"
    meta = payloads.metadata(settings.display_phone_number, number)
    value = payloads.inbound_value(meta, shown, user_id, name, message)
    state.webhooks.post_value(number, value)
    return _json({"id": wamid, "user_id": user_id, "queued": True})


async def verify_webhook(request: web.Request) -> web.Response:
    """Meta's subscription handshake against the configured webhook URL: a GET with hub.* parameters."""
    settings = request.app[STATE].settings
    body = await _object(request)
    token = _str(body, "verify_token")
    if settings.webhook_url is None:
        raise _bad("webhook_url: not configured", status=409)
    challenge = str(int.from_bytes(os.urandom(4), "big"))
    params = {"hub.mode": "subscribe", "hub.verify_token": token, "hub.challenge": challenge}
    try:
        async with aiohttp.ClientSession() as session, session.get(
            settings.webhook_url, params=params, timeout=aiohttp.ClientTimeout(total=settings.webhook_timeout_seconds)
        ) as response:
            text = await response.text()
            return _json({"status": response.status, "body": text, "challenge": challenge,
                          "verified": response.status == 200 and text == challenge})
    except (aiohttp.ClientError, TimeoutError) as exc:
        return _json({"status": None, "body": type(exc).__name__, "challenge": challenge, "verified": False})
