"""Message contracts shared by every stage: the only shapes that cross a Kafka topic.

    from pipeline.contracts import SendRequest, MessageOutcome
"""

from pipeline.contracts.account import AccountEvent
from pipeline.contracts.bodies import (
    AudioMessage,
    DocumentMessage,
    ImageMessage,
    InteractiveMessage,
    LocationMessage,
    MessageBody,
    ReactionMessage,
    StickerMessage,
    TemplateMessage,
    TextMessage,
    VideoMessage,
)
from pipeline.contracts.errors import FieldError, describe, field_errors
from pipeline.contracts.messages import (
    CallbackData,
    DeadLetter,
    ErrorInfo,
    InboundMessage,
    PhoneNumber,
    SendRequest,
    SendResult,
    StatusEvent,
    new_request_id,
    utcnow,
)
from pipeline.contracts.vocabulary import (
    AccountEventKind,
    ApiOutcome,
    AttemptOutcome,
    CircuitState,
    DeadLetterReason,
    DeliveryStatus,
    ErrorClass,
    MessageOutcome,
    Stage,
    WebhookOutcome,
    WebhookSkipReason,
)

__all__ = [
    "AccountEvent",
    "AccountEventKind",
    "ApiOutcome",
    "AttemptOutcome",
    "AudioMessage",
    "CallbackData",
    "CircuitState",
    "DeadLetter",
    "DeadLetterReason",
    "DeliveryStatus",
    "DocumentMessage",
    "ErrorClass",
    "ErrorInfo",
    "FieldError",
    "ImageMessage",
    "InboundMessage",
    "InteractiveMessage",
    "LocationMessage",
    "MessageBody",
    "MessageOutcome",
    "PhoneNumber",
    "ReactionMessage",
    "SendRequest",
    "SendResult",
    "Stage",
    "StatusEvent",
    "StickerMessage",
    "TemplateMessage",
    "TextMessage",
    "VideoMessage",
    "WebhookOutcome",
    "WebhookSkipReason",
    "describe",
    "field_errors",
    "new_request_id",
    "utcnow",
]
