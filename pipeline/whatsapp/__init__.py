"""Async client for the WhatsApp Cloud API (Meta's Graph API), and its error vocabulary.

    from pipeline.whatsapp import WhatsAppClient, GraphApiError
    async with WhatsAppClient(settings.whatsapp) as client:
        sent = await client.send_message(request, phone_number_id=pnid, callback_data=cb)

docs/whatsapp.md has the error-code table, ambiguity semantics and the transport measurement.
"""

from pipeline.whatsapp.client import MessageSender, SentMessage, WhatsAppClient
from pipeline.whatsapp.errors import KNOWN_ERROR_CODES, GraphApiError, classify
from pipeline.whatsapp.payloads import message_payload

__all__ = [
    "KNOWN_ERROR_CODES",
    "GraphApiError",
    "MessageSender",
    "SentMessage",
    "WhatsAppClient",
    "classify",
    "message_payload",
]
