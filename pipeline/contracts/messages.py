"""The records that travel on the pipeline's Kafka topics.

    req = SendRequest.model_validate_json(raw)      # a ValidationError names field and rule
    req.to                                         # "+16505551234" (normalised E.164), or None
    req.recipient_user_id                          # "US.13491208655302741918" when addressed by BSUID
    req.recipient_key                              # whichever of the two names the recipient

Every record is JSON (UTF-8) so producers in any language can write and read them; the JSON Schemas
are exported to docs/schemas/ by `pipeline schemas export`.
"""

from __future__ import annotations

import base64
import os
import re
import time
from datetime import UTC, datetime
from typing import Annotated, Any, Self

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from pipeline.contracts.bodies import MessageBody
from pipeline.contracts.vocabulary import DeadLetterReason, DeliveryStatus, ErrorClass, MessageOutcome, Stage

# --- identifiers --------------------------------------------------------------------------------

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_request_id() -> str:
    """`req_` + a ULID: sortable by creation time, unique without coordination.

    Written by hand because it is ten lines and the ULID packages add nothing we use.
    """
    value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "req_" + "".join(reversed(chars))


_FORMATTING = re.compile(r"[\s().\-]")
# [0-9], not \d: \d also matches Arabic-Indic, Devanagari and every other script's digits, which
# Meta does not read as a phone number (such a number was once accepted and "sent").
_E164 = re.compile(r"^\+[1-9][0-9]{7,14}$")


def _normalise_phone(value: Any) -> Any:
    """Accept what people type (`+1 (650) 555-1234`, `16505551234`) and keep E.164 (`+16505551234`)."""
    if not isinstance(value, str):
        return value
    digits = _FORMATTING.sub("", value)
    if digits.startswith("00"):
        digits = digits[2:]
    return digits if digits.startswith("+") else f"+{digits}"


def _check_e164(value: str) -> str:
    if not _E164.match(value):
        raise ValueError("must be an E.164 phone number: country code and number, 8 to 15 digits, no leading 0")
    return value


PhoneNumber = Annotated[str, BeforeValidator(_normalise_phone), AfterValidator(_check_e164)]
"""E.164 with a leading `+`; Meta's wire format drops the `+` (the client does that)."""

# Meta's format: the user's ISO 3166 alpha-2 country, a period, up to 128 letters and digits; a parent
# BSUID (linked portfolios) has `ENT.` after the country. Kept exactly as Meta wrote it (no normalising).
_BSUID = re.compile(r"^[A-Z]{2}\.(?:ENT\.)?[0-9A-Za-z]{1,128}$")


def _check_bsuid(value: str) -> str:
    if not _BSUID.match(value):
        raise ValueError(
            "must be a business-scoped user id (BSUID): two capital letters (the country), a period, then 1 to "
            "128 letters and digits, e.g. US.13491208655302741918 (a parent BSUID: US.ENT.11815799212886844830)"
        )
    return value


Bsuid = Annotated[
    str,
    AfterValidator(_check_bsuid),
    WithJsonSchema({"type": "string", "pattern": _BSUID.pattern, "examples": ["US.13491208655302741918"]}),
]
"""A business-scoped user id (or parent BSUID), as Meta names a user who may hide their number."""

RequestId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
# ASCII digits only, as for phone numbers (the regex engine's \d is Unicode-aware).
PhoneNumberId = Annotated[str, StringConstraints(pattern=r"^[0-9]{5,20}$")]
Wamid = Annotated[str, StringConstraints(min_length=1, max_length=256)]
UserRef = Annotated[str, StringConstraints(min_length=1, max_length=128)]
"""A WhatsApp user as Meta names them: a wa_id (digits), a BSUID (`US.13491208655302741918`), a group id."""


def utcnow() -> datetime:
    return datetime.now(UTC)


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- send request -------------------------------------------------------------------------------


def _bounded_metadata(value: dict[str, str]) -> dict[str, str]:
    if len(value) > 20:
        raise ValueError(f"at most 20 metadata entries; got {len(value)}")
    for key, item in value.items():
        if not 1 <= len(key) <= 64:
            raise ValueError(f"metadata key {key[:64]!r} must be 1 to 64 characters")
        if len(item) > 512:
            raise ValueError(f"metadata value for {key!r} must be at most 512 characters")
    return value


