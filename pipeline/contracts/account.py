"""Account, template, quality and opt-out events: the value on `account.events`.

    event = AccountEvent.model_validate_json(raw)
    event.kind, event.event          # AccountEventKind.TEMPLATE_STATUS, "PAUSED"
    event.template_name              # "order_update"
    event.value                      # Meta's `value` object (or one `user_preferences` item), unchanged

Meta posts these on webhook fields other than `messages` (docs/ingest.md has the table). The typed
fields are the ones an operator alerts on or a suppression list needs; everything else Meta sent is in
`value`, so a field Meta adds later is never lost.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import Field, StringConstraints

from pipeline.contracts.messages import Record, UserRef, utcnow
from pipeline.contracts.vocabulary import AccountEventKind

Short = Annotated[str, StringConstraints(max_length=512)]


class AccountEvent(Record):
    """One account-level event for one business account (`waba_id`), as Meta reported it."""

    kind: AccountEventKind
    field: Annotated[str, StringConstraints(min_length=1, max_length=64)] = Field(
        description="Meta's webhook `field`, as posted (e.g. message_template_status_update)"
    )
    event: Short | None = Field(
        default=None,
        description="what happened, upper case as Meta writes it: APPROVED, PAUSED, DISABLED, ACCOUNT_RESTRICTION, "
        "RED (a template's new quality), STOP (a user's marketing opt-out), …",
    )
    waba_id: Annotated[str, StringConstraints(max_length=64)] | None = None
    phone_number_id: Annotated[str, StringConstraints(max_length=64)] | None = None
    template_id: Annotated[str, StringConstraints(max_length=64)] | None = None
    template_name: Short | None = None
    template_language: Annotated[str, StringConstraints(max_length=32)] | None = None
    previous: Short | None = Field(default=None, description="the value before: previous quality score or category")
    reason: Short | None = None
    category: Short | None = Field(default=None, description="template category, or the preference's category")
    user_wa_id: UserRef | None = Field(default=None, description="user_preferences: whose preference changed")
    user_id: UserRef | None = Field(default=None, description="user_preferences: the user's BSUID, when known")
    timestamp: datetime | None = Field(default=None, description="when it happened, where Meta says")
    value: dict[str, Any] = Field(default_factory=dict, description="Meta's value object, unchanged")
    received_at: datetime = Field(default_factory=utcnow)
