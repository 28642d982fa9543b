"""Message contracts shared by every stage: the only shapes that cross a Kafka topic.

    from pipeline.contracts import SendRequest, MessageOutcome
"""

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
from pipeline.contracts.sanitation import ContentPolicy, matching_form
from pipeline.contracts.vocabulary import (
    ApiOutcome,
    AttemptOutcome,
    CircuitState,
    DeadLetterReason,
    DeliveryStatus,
    ErrorClass,
    MessageOutcome,
    Stage,
    WebhookOutcome,
)

__all__ = [
    "ApiOutcome",
    "AttemptOutcome",
    "AudioMessage",
    "CallbackData",
    "CircuitState",
    "ContentPolicy",
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
    "describe",
    "field_errors",
    "matching_form",
    "new_request_id",
    "utcnow",
]
