"""SendRequest → the JSON body of `POST /{version}/{phone_number_id}/messages`.

    message_payload(request, callback_data="req_01J…|00-…")
    # {"messaging_product": "whatsapp", "recipient_type": "individual", "to": "16505551234",
    #  "type": "text", "text": {"body": "hi", "preview_url": false}, "biz_opaque_callback_data": "…"}
    # addressed by BSUID: "recipient": "US.13491208655302741918" instead of "to"

Thin on purpose: message bodies already mirror Meta's JSON (pipeline/contracts/bodies.py).
A `read` body becomes Graph's mark-as-read call instead:

    message_payload(read_request)
    # {"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.…",
    #  "typing_indicator": {"type": "text"}}
"""

from __future__ import annotations

from typing import Any

from pipeline.contracts import ReadMessage, SendRequest

# Meta's documented limit for `biz_opaque_callback_data`.
MAX_CALLBACK_DATA = 512

def message_payload(request: SendRequest, callback_data: str | None = None) -> dict[str, Any]:
    if isinstance(request.message, ReadMessage):
        return read_payload(request.message)  # Meta takes no callback data, context or recipient here
    if callback_data is not None and len(callback_data) > MAX_CALLBACK_DATA:
        raise ValueError(
            f"callback_data: biz_opaque_callback_data must be at most {MAX_CALLBACK_DATA} characters; "
            f"got {len(callback_data)}"
        )
    payload: dict[str, Any] = {"messaging_product": "whatsapp", "recipient_type": "individual"}
    if request.to is not None:
        payload["to"] = request.to.removeprefix("+")  # Meta's wire format: E.164 digits without the +
    else:
        # Meta's field for a business-scoped user id, which `to` would override (docs/whatsapp.md, Payloads).
        payload["recipient"] = request.recipient_user_id
    payload.update(request.message.model_dump(mode="json", exclude_none=True))
    if request.reply_to is not None:
        payload["context"] = {"message_id": request.reply_to}
    if callback_data:
        payload["biz_opaque_callback_data"] = callback_data
    return payload


def read_payload(message: ReadMessage) -> dict[str, Any]:
    """Graph's mark-as-read call; the typing indicator shows until the reply or 25 s."""
    payload: dict[str, Any] = {"messaging_product": "whatsapp", "status": "read", "message_id": message.message_id}
    if message.typing_indicator:
        payload["typing_indicator"] = {"type": "text"}
    return payload