class SendRequest(Record):
    """A business's request to send one message: the value on `send.requests`."""

    # The schema can say "at least one recipient" (a null counts as absent, so not "exactly one").
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={"anyOf": [{"required": ["to"]}, {"required": ["recipient_user_id"]}]},
    )

    request_id: RequestId = Field(default_factory=new_request_id)
    phone_number_id: PhoneNumberId | None = Field(
        default=None, description="business number to send from; WHATSAPP_PHONE_NUMBER_ID when omitted"
    )
    # Declared before `to` so that `to`'s check below sees it: the recipient is one of the two.
    recipient_user_id: Bsuid | None = Field(
        default=None, description="the recipient's BSUID (or parent BSUID), instead of `to`; Meta's `recipient`"
    )
    to: PhoneNumber | None = Field(
        default=None, validate_default=True, description="the recipient's phone number; or give `recipient_user_id`"
    )
    message: MessageBody
    reply_to: Wamid | None = Field(default=None, description="wamid of the message this one answers")
    # AwareDatetime rather than a model validator: a naive time is then reported under its own field.
    expires_at: AwareDatetime | None = Field(default=None, description="not sent after this instant (needs a zone)")
    idempotency_key: Annotated[str, StringConstraints(min_length=1, max_length=255)] | None = None
    metadata: Annotated[dict[str, str], AfterValidator(_bounded_metadata)] = Field(default_factory=dict)
    accepted_at: AwareDatetime | None = Field(default=None, description="set by whoever accepted it first")

    @field_validator("to")
    @classmethod
    def _one_recipient(cls, to: str | None, info: ValidationInfo) -> str | None:
        """Exactly one of `to` or `recipient_user_id`. Meta takes both (and uses `to`), but a request
        naming two people is a producer's mistake we would rather report than guess at."""
        if "recipient_user_id" not in info.data:
            return to  # the BSUID was given and is invalid: its own error says so
        if to is None and info.data["recipient_user_id"] is None:
            raise PydanticCustomError(  # `missing`, as before BSUIDs: the same rule for the same mistake
                "missing",
                "a message needs its recipient: a phone number in `to` or a BSUID in `recipient_user_id`",
            )
        if to is not None and info.data["recipient_user_id"] is not None:
            raise PydanticCustomError(
                "recipient_ambiguous",
                "give the recipient once: a phone number in `to` or a BSUID in `recipient_user_id`, not both",
            )
        return to

    @property
    def message_type(self) -> str:
        return self.message.type

    @property
    def recipient_key(self) -> str:
        """Who the message goes to, as the request names them (the phone number or the BSUID): the
        sender's per-recipient order key. One person named both ways gets two keys, so two orders."""
        return self.to or self.recipient_user_id or ""


# --- outcomes -----------------------------------------------------------------------------------


class ErrorInfo(Record):
    """A Graph API error, from a synchronous response or a failed-status webhook."""

    code: int | None = None
    error_class: ErrorClass = ErrorClass.OTHER
    title: str | None = None
    message: str | None = None
    details: str | None = None
    fbtrace_id: str | None = None
    http_status: int | None = None


class SendResult(Record):
    """The terminal outcome of one send request: the value on `send.results`."""

    request_id: RequestId
    phone_number_id: PhoneNumberId
    to: PhoneNumber | None = Field(default=None, description="the request's phone number, if it named one")
    recipient_user_id: Bsuid | None = Field(default=None, description="the request's BSUID, if it named one")
    outcome: MessageOutcome
    wamid: Wamid | None = None
    error: ErrorInfo | None = None
    attempts: int = Field(ge=0)
    ambiguous_attempts: int = Field(default=0, ge=0, description="retries after a timeout that may have sent")
    accepted_at: datetime | None = None
    completed_at: datetime = Field(default_factory=utcnow)
    traceparent: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)


class DeadLetter(Record):
    """A record a stage could not process, with everything needed to replay it."""

    stage: Stage
    reason: DeadLetterReason
    error: Annotated[str, StringConstraints(max_length=4096)]
    topic: str
    partition: int
    offset: int
    key_b64: str | None = None
    value_b64: str
    value_size: int | None = None  # bytes of the original value; value_b64 may hold only a prefix
    value_sha256: str | None = None  # hex digest of the whole original value
    value_truncated: bool = False
    headers: dict[str, str] = Field(default_factory=dict)
    request_id: str | None = None
    failed_at: datetime = Field(default_factory=utcnow)

    @staticmethod
    def encode(raw: bytes | None) -> str | None:
        return None if raw is None else base64.b64encode(raw).decode("ascii")

    def raw_value(self) -> bytes:
        return base64.b64decode(self.value_b64)


# --- webhooks -----------------------------------------------------------------------------------


class Conversation(Record):
    model_config = ConfigDict(extra="allow", frozen=True)

    id: str | None = None
    origin_type: str | None = None
    expiration_timestamp: datetime | None = None


