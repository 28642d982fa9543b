"""The read API in the OpenAPI document: parameters and example bodies, for the store and the api.

    for method, path, spec in ROUTES: app.add_api_route(path, handler, methods=[method], **spec)

The store's own app and the producer API (which forwards these routes to the store) declare them from
here, so both documents show the same contract as docs/store.md.
"""

from __future__ import annotations

from typing import Any

_MESSAGE = {
    "request_id": "req_01KBMZ6E3T0Q5B2V9X8W7Y6Z5A", "phone_number_id": "106540352242922", "to": "+16505551234",
    "wa_id": "16505551234", "type": "text", "text": "Your order 12345 shipped", "metadata": {"order": "12345"},
    "accepted_at": "2026-11-24T19:44:14.952Z", "outcome": "sent", "wamid": "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBI5QTNDQTVC",
    "status": "read", "error": None,
    "timeline": [
        {"status": "accepted", "at": "2026-11-24T19:44:14.952Z", "pricing_category": None, "error": None},
        {"status": "sent", "at": "2026-11-24T19:44:15Z", "pricing_category": "utility", "error": None},
        {"status": "delivered", "at": "2026-11-24T19:44:16Z", "pricing_category": "utility", "error": None},
        {"status": "read", "at": "2026-11-24T19:44:20Z", "pricing_category": "utility", "error": None},
    ],
    "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
}
_CONVERSATION = {
    "wa_id": "16505551234",
    "messages": [
        {"direction": "inbound", "id": "wamid.HBgLMTY1MDU1NTEyMzQVAgASGCA3",
         "wamid": "wamid.HBgLMTY1MDU1NTEyMzQVAgASGCA3", "phone_number_id": "106540352242922", "type": "text",
         "text": "Thanks!", "at": "2026-11-24T19:45:02Z",
         "status": None, "reply_to": "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBI5QTNDQTVC"},
        {"direction": "outbound", "id": "req_01KBMZ6E3T0Q5B2V9X8W7Y6Z5A",
         "wamid": "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBI5QTNDQTVC", "phone_number_id": "106540352242922", "type": "text",
         "text": "Your order 12345 shipped", "at": "2026-11-24T19:44:14.952Z", "status": "read", "reply_to": None},
    ],
    "next_cursor": "MTc2NDAxMzQ1NDk1MjAwMHxyZXFfMDFLQk1aNkUzVDBRNUIyVjlYOFc3WTZaNUE",
}
_SEARCH = {
    "messages": [{k: _MESSAGE[k] for k in (
        "request_id", "phone_number_id", "to", "wa_id", "type", "text", "accepted_at", "outcome", "status", "wamid")}],
    "next_cursor": None,
}
_ANALYTICS = {
    "phone_number_id": "106540352242922", "wa_id": None, "since": "2026-11-17T19:44:00Z",
    "until": "2026-11-24T19:44:00Z",
    "counts": {"accepted": 1200, "sent": 1180, "delivered": 1150, "read": 900, "failed": 20},
    "rates": {"sent": 0.9833, "delivered": 0.9583, "read": 0.75, "failed": 0.0167},
    "median_seconds": {"to_delivered": 1.8, "to_read": 42.0},
    "response": {"window_hours": 24, "answered": 300, "rate": 0.25, "median_seconds": 95.0},
    "top_errors": [{"code": 131026, "title": "Message undeliverable", "count": 12}],
}
_ERASED = {"wa_id_erased": True, "deleted": {"outbound": 3, "inbound": 2, "statuses": 9}}
_ERROR = {"error": {"status": 404, "code": "not_found", "message": "no such message", "fields": []}}


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema or {"type": "string"}}


def _path(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": {"type": "string"}}


_LIMIT = _query("limit", "page size, 1 to 200 (default 50)", {"type": "integer", "minimum": 1, "maximum": 200})
_TIMES = [_query("since", "RFC 3339, inclusive", {"type": "string", "format": "date-time"}),
          _query("until", "RFC 3339, exclusive", {"type": "string", "format": "date-time"})]
_NUMBER = _query("phone_number_id", "one of the key's business numbers (another one: 404)")
_WA_ID = _path("wa_id", "the contact's number, digits only as Meta writes it (16505551234); + and spaces are accepted")


def _spec(summary: str, description: str, parameters: list[dict[str, Any]], example: Any,
          statuses: tuple[int, ...] = (401, 404, 422, 503)) -> dict[str, Any]:
    meaning = {401: "Missing or unknown API key.", 404: "Unknown, or of a number the key may not read.",
               422: "A query parameter breaks a rule (each one named).", 503: "The database is unavailable."}
    responses: dict[int | str, Any] = {
        200: {"description": "OK", "content": {"application/json": {"example": example}}},
        **{s: {"description": meaning[s], "content": {"application/json": {"example": {
            "error": {**_ERROR["error"], "status": s}}}}} for s in statuses},
    }
    return {"summary": summary, "description": description, "responses": responses,
            "openapi_extra": {"parameters": parameters, "security": [{"bearer": []}, {"apiKey": []}]},
            "tags": ["read"]}


ROUTES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("GET", "/v1/messages/{request_id}", _spec(
        "What happened to one request",
        "Outcome, wamid, Meta's error (code, title, class) and the timeline accepted → sent → delivered → read, or "
        "failed, with times.", [_path("request_id", "the id POST /v1/messages answered")], _MESSAGE)),
    ("GET", "/v1/contacts/{wa_id}/messages", _spec(
        "A contact's conversation", "Both directions, newest first; pass `next_cursor` back as `before`.",
        [_WA_ID, _LIMIT, _query("before", "a next_cursor from the previous page")], _CONVERSATION)),
    ("GET", "/v1/messages", _spec(
        "Search outbound messages",
        "Every word of `q` must occur (case-insensitive; a trailing * is a prefix); newest first. With "
        "STORE_ENCRYPTION_KEY set, `q` is refused (422): the database holds only ciphertext.",
        [_query("q", "words to find in the text, caption, template name and parameters, button titles"),
         _query("to", "recipient phone number"),
         _query("status", "latest status", {"type": "string", "enum": [
             "accepted", "sent", "delivered", "read", "played", "failed"]}),
         *_TIMES, _NUMBER, _LIMIT, _query("cursor", "a next_cursor from the previous page")], _SEARCH)),
    ("GET", "/v1/analytics", _spec(
        "Delivery analytics of a number (or all the key's numbers)",
        "Counts and rates of sent, delivered, read and failed; median time to delivered and to read; the response "
        "rate (share of messages the contact answered within 24 h) and median response time; top error codes. "
        "Default window: the last 7 days.", [_NUMBER, *_TIMES], _ANALYTICS)),
    ("GET", "/v1/contacts/{wa_id}/analytics", _spec(
        "Delivery analytics of one contact", "As /v1/analytics, for the messages to one contact.",
        [_WA_ID, _NUMBER, *_TIMES], {**_ANALYTICS, "wa_id": "16505551234"})),
    ("DELETE", "/v1/contacts/{wa_id}", _spec(
        "Erase a contact (right to erasure)",
        "Deletes every stored message to and from the contact, its statuses and search entries, on the key's "
        "numbers. Idempotent: always 200, with zeros the second time.", [_WA_ID], _ERASED, (401, 422, 503))),
)
