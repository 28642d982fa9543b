"""Webhook bodies in Meta's shape (compare tests/fixtures/webhooks/*.json) and their signature.

    value = status_value(metadata, [status("wamid.…", "delivered", 1764000000, "16505551234", "req_…")])
    body = envelope(waba_id, [value])                       # {"object": "whatsapp_business_account", ...}
    headers = {"X-Hub-Signature-256": sign(secret, raw)}    # over the exact bytes posted
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any


def sign(app_secret: str, raw: bytes) -> str:
    """The `X-Hub-Signature-256` header value."""
    return "sha256=" + hmac.new(app_secret.encode(), raw, hashlib.sha256).hexdigest()


def sign_sha1(app_secret: str, raw: bytes) -> str:
    """The legacy `X-Hub-Signature` header Meta still sends beside the SHA-256 one."""
    return "sha1=" + hmac.new(app_secret.encode(), raw, hashlib.sha1).hexdigest()


def envelope(waba_id: str, values: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": waba_id, "changes": [{"field": "messages", "value": value} for value in values]}],
    }


def metadata(display_phone_number: str, phone_number_id: str) -> dict[str, str]:
    return {"display_phone_number": display_phone_number, "phone_number_id": phone_number_id}


def status_value(meta: dict[str, str], statuses: list[dict[str, Any]]) -> dict[str, Any]:
    """Statuses with `contacts[]`: one per recipient of a sent, delivered or read status.

    Since business-scoped user ids, Meta names the recipient (wa_id and BSUID) in `contacts[]` on
    every status but a failed one (docs/sandbox.md, "Webhooks", cites Meta's page).
    """
    contacts: dict[str, dict[str, str]] = {}
    for item in statuses:
        if item["status"] != "failed" and "recipient_user_id" in item:
            contact = {"user_id": item["recipient_user_id"]}
            if item.get("recipient_id", "").isdigit():
                contact["wa_id"] = item["recipient_id"]
            contacts.setdefault(item["recipient_user_id"], contact)
    value: dict[str, Any] = {"messaging_product": "whatsapp", "metadata": meta}
    if contacts:
        value["contacts"] = list(contacts.values())
    value["statuses"] = statuses
    return value


def pricing(template_name: str | None) -> dict[str, Any]:
    """Per-message pricing: templates are billed by category; replies inside the window are free."""
    if template_name is None:
        return {"billable": False, "pricing_model": "PMP", "type": "free_customer_service", "category": "service"}
    return {"billable": True, "pricing_model": "PMP", "type": "regular", "category": template_category(template_name)}


def template_category(template_name: str) -> str:
    # The sandbox keeps no template registry: the name's prefix says the category (docs/sandbox.md).
    for category in ("marketing", "authentication"):
        if template_name.startswith(category):
            return category
    return "utility"


def status(
    wamid: str,
    kind: str,
    timestamp: int,
    recipient_id: str,
    request_id: str | None,
    *,
    recipient_user_id: str | None = None,
    price: dict[str, Any] | None = None,
    conversation: dict[str, Any] | None = None,
    errors: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    item: dict[str, Any] = {"id": wamid, "status": kind, "timestamp": str(timestamp), "recipient_id": recipient_id}
    if recipient_user_id is not None:
        item["recipient_user_id"] = recipient_user_id
    if request_id is not None:
        item["biz_opaque_callback_data"] = request_id
    if price is not None:
        item["pricing"] = price
    if conversation is not None:
        item["conversation"] = conversation
    if errors is not None:
        item["errors"] = errors
    return item


def conversation(conversation_id: str, expires_at: int, category: str) -> dict[str, Any]:
    return {"id": conversation_id, "expiration_timestamp": str(expires_at), "origin": {"type": category}}


def inbound_value(
    meta: dict[str, str], wa_id: str | None, user_id: str, profile_name: str, message: dict[str, Any]
) -> dict[str, Any]:
    """A user's message; `wa_id` None for a user who shows a username instead of their number."""
    contact: dict[str, Any] = {"profile": {"name": profile_name}}
    if wa_id is not None:
        contact["wa_id"] = wa_id
    contact["user_id"] = user_id
    return {"messaging_product": "whatsapp", "metadata": meta, "contacts": [contact], "messages": [message]}


def inbound_message(
    wamid: str,
    wa_id: str | None,
    timestamp: int,
    *,
    user_id: str | None = None,
    text: str | None = None,
    button_reply: tuple[str, str] | None = None,
    list_reply: tuple[str, str, str | None] | None = None,
    context: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One of text, an interactive button reply (id, title) or a list reply (id, title, description).

    `from` is the wa_id (absent when the user hides their number), `from_user_id` their BSUID.
    """
    message: dict[str, Any] = {"from": wa_id} if wa_id is not None else {}
    if user_id is not None:
        message["from_user_id"] = user_id
    message.update({"id": wamid, "timestamp": str(timestamp)})
    if text is not None:
        message["type"] = "text"
        message["text"] = {"body": text}
        if context is not None:
            message["context"] = context
        return message
    message["type"] = "interactive"
    if context is not None:
        message["context"] = context
    if button_reply is not None:
        reply = {"id": button_reply[0], "title": button_reply[1]}
        message["interactive"] = {"type": "button_reply", "button_reply": reply}
    elif list_reply is not None:
        reply = {"id": list_reply[0], "title": list_reply[1]}
        if list_reply[2] is not None:
            reply["description"] = list_reply[2]
        message["interactive"] = {"type": "list_reply", "list_reply": reply}
    else:
        raise ValueError("an inbound message needs text, button_reply or list_reply")
    return message