class Pricing(Record):
    model_config = ConfigDict(extra="allow", frozen=True)

    billable: bool | None = None
    pricing_model: str | None = None
    category: str | None = None
    type: str | None = None


class StatusEvent(Record):
    """One status of one message as Meta reported it: the value on `status.updates`/`status.events`."""

    wamid: Wamid
    status: DeliveryStatus
    timestamp: datetime
    recipient_id: UserRef | None = Field(default=None, description="wa_id (or group id) the message went to")
    recipient_user_id: UserRef | None = Field(
        default=None, description="the recipient's business-scoped user id (BSUID), when Meta names one"
    )
    recipient_parent_user_id: UserRef | None = Field(default=None, description="parent BSUID (linked portfolios)")
    recipient_type: Annotated[str, StringConstraints(max_length=32)] | None = Field(
        default=None, description="`group` for a group message; absent for one user"
    )
    recipient_participant_id: UserRef | None = Field(default=None, description="group messages: the member")
    recipient_participant_user_id: UserRef | None = Field(default=None, description="group messages: member's BSUID")
    phone_number_id: Annotated[str, StringConstraints(max_length=64)] | None = None
    request_id: Annotated[str, StringConstraints(max_length=512)] | None = Field(
        default=None, description="from biz_opaque_callback_data"
    )
    traceparent: str | None = Field(default=None, description="the original send's trace, from callback data")
    accepted_at: datetime | None = Field(default=None, description="when the API accepted the send, from callback data")
    conversation: Conversation | None = None
    pricing: Pricing | None = None
    errors: list[ErrorInfo] = Field(default_factory=list)
    received_at: datetime = Field(default_factory=utcnow)


class InboundMessage(Record):
    """A message a user sent to a business number: the value on `inbound.messages`."""

    wamid: Wamid
    from_: Annotated[
        UserRef | None, Field(alias="from", description="the user's wa_id; absent for BSUID-only users")
    ] = None
    user_id: UserRef | None = Field(default=None, description="the user's business-scoped user id (BSUID)")
    parent_user_id: UserRef | None = Field(default=None, description="the user's parent BSUID (linked portfolios)")
    username: Annotated[str, StringConstraints(max_length=128)] | None = None
    phone_number_id: Annotated[str, StringConstraints(max_length=64)] | None = None
    timestamp: datetime
    type: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    profile_name: str | None = None
    context_wamid: str | None = Field(
        default=None, description="the message this replies to, reacts to, edits or revokes"
    )
    text: str | None = None
    reply_id: str | None = Field(
        default=None,
        description="button/list reply id, quick-reply payload, flow token of a flow reply, call-permission answer",
    )
    reply_title: str | None = None
    new_wa_id: UserRef | None = Field(default=None, description="system messages: the user's new number")
    raw: dict[str, Any] = Field(default_factory=dict, description="Meta's message object, unchanged")
    received_at: datetime = Field(default_factory=utcnow)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _names_the_user(self) -> Self:
        if self.from_ is None and self.user_id is None:
            raise ValueError("from: a message needs the user's wa_id (`from`) or BSUID (`user_id`)")
        return self

    @property
    def user_key(self) -> str:
        """The Kafka key on `inbound.messages`: the wa_id, or the BSUID when Meta sent no number."""
        return self.from_ or self.user_id or ""


# --- correlation through Meta -------------------------------------------------------------------


class CallbackData(Record):
    """What the sender puts in `biz_opaque_callback_data` (Meta echoes it on every status webhook).

    Encoded as `<request_id>|<traceparent>|<accepted_at as epoch ms>`, trailing empty fields left
    out; a bare request id also decodes, so statuses of messages sent by other tools still join.
    """

    request_id: str
    traceparent: str | None = None
    accepted_at: datetime | None = Field(default=None, description="when the API accepted the request")

    def encode(self) -> str:
        accepted = "" if self.accepted_at is None else str(round(self.accepted_at.timestamp() * 1000))
        return "|".join((self.request_id, self.traceparent or "", accepted)).rstrip("|")

    @classmethod
    def decode(cls, raw: str | None) -> CallbackData | None:
        if not raw:
            return None
        request_id, _, rest = raw.partition("|")
        traceparent, _, accepted = rest.partition("|")
        accepted_at = None
        # Anything else is another tool's, not an error; 13 digits reach the year 2286.
        if accepted.isascii() and accepted.isdigit() and len(accepted) <= 13:
            accepted_at = datetime.fromtimestamp(int(accepted) / 1000, tz=UTC)
        return cls(request_id=request_id, traceparent=traceparent or None, accepted_at=accepted_at)
