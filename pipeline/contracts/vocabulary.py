"""One vocabulary of enums shared by every stage, metric label and message on the wire.

Metric labels take these values verbatim, so adding a member is a public change; renaming one is a
breaking change for dashboards and alerts.
"""

from __future__ import annotations

from enum import StrEnum


class Stage(StrEnum):
    API = "api"
    SENDER = "sender"
    INGEST = "ingest"
    SANDBOX = "sandbox"
    STORE = "store"


class MessageOutcome(StrEnum):
    """Terminal outcome of one send request; exactly one per request."""

    SENT = "sent"
    FAILED = "failed"
    DEAD_LETTERED = "dead_lettered"
    EXPIRED = "expired"


class AttemptOutcome(StrEnum):
    """Outcome of one Graph API call."""

    SENT = "sent"
    RETRY = "retry"
    FAILED = "failed"


class ErrorClass(StrEnum):
    """How the pipeline treats a Graph API error code (see docs/whatsapp.md for the table)."""

    TRANSIENT = "transient"
    THROTTLED = "throttled"
    PAIR_LIMITED = "pair_limited"
    AUTH = "auth"
    PERMISSION = "permission"
    POLICY = "policy"
    INVALID = "invalid"
    UNDELIVERABLE = "undeliverable"
    WINDOW = "window"
    TEMPLATE = "template"
    MEDIA = "media"
    OTHER = "other"
    NONE = "none"


class DeliveryStatus(StrEnum):
    """Status Meta reports in webhooks. `rank` orders the forward-only state machine."""

    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    PLAYED = "played"
    FAILED = "failed"

    @property
    def rank(self) -> int:
        return _STATUS_RANK[self]


_STATUS_RANK = {
    DeliveryStatus.SENT: 1,
    DeliveryStatus.DELIVERED: 2,
    DeliveryStatus.READ: 3,
    DeliveryStatus.PLAYED: 4,
    DeliveryStatus.FAILED: 5,
}


class ApiOutcome(StrEnum):
    ACCEPTED = "accepted"
    INVALID = "invalid"
    UNAUTHORIZED = "unauthorized"
    DUPLICATE = "duplicate"
    UNAVAILABLE = "unavailable"


class WebhookOutcome(StrEnum):
    ACCEPTED = "accepted"
    BAD_SIGNATURE = "bad_signature"
    MALFORMED = "malformed"
    VERIFIED = "verified"
    VERIFY_FAILED = "verify_failed"
    UNAVAILABLE = "unavailable"  # answered 503: Kafka did not take it in time; Meta retries later


class DeadLetterReason(StrEnum):
    """Why a record could not be processed. Bounded: it is a metric label."""

    INVALID_JSON = "invalid_json"
    SCHEMA_INVALID = "schema_invalid"
    PAYLOAD_REJECTED = "payload_rejected"  # Meta said our payload is wrong (100, 131008, …)
    MALFORMED_WEBHOOK = "malformed_webhook"
    UNEXPECTED_ERROR = "unexpected_error"


class CircuitState(StrEnum):
    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"

    @property
    def gauge_value(self) -> int:
        return {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2}[self]
