"""Meta's account-level webhook fields → `AccountEvent`s for `account.events`.

    kind = ACCOUNT_FIELDS.get(change.field)          # AccountEventKind.TEMPLATE_STATUS, or None
    events = account_events(kind, change.field, value, waba_id, received_at)   # raises ValidationError

One event per change, except `user_preferences`, which lists one item per user: one event each.
`event` is what an operator alerts on (docs/ingest.md): the template's new status, its new quality
score, the account update's event, the user's preference (STOP, RESUME, …).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pipeline.contracts import AccountEvent, AccountEventKind

ACCOUNT_FIELDS: dict[str, AccountEventKind] = {
    "account_update": AccountEventKind.ACCOUNT,
    "account_alerts": AccountEventKind.ACCOUNT_ALERT,
    "account_review_update": AccountEventKind.ACCOUNT_REVIEW,
    "business_capability_update": AccountEventKind.BUSINESS_CAPABILITY,
    "phone_number_name_update": AccountEventKind.PHONE_NUMBER_NAME,
    "phone_number_quality_update": AccountEventKind.PHONE_NUMBER_QUALITY,
    "security": AccountEventKind.SECURITY,
    "message_template_status_update": AccountEventKind.TEMPLATE_STATUS,
    "message_template_quality_update": AccountEventKind.TEMPLATE_QUALITY,
    "template_category_update": AccountEventKind.TEMPLATE_CATEGORY,
    "message_template_components_update": AccountEventKind.TEMPLATE_COMPONENTS,
    "user_preferences": AccountEventKind.USER_PREFERENCE,
}

# Which key of `value` says what happened, per kind (Meta names it differently in each field).
_EVENT_KEY = {
    AccountEventKind.TEMPLATE_QUALITY: "new_quality_score",
    AccountEventKind.TEMPLATE_CATEGORY: "new_category",
    AccountEventKind.PHONE_NUMBER_NAME: "decision",
    AccountEventKind.ACCOUNT_REVIEW: "decision",
    AccountEventKind.ACCOUNT_ALERT: "alert_type",
}
_PREVIOUS_KEY = {
    AccountEventKind.TEMPLATE_QUALITY: "previous_quality_score",
    AccountEventKind.TEMPLATE_CATEGORY: "previous_category",
}


def account_events(
    kind: AccountEventKind, field: str, value: dict[str, Any], waba_id: str | None, received_at: datetime
) -> list[AccountEvent]:
    metadata = value.get("metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    common = {
        "kind": kind,
        "field": field,
        "waba_id": waba_id,
        "phone_number_id": _text(metadata.get("phone_number_id")),
        "received_at": received_at,
    }
    if kind is AccountEventKind.USER_PREFERENCE:
        return [_preference(item, value, common) for item in _list(value.get("user_preferences"))]
    event = _upper(value.get(_EVENT_KEY.get(kind, "event")))
    if kind is AccountEventKind.TEMPLATE_COMPONENTS:
        event = "COMPONENTS_UPDATED"  # Meta sends the new components, not an event name
    return [
        AccountEvent.model_validate(
            {
                **common,
                "event": event,
                "template_id": _text(value.get("message_template_id")),
                "template_name": _text(value.get("message_template_name")),
                "template_language": _text(value.get("message_template_language")),
                "previous": _upper(value.get(_PREVIOUS_KEY.get(kind, ""))),
                "reason": _text(value.get("reason")) or _text(value.get("disable_info")),
                "category": _text(value.get("message_template_category")),
                "timestamp": _epoch(value.get("timestamp")),
                "value": value,
            }
        )
    ]


def _preference(item: Any, value: dict[str, Any], common: dict[str, Any]) -> AccountEvent:
    item = item if isinstance(item, dict) else {}
    wa_id = _text(item.get("wa_id"))
    contacts = value.get("contacts")
    user_id = _text(item.get("user_id"))
    for contact in contacts if isinstance(contacts, list) else []:
        if isinstance(contact, dict) and wa_id is not None and contact.get("wa_id") == wa_id:
            user_id = user_id or _text(contact.get("user_id"))
    return AccountEvent.model_validate(
        {
            **common,
            "event": _upper(item.get("value")),
            "reason": _text(item.get("detail")),
            "category": _text(item.get("category")),
            "user_wa_id": wa_id,
            "user_id": user_id,
            "timestamp": _epoch(item.get("timestamp")),
            "value": item,
        }
    )


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _text(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    return str(value) if isinstance(value, str | int) else None


def _upper(value: Any) -> str | None:
    return value.upper() if isinstance(value, str) and value else None


def _epoch(value: Any) -> datetime | None:
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).isdigit():
        return None
    seconds = int(value)
    return datetime.fromtimestamp(seconds, UTC) if seconds < 10**11 else None
