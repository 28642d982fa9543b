"""Shared pieces of the client's tests: settings without Kafka, requests of every message type.

    client = WhatsAppClient(wa_settings(base_url), transport=httpx.MockTransport(handler))
"""

from __future__ import annotations

from typing import Any

from pipeline.config import WhatsAppSettings, load_settings
from pipeline.contracts import SendRequest

NUMBER = "106540352242922"
TOKEN = "EAAGtest-secret-token-0123456789abcdef"
USER = "+16505551234"


def wa_settings(base_url: str = "https://graph.example.test", **overrides: Any) -> WhatsAppSettings:
    values = {"api_base_url": base_url, "access_token": TOKEN, "phone_number_id": NUMBER, **overrides}
    return load_settings(whatsapp=values).whatsapp


# One body of every type the contracts define, exactly as a producer would write it.
BODIES: dict[str, dict[str, Any]] = {
    "text": {"type": "text", "text": {"body": "Your order shipped", "preview_url": True}},
    "template": {
        "type": "template",
        "template": {
            "name": "order_update",
            "language": {"code": "en_US"},
            "components": [
                {"type": "body", "parameters": [{"type": "text", "text": "A-1042"}]},
                {"type": "button", "sub_type": "url", "index": 0, "parameters": [{"type": "text", "text": "a1042"}]},
            ],
        },
    },
    "interactive_buttons": {
        "type": "interactive",
        "interactive": {
            "type": "button",
            "header": {"type": "text", "text": "Delivery"},
            "body": {"text": "When should we come?"},
            "footer": {"text": "Reply within 24 h"},
            "action": {"buttons": [
                {"type": "reply", "reply": {"id": "am", "title": "Morning"}},
                {"type": "reply", "reply": {"id": "pm", "title": "Afternoon"}},
            ]},
        },
    },
    "interactive_list": {
        "type": "interactive",
        "interactive": {
            "type": "list",
            "body": {"text": "Pick a slot"},
            "action": {"button": "Slots", "sections": [
                {"title": "Monday", "rows": [{"id": "mon-9", "title": "9:00", "description": "Morning"}]},
                {"title": "Tuesday", "rows": [{"id": "tue-9", "title": "9:00"}]},
            ]},
        },
    },
    "image": {"type": "image", "image": {"link": "https://example.com/a.png", "caption": "Receipt"}},
    "video": {"type": "video", "video": {"id": "1234567890", "caption": "How to"}},
    "document": {"type": "document", "document": {"link": "https://example.com/i.pdf", "filename": "invoice.pdf"}},
    "audio": {"type": "audio", "audio": {"id": "1234567891"}},
    "sticker": {"type": "sticker", "sticker": {"id": "1234567892"}},
    "location": {"type": "location", "location": {"latitude": 52.52, "longitude": 13.405, "name": "Depot"}},
    "reaction": {"type": "reaction", "reaction": {"message_id": "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBI", "emoji": "👍"}},
}


def request(kind: str = "text", to: str = USER, **fields: Any) -> SendRequest:
    return SendRequest.model_validate({"to": to, "message": BODIES[kind], **fields})
