"""The AsyncAPI document of the pipeline's topics (what producers write, what consumers read), by FastStream.

    document(settings.kafka)    # dict, served at /asyncapi.json (and /asyncapi.yaml, /asyncapi as HTML)
    # python -m pipeline.api.asyncapi [--check]   writes docs/asyncapi.yaml (a test keeps it current)

FastStream derives channels and payload schemas from publisher declarations on a broker that is never
connected; the record headers and key, which FastStream does not describe, are added afterwards.
"""

from __future__ import annotations

import json
import sys
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from faststream.kafka import KafkaBroker
from faststream.specification import AsyncAPI
from faststream.specification.asyncapi.site import get_asyncapi_html

from pipeline.api.idempotency import IdempotencyRecord
from pipeline.config import KafkaSettings
from pipeline.contracts import AccountEvent, DeadLetter, InboundMessage, SendRequest, SendResult, StatusEvent
from pipeline.generated import write_or_check
from pipeline.topics import TopicCatalog

DOCS_FILE = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.yaml"

_HEADERS = {
    "type": "object",
    "properties": {
        "traceparent": {
            "type": "string",
            "description": "W3C trace context; the sender's spans join this trace",
            "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
        },
        "content-type": {"type": "string", "const": "application/json"},
        "request-id": {"type": "string", "description": "the value's request_id, readable without parsing it"},
    },
}

_TOPICS = {
    "send_requests": (
        SendRequest,
        "One message to send. Written by the producer API after validation, or directly by any service. Key: "
        "`phone_number_id` (UTF-8), so one sender owns each business number; a record without it is sent from "
        "WHATSAPP_PHONE_NUMBER_ID.",
        "phone_number_id of the business number (UTF-8)",
    ),
    "api_idempotency": (
        IdempotencyRecord,
        "The producer API's idempotency claims and answers, read back by every API replica (docs/api.md).",
        "`<phone_number_id>:<idempotency key>`",
    ),
    "account_events": (
        AccountEvent,
        "What Meta says about the account, its templates and numbers, and users' marketing opt-outs: one record per "
        "event of the webhook fields account_update, message_template_status_update, "
        "message_template_quality_update, template_category_update, message_template_components_update, "
        "phone_number_quality_update, phone_number_name_update, business_capability_update, account_alerts, "
        "account_review_update, security and user_preferences (one per user). Written by the ingest; read it "
        "to pause a template's campaigns or to suppress an opted-out user (docs/ingest.md).",
        "waba_id of the business account (UTF-8)",
    ),
    # What the pipeline writes for others to read (the notify stage POSTs them as callbacks too).
    "send_results": (
        SendResult,
        "Exactly one terminal outcome per send request (sent, failed, dead_lettered, expired), written by the "
        "sender in Kafka transactions: read with isolation.level=read_committed.",
        "phone_number_id of the business number (UTF-8)",
    ),
    "status_events": (
        StatusEvent,
        "Meta's delivery statuses (sent, delivered, read, played, failed), deduplicated and forward-only per "
        "wamid, with the request id Meta echoed back.",
        "wamid of the message (UTF-8)",
    ),
    "inbound_messages": (
        InboundMessage,
        "Messages customers wrote to a business number; `context_wamid` is the business message a reply "
        "answers (docs/inbound.md).",
        "the customer's wa_id (UTF-8): one customer's messages stay in order",
    ),
    "dead_letters": (
        DeadLetter,
        "Records a stage could not process or deliver, with the stage, reason and original record "
        "(replayable to its topic).",
        "the original record's key",
    ),
}


@cache
def _document(bootstrap_servers: str, prefix: str) -> str:
    catalog = TopicCatalog(KafkaSettings(bootstrap_servers=bootstrap_servers, topic_prefix=prefix))
    broker = KafkaBroker(bootstrap_servers, description="the pipeline's Kafka cluster")
    for attribute, (schema, description, _) in _TOPICS.items():
        topic = getattr(catalog, attribute)
        broker.publisher(topic, schema=schema, title=topic, description=description)
    spec = AsyncAPI(
        broker,
        title="WhatsApp delivery pipeline — Kafka topics",
        version="1.0.0",
        description="Publish a `SendRequest` to `send.requests` from any language (docs/publishing.md); read "
        "outcomes, statuses and customer replies from the output topics (docs/inbound.md, docs/callbacks.md), "
        "and `account.events` for what Meta says about the account.",
    ).to_specification()
    document: dict[str, Any] = spec.to_jsonable()
    for attribute, (_, _, key) in _TOPICS.items():
        message = document["components"]["messages"][f"{getattr(catalog, attribute)}:Message"]
        if attribute == "send_requests":
            message["correlationId"] = {"location": "$message.header#/request-id"}
            message["headers"] = _HEADERS
        else:
            message.pop("correlationId", None)  # FastStream's own header, which we do not write
        message["bindings"] = {"kafka": {"key": {"type": "string", "description": key}, "bindingVersion": "0.4.0"}}
    # FastStream orders channels by its registry's hashing, which varies between processes: sort, so
    # that the committed file only changes when the content does.
    for section in (document["channels"], document["operations"], *document["components"].values()):
        ordered = dict(sorted(section.items()))
        section.clear()
        section.update(ordered)
    return json.dumps(document)


def document(kafka: KafkaSettings) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(_document(kafka.bootstrap_servers, kafka.topic_prefix))
    return result


def yaml_text(kafka: KafkaSettings) -> str:
    return yaml.safe_dump(document(kafka), sort_keys=False, allow_unicode=True)


class _Rendered:
    """What FastStream's HTML page needs from a specification (after our additions)."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.title = doc["info"]["title"]
        self._doc = doc

    def to_json(self) -> str:
        return json.dumps(self._doc)

    def to_jsonable(self) -> Any:
        return self._doc

    def to_yaml(self) -> str:
        return yaml.safe_dump(self._doc, sort_keys=False, allow_unicode=True)


def html(kafka: KafkaSettings) -> str:
    page: str = get_asyncapi_html(_Rendered(document(kafka)), try_it_out_path=None)
    return page


def main(argv: list[str] | None = None) -> int:
    return write_or_check(
        "python -m pipeline.api.asyncapi", __doc__, DOCS_FILE,
        lambda: yaml_text(KafkaSettings(bootstrap_servers="127.0.0.1:9092", topic_prefix="")), argv,
    )


if __name__ == "__main__":
    sys.exit(main())
