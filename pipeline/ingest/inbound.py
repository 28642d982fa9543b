"""One of Meta's `messages[]` objects → an `InboundMessage` (what people build flows on, typed).

    message = inbound_message(raw, contacts, phone_number_id, received_at)   # raises ValidationError
    message.type, message.text, message.reply_id, message.context_wamid

The user is named by `from` (wa_id) and, since Meta's business-scoped user ids, `from_user_id` (BSUID);
a user who hides their number sends only the BSUID, and that is still a message. `contacts[]` adds the
profile name, username and ids. Per kind (Meta's reference, docs/ingest.md has the table):

- text, media captions, button (quick reply), reaction (emoji, and the message it reacts to);
- interactive: button/list replies (id and title), flow replies (`nfm_reply`: the flow token as
  `reply_id`, never the canned "Sent" body as text), call-permission replies (`accept`/`reject`);
- edit (the new text or caption, `context_wamid` the edited message), revoke (`context_wamid` the
  deleted one), system (`new_wa_id` when a user changed number).
Everything else (location, contacts, order, unsupported, …) is in `raw`, unchanged.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.contracts import InboundMessage

_MEDIA = ("image", "video", "document", "audio", "sticker")
_FLOW_RESPONSE_BYTES = 64 * 1024  # a flow's response_json is parsed only to find its flow_token


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    id: Annotated[str, Field(min_length=1)]
    from_: Annotated[str | None, Field(alias="from")] = None
    from_user_id: str | None = None
    from_parent_user_id: str | None = None
    timestamp: datetime
    type: Annotated[str, Field(min_length=1)]
    context: dict[str, Any] | None = None


def inbound_message(
    raw: Any, contacts: list[dict[str, Any]], phone_number_id: str | None, received_at: datetime
) -> InboundMessage:
    message = _Message.model_validate(raw)
    if message.from_ is None and message.from_user_id is None:
        raise ValidationError.from_exception_data(
            "message", [{"type": "missing", "loc": ("from",), "input": raw}]
        )
    contact = _contact(contacts, message.from_, message.from_user_id)
    content = _content(message.type, raw)
    context = message.context or {}
    profile = contact.get("profile")
    profile = profile if isinstance(profile, dict) else {}
    return InboundMessage.model_validate(
        {
            "wamid": message.id,
            "from": message.from_,
            "user_id": message.from_user_id or _str(contact.get("user_id")),
            "parent_user_id": message.from_parent_user_id or _str(contact.get("parent_user_id")),
            "username": _str(profile.get("username")),
            "phone_number_id": phone_number_id,
            "timestamp": message.timestamp,
            "type": message.type,
            "profile_name": _str(profile.get("name")),
            "context_wamid": content.refers_to or _str(context.get("id")),
            "text": content.text,
            "reply_id": content.reply_id,
            "reply_title": content.reply_title,
            "new_wa_id": content.new_wa_id,
            "raw": raw,
            "received_at": received_at,
        }
    )


class _Content:
    __slots__ = ("new_wa_id", "refers_to", "reply_id", "reply_title", "text")

    def __init__(
        self,
        text: str | None = None,
        reply_id: str | None = None,
        reply_title: str | None = None,
        refers_to: str | None = None,
        new_wa_id: str | None = None,
    ) -> None:
        self.text, self.reply_id, self.reply_title = text, reply_id, reply_title
        self.refers_to, self.new_wa_id = refers_to, new_wa_id


def _content(kind: str, raw: dict[str, Any]) -> _Content:
    body = raw.get(kind)
    body = body if isinstance(body, dict) else {}
    if kind == "text":
        return _Content(text=_str(body.get("body")))
    if kind == "button":  # a template's quick-reply button
        return _Content(_str(body.get("text")), _str(body.get("payload")), _str(body.get("text")))
    if kind == "interactive":
        return _interactive(body)
    if kind == "reaction":
        return _Content(text=_str(body.get("emoji")), refers_to=_str(body.get("message_id")))
    if kind in _MEDIA:
        return _Content(text=_str(body.get("caption")))
    if kind == "edit":  # the new version of an earlier message: its text or caption
        inner = body.get("message")
        new = _content(str(inner.get("type")), inner) if isinstance(inner, dict) else _Content()
        return _Content(text=new.text, refers_to=_str(body.get("original_message_id")))
    if kind == "revoke":  # the user deleted an earlier message
        return _Content(refers_to=_str(body.get("original_message_id")))
    if kind == "system":
        return _Content(text=_str(body.get("body")), new_wa_id=_str(body.get("wa_id")))
    return _Content()  # location, contacts, order, unsupported, …: all in `raw`


def _interactive(body: dict[str, Any]) -> _Content:
    kind = body.get("type")
    reply = body.get(str(kind))
    if not isinstance(reply, dict):
        return _Content()
    if kind == "nfm_reply":  # a completed flow: the body is Meta's canned "Sent", the token is what matters
        return _Content(reply_id=_flow_token(reply.get("response_json")), reply_title=_str(reply.get("name")))
    if kind == "call_permission_reply":
        return _Content(reply_id=_str(reply.get("response")))
    title = _str(reply.get("title"))  # button_reply, list_reply
    return _Content(text=title, reply_id=_str(reply.get("id")), reply_title=title)


def _flow_token(response_json: Any) -> str | None:
    if not isinstance(response_json, str) or len(response_json) > _FLOW_RESPONSE_BYTES:
        return None
    try:
        response = orjson.loads(response_json)
    except orjson.JSONDecodeError:
        return None
    return _str(response.get("flow_token")) if isinstance(response, dict) else None


def _contact(contacts: list[dict[str, Any]], wa_id: str | None, user_id: str | None) -> dict[str, Any]:
    for contact in contacts:
        if (wa_id is not None and contact.get("wa_id") == wa_id) or (
            user_id is not None and contact.get("user_id") == user_id
        ):
            return contact
    return {}


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None
