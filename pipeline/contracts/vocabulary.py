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
    NOTIFY = "notify"


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
    TOO_DEEP = "too_deep"  # nested past the parse bound: refused before any recursive walk
    TOO_LARGE = "too_large"  # a field or record over its bound: it would not fit its topic
    UNEXPECTED_ERROR = "unexpected_error"
    CALLBACK_UNDELIVERABLE = "callback_undeliverable"  # NOTIFY_MAX_ATTEMPTS or NOTIFY_MAX_AGE_SECONDS reached
    CALLBACK_GONE = "callback_gone"  # the endpoint answered 410 Gone: its subscription is disabled
    CALLBACK_BACKLOG_FULL = "callback_backlog_full"  # one endpoint's queue reached NOTIFY_ENDPOINT_QUEUE_LIMIT


class AccountEventKind(StrEnum):
    """Which of Meta's account-level webhook fields an `AccountEvent` came from (a metric label)."""

    ACCOUNT = "account"  # account_update: restrictions, violations, bans, partner changes
    ACCOUNT_ALERT = "account_alert"  # account_alerts
    ACCOUNT_REVIEW = "account_review"  # account_review_update
    BUSINESS_CAPABILITY = "business_capability"  # business_capability_update: messaging limits
    PHONE_NUMBER_NAME = "phone_number_name"  # phone_number_name_update: display name decisions
    PHONE_NUMBER_QUALITY = "phone_number_quality"  # phone_number_quality_update: quality and tier
    SECURITY = "security"  # security: PIN and two-step changes
    TEMPLATE_STATUS = "template_status"  # message_template_status_update: approved, paused, disabled, …
    TEMPLATE_QUALITY = "template_quality"  # message_template_quality_update: GREEN, YELLOW, RED
    TEMPLATE_CATEGORY = "template_category"  # template_category_update
    TEMPLATE_COMPONENTS = "template_components"  # message_template_components_update
    USER_PREFERENCE = "user_preference"  # user_preferences: a user stopped or resumed marketing


class WebhookSkipReason(StrEnum):
    """Why a part of a webhook has no record of its own (it stays on `webhooks.raw`). A metric label."""

    ECHO = "echo"  # smb_message_echoes: the business's own sends from the WhatsApp Business app
    APP_SYNC = "app_sync"  # smb_app_state_sync, history: the Business app's contacts and chat history
    CALLS = "calls"  # calls: the pipeline places and tracks no calls
    UNKNOWN_FIELD = "unknown_field"  # a `field` Meta added that this version does not know


class CircuitState(StrEnum):
    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"

    @property
    def gauge_value(self) -> int:
        return {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2}[self]


class CircuitReason(StrEnum):
    """Why a number's circuit changed state (docs/sender.md, "Circuit breaker"). Bounded: a metric label."""

    SERVICE_FAILURES = "service_failures"  # consecutive failures Meta owns (no answer, 5xx, codes 1/2/…)
    FAILURE_RATIO = "failure_ratio"  # many distinct recipients failing in the window: verify with a probe now
    BLOCKED = "blocked"  # auth or policy error
    PROBE_FAILED = "probe_failed"  # the health probe failed: still down
    TRIAL_FAILED = "trial_failed"  # the first message after a good probe failed the way an outage does
    RESET_ELAPSED = "reset_elapsed"  # open long enough: probe
    PROBE_SUCCEEDED = "probe_succeeded"  # closed (on trial)


class CallbackEventType(StrEnum):
    """The `type` of a callback the notify stage POSTs (docs/callbacks.md); also a subscription filter."""

    SEND_RESULT = "send.result"
    STATUS_SENT = "status.sent"
    STATUS_DELIVERED = "status.delivered"
    STATUS_READ = "status.read"
    STATUS_PLAYED = "status.played"
    STATUS_FAILED = "status.failed"
    INBOUND_MESSAGE = "inbound.message"


class CallbackOutcome(StrEnum):
    """How one callback event ended for one endpoint. Bounded: it is a metric label."""

    DELIVERED = "delivered"
    DEAD_LETTERED = "dead_lettered"


class CallbackAttemptResult(StrEnum):
    """What one POST to an endpoint got back. Bounded: it is a metric label."""

    SUCCESS = "success"
    CLIENT_ERROR = "client_error"  # 4xx other than 408, 410, 429
    SERVER_ERROR = "server_error"  # 5xx
    THROTTLED = "throttled"  # 429 (or 408)
    GONE = "gone"  # 410
    REDIRECT = "redirect"  # 3xx: never followed
    TIMEOUT = "timeout"
    CONNECT_ERROR = "connect_error"  # refused, reset, DNS failure, or an address the URL rules refuse
