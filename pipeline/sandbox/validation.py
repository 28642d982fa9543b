"""Check a send body the way the Graph API does, from Meta's documented limits (not the client's code).

    message = check_send_body(orjson.loads(raw))   # raises GraphError naming the field and the rule

Codes: the envelope (`messaging_product`, `to`, `type`, `recipient_type`) answers 100; a missing
field inside the typed payload 131008; a present field that breaks a rule 131009. A kind Meta
documents but the sandbox does not emulate (a product list, a flow, …) raises `NotEmulated`, answered
with HTTP 501 and a sandbox-only code, so a test can tell "not emulated" from "wrong payload".

The recipient is `to` (a phone number) or, since business-scoped user ids, `recipient` (a BSUID);
when both are given `to` wins, as at Meta.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pipeline.sandbox.errors import GraphError

MESSAGE_TYPES = ("text", "template", "interactive", "image", "video", "document", "audio", "sticker",
                 "location", "reaction", "contacts")
INTERACTIVE_TYPES = ("button", "list", "cta_url", "location_request_message")
# Documented by Meta, accepted by Meta, not emulated here (they need a catalog, a flow or calling).
NOT_EMULATED_INTERACTIVE = ("product", "product_list", "catalog_message", "flow", "carousel", "voice_call",
                            "call_permission_request", "address_message")
MEDIA_TYPES = ("image", "video", "document", "audio", "sticker")
_TO = re.compile(r"^\+?\d{7,15}$")
_BSUID = re.compile(r"^[A-Z]{2}\.(ENT\.)?[0-9A-Za-z]{1,128}$")  # `US.13491208655302741918`, `US.ENT.1181…`
_TEMPLATE_NAME = re.compile(r"^[a-z0-9_]{1,512}$")
_LANGUAGE = re.compile(r"^[a-z]{2,3}(_[A-Za-z]{2,4})?$")


@dataclass(frozen=True)
class Message:
    """What the sandbox needs to know about an accepted body."""

    to: str  # as sent (echoed in contacts[].input): a phone number or a BSUID
    wa_id: str  # digits only; empty for a message addressed by BSUID alone
    type: str
    request_id: str | None  # biz_opaque_callback_data
    media_ids: tuple[str, ...] = ()
    media_links: tuple[str, ...] = ()
    template_name: str | None = None
    user_id: str | None = None  # the recipient's BSUID, when the body named one in `recipient`


    @property
    def by_bsuid(self) -> bool:
        """Addressed by business-scoped user id (`recipient`) rather than phone number (`to`)."""
        return self.user_id is not None


class NotEmulated(Exception):
    """A kind Meta accepts that the sandbox does not emulate; the message names it."""


def check_send_body(body: Any) -> Message:
    if not isinstance(body, dict):
        raise GraphError(100, "the request body must be a JSON object")
    if "messaging_product" not in body:
        raise GraphError(100, "The parameter messaging_product is required.")
    if body["messaging_product"] != "whatsapp":
        raise GraphError(100, "Param messaging_product must be 'whatsapp'")
    if body.get("recipient_type", "individual") != "individual":
        raise GraphError(100, "Param recipient_type must be 'individual'")
    to, user_id = _recipient(body)
    kind = body.get("type", "text")  # Meta defaults a missing type to text
    if kind not in MESSAGE_TYPES:
        raise GraphError(100, f"Param type must be one of {{{', '.join(MESSAGE_TYPES)}}}; got {kind!r}")
    request_id = body.get("biz_opaque_callback_data")
    if request_id is not None:
        _text(request_id, "biz_opaque_callback_data", 512, minimum=0)
    context = body.get("context")
    if context is not None:
        _text(_field(_object(context, "context"), "message_id", "context"), "context.message_id", 512)
    payload = _field(body, kind, "")
    payload = payload if kind == "contacts" else _object(payload, kind)  # contacts is a list
    found = _Found()
    _CHECKS[kind](payload, kind, found)
    return Message(
        to=to,
        wa_id=to.lstrip("+") if user_id is None else "",
        user_id=user_id,
        type=kind,
        request_id=request_id,
        media_ids=tuple(found.media_ids),
        media_links=tuple(found.media_links),
        template_name=payload["name"] if kind == "template" else None,
    )


def _recipient(body: dict[str, Any]) -> tuple[str, str | None]:
    """(to as sent, BSUID or None): `to` when present, else `recipient`."""
    to, recipient = body.get("to"), body.get("recipient")
    if to is None and recipient is None:
        raise GraphError(100, "The parameter to is required (or recipient, a business-scoped user id).")
    if to is not None:
        if not isinstance(to, str) or not _TO.match(to):
            raise GraphError(100, "Param to must be a phone number: 7 to 15 digits, an optional leading '+'")
        return to, None
    if not isinstance(recipient, str) or not _BSUID.match(recipient):
        raise GraphError(100, "Param recipient must be a business-scoped user id such as US.13491208655302741918")
    return recipient, recipient


def check_mark_read(body: dict[str, Any]) -> None:
    """`{"messaging_product": "whatsapp", "status": "read", "message_id": "wamid…"}` marks an inbound message read."""
    if body.get("messaging_product") != "whatsapp":
        raise GraphError(100, "The parameter messaging_product is required and must be 'whatsapp'.")
    if body["status"] != "read":
        raise GraphError(100, "Param status must be 'read'")
    _text(_field(body, "message_id", ""), "message_id", 512)
    typing = body.get("typing_indicator")
    if typing is not None and _object(typing, "typing_indicator").get("type") != "text":
        raise GraphError(131009, "Param typing_indicator.type must be 'text'")


class _Found:
    def __init__(self) -> None:
        self.media_ids: list[str] = []
        self.media_links: list[str] = []


# --- primitives -------------------------------------------------------------------------------------


def _field(obj: dict[str, Any], key: str, path: str) -> Any:
    if key not in obj or obj[key] is None:
        raise GraphError(131008, f"{_join(path, key)} is required")
    return obj[key]


def _object(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise GraphError(131009, f"{path} must be an object")
    return value


def _list(value: Any, path: str, minimum: int, maximum: int) -> list[Any]:
    if not isinstance(value, list):
        raise GraphError(131009, f"{path} must be a list")
    if not minimum <= len(value) <= maximum:
        raise GraphError(131009, f"{path} must have {minimum} to {maximum} items (got {len(value)})")
    return value


def _text(value: Any, path: str, maximum: int, minimum: int = 1) -> str:
    if not isinstance(value, str):
        raise GraphError(131009, f"{path} must be a string")
    if len(value) < minimum:
        raise GraphError(131009, f"{path} must not be empty")
    if len(value) > maximum:
        raise GraphError(131009, f"{path} must be at most {maximum} characters (got {len(value)})")
    return value


def _optional_text(obj: dict[str, Any], key: str, path: str, maximum: int, minimum: int = 1) -> None:
    if obj.get(key) is not None:
        _text(obj[key], _join(path, key), maximum, minimum)


def _number(value: Any, path: str, low: float, high: float) -> None:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise GraphError(131009, f"{path} must be a number") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise GraphError(131009, f"{path} must be a number from {low:g} to {high:g}")


def _lower(value: Any) -> Any:
    # Graph reads enum values whatever their case: PyWa sends "BODY" and "QUICK_REPLY" and Meta sends them.
    return value.lower() if isinstance(value, str) else value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# --- per type ---------------------------------------------------------------------------------------


def _check_text(payload: dict[str, Any], path: str, _: _Found) -> None:
    _text(_field(payload, "body", path), f"{path}.body", 4096)
    if "preview_url" in payload and not isinstance(payload["preview_url"], bool):
        raise GraphError(131009, f"{path}.preview_url must be true or false")


def _check_media(payload: dict[str, Any], path: str, found: _Found) -> None:
    has_id, has_link = payload.get("id") is not None, payload.get("link") is not None
    if has_id == has_link:
        raise GraphError(131008 if not has_id else 131009, f"{path} needs exactly one of id or link")
    if has_id:
        found.media_ids.append(_text(payload["id"], f"{path}.id", 128))
    else:
        link = _text(payload["link"], f"{path}.link", 2048)
        if not link.startswith(("https://", "http://")):
            raise GraphError(131009, f"{path}.link must be an http(s) URL")
        found.media_links.append(link)
    kind = path.rsplit(".", 1)[-1]
    if payload.get("caption") is not None:
        if kind in ("audio", "sticker"):
            raise GraphError(131009, f"{path}.caption is not allowed for {kind}")
        _text(payload["caption"], f"{path}.caption", 1024, minimum=0)
    if payload.get("filename") is not None:
        if kind != "document":
            raise GraphError(131009, f"{path}.filename is only allowed for documents")
        _text(payload["filename"], f"{path}.filename", 240)


def _check_template(payload: dict[str, Any], path: str, _: _Found) -> None:
    name = _field(payload, "name", path)
    if not isinstance(name, str) or not _TEMPLATE_NAME.match(name):
        raise GraphError(131009, f"{path}.name must be lowercase letters, digits and underscores (≤ 512)")
    language = _object(_field(payload, "language", path), f"{path}.language")
    code = _field(language, "code", f"{path}.language")
    if not isinstance(code, str) or not _LANGUAGE.match(code):
        raise GraphError(131009, f"{path}.language.code must be a language code such as en_US")
    components = payload.get("components")
    if components is None:
        return
    for i, component in enumerate(_list(components, f"{path}.components", 0, 20)):
        where = f"{path}.components[{i}]"
        ctype = _lower(_field(_object(component, where), "type", where))
        if ctype not in ("header", "body", "button", "footer"):
            raise GraphError(131009, f"{where}.type must be header, body, button or footer")
        if ctype == "button":
            if _lower(component.get("sub_type")) not in ("quick_reply", "url", "copy_code", "flow", "catalog"):
                raise GraphError(131009, f"{where}.sub_type must be quick_reply, url, copy_code, flow or catalog")
            _field(component, "index", where)
        for j, parameter in enumerate(_list(component.get("parameters", []), f"{where}.parameters", 0, 100)):
            at = f"{where}.parameters[{j}]"
            ptype = _lower(_field(_object(parameter, at), "type", at))
            if ptype not in ("text", "currency", "date_time", "image", "video", "document", "payload",
                             "coupon_code", "action", "location"):
                raise GraphError(131009, f"{at}.type is not a template parameter type")
            if ptype == "text":
                _text(_field(parameter, "text", at), f"{at}.text", 32_768)


def _check_interactive(payload: dict[str, Any], path: str, found: _Found) -> None:
    kind = _field(payload, "type", path)
    if kind in NOT_EMULATED_INTERACTIVE:
        raise NotEmulated(f"{path}.type {kind!r}: Meta accepts it; the sandbox does not emulate it")
    if kind not in INTERACTIVE_TYPES:
        known = ", ".join(INTERACTIVE_TYPES + NOT_EMULATED_INTERACTIVE)
        raise GraphError(131009, f"{path}.type must be one of {known}")
    body = _object(_field(payload, "body", path), f"{path}.body")
    _text(_field(body, "text", f"{path}.body"), f"{path}.body.text", 4096 if kind == "list" else 1024)
    if payload.get("footer") is not None:
        footer = _object(payload["footer"], f"{path}.footer")
        _text(_field(footer, "text", f"{path}.footer"), f"{path}.footer.text", 60)
    if payload.get("header") is not None:
        _check_header(_object(payload["header"], f"{path}.header"), f"{path}.header", kind, found)
    action = _object(_field(payload, "action", path), f"{path}.action")
    if kind == "button":
        _check_buttons(action, f"{path}.action")
    elif kind == "list":
        _check_list(action, f"{path}.action")
    elif kind == "cta_url":
        _check_cta_url(action, f"{path}.action")
    elif _field(action, "name", f"{path}.action") != "send_location":
        raise GraphError(131009, f"{path}.action.name must be send_location")


def _check_header(header: dict[str, Any], path: str, kind: str, found: _Found) -> None:
    htype = _field(header, "type", path)
    if htype == "text":
        _text(_field(header, "text", path), f"{path}.text", 60)
    elif htype in ("image", "video", "document") and kind in ("button", "cta_url"):
        _check_media(_object(_field(header, htype, path), f"{path}.{htype}"), f"{path}.{htype}", found)
    else:
        allowed = "text, image, video or document" if kind in ("button", "cta_url") else "text"
        raise GraphError(131009, f"{path}.type must be {allowed} for {kind} messages")


def _check_buttons(action: dict[str, Any], path: str) -> None:
    buttons = _list(_field(action, "buttons", path), f"{path}.buttons", 1, 3)
    titles: set[str] = set()
    ids: set[str] = set()
    for i, button in enumerate(buttons):
        where = f"{path}.buttons[{i}]"
        if _field(_object(button, where), "type", where) != "reply":
            raise GraphError(131009, f"{where}.type must be reply")
        reply = _object(_field(button, "reply", where), f"{where}.reply")
        button_id = _text(_field(reply, "id", f"{where}.reply"), f"{where}.reply.id", 256)
        title = _text(_field(reply, "title", f"{where}.reply"), f"{where}.reply.title", 20)
        if title in titles:
            raise GraphError(131009, f"{where}.reply.title must be unique among the buttons ({title!r} repeats)")
        if button_id in ids:
            raise GraphError(131009, f"{where}.reply.id must be unique among the buttons ({button_id!r} repeats)")
        titles.add(title)
        ids.add(button_id)


def _check_list(action: dict[str, Any], path: str) -> None:
    _text(_field(action, "button", path), f"{path}.button", 20)
    sections = _list(_field(action, "sections", path), f"{path}.sections", 1, 10)
    row_ids: set[str] = set()
    for i, section in enumerate(sections):
        where = f"{path}.sections[{i}]"
        _object(section, where)
        if len(sections) > 1:
            _text(_field(section, "title", where), f"{where}.title", 24)
        else:
            _optional_text(section, "title", where, 24)
        for j, row in enumerate(_list(_field(section, "rows", where), f"{where}.rows", 1, 10)):
            at = f"{where}.rows[{j}]"
            row_id = _text(_field(_object(row, at), "id", at), f"{at}.id", 200)
            _text(_field(row, "title", at), f"{at}.title", 24)
            _optional_text(row, "description", at, 72, minimum=0)
            if row_id in row_ids:
                raise GraphError(131009, f"{at}.id must be unique across the list ({row_id!r} repeats)")
            row_ids.add(row_id)
    if len(row_ids) > 10:
        raise GraphError(131009, f"{path}.sections must hold at most 10 rows in total (got {len(row_ids)})")


def _check_cta_url(action: dict[str, Any], path: str) -> None:
    if _field(action, "name", path) != "cta_url":
        raise GraphError(131009, f"{path}.name must be cta_url")
    parameters = _object(_field(action, "parameters", path), f"{path}.parameters")
    _text(_field(parameters, "display_text", f"{path}.parameters"), f"{path}.parameters.display_text", 20)
    url = _text(_field(parameters, "url", f"{path}.parameters"), f"{path}.parameters.url", 2000)
    if not url.startswith(("https://", "http://")):
        raise GraphError(131009, f"{path}.parameters.url must be an http(s) URL")


def _check_contacts(payload: Any, path: str, _: _Found) -> None:
    for i, contact in enumerate(_list(payload, path, 1, 257)):
        where = f"{path}[{i}]"
        name = _object(_field(_object(contact, where), "name", where), f"{where}.name")
        _text(_field(name, "formatted_name", f"{where}.name"), f"{where}.name.formatted_name", 1000)
        for j, phone in enumerate(_list(contact.get("phones", []), f"{where}.phones", 0, 20)):
            _optional_text(_object(phone, f"{where}.phones[{j}]"), "phone", f"{where}.phones[{j}]", 64)


def _check_location(payload: dict[str, Any], path: str, _: _Found) -> None:
    _number(_field(payload, "latitude", path), f"{path}.latitude", -90, 90)
    _number(_field(payload, "longitude", path), f"{path}.longitude", -180, 180)
    _optional_text(payload, "name", path, 1000, minimum=0)
    _optional_text(payload, "address", path, 1000, minimum=0)


def _check_reaction(payload: dict[str, Any], path: str, _: _Found) -> None:
    _text(_field(payload, "message_id", path), f"{path}.message_id", 512)
    emoji = _field(payload, "emoji", path)
    # An empty emoji removes the reaction; otherwise one emoji: the longest standard (RGI) emoji
    # sequences are 10 code points (ZWJ sequences with skin tones).
    _text(emoji, f"{path}.emoji", 10, minimum=0)


_CHECKS = {
    "text": _check_text,
    "template": _check_template,
    "interactive": _check_interactive,
    "location": _check_location,
    "reaction": _check_reaction,
    "contacts": _check_contacts,
    **{kind: _check_media for kind in MEDIA_TYPES},
}
