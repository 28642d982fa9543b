"""Answer every customer message: mark it read (with "typing…"), then reply to it, through the producer API.

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 PIPELINE_API_URL=http://127.0.0.1:8080 PIPELINE_API_KEY=dev-key \\
        .venv/bin/python examples/inbound_autoreply.py

A FastStream consumer of `inbound.messages` (docs/inbound.md). It needs only FastStream, httpx and
pydantic, not the pipeline's code: the record shape is the documented JSON (docs/schemas/
inbound-message.schema.json). Each message is acknowledged after both API calls were accepted, so a
crash replays it; the Idempotency-Key of each call is derived from the message's wamid, so a replay
marks and replies once. Also read: `KAFKA_TOPIC_PREFIX` (as the pipeline reads it), `AUTOREPLY_GROUP_ID`,
`AUTOREPLY_START` (`latest` or `earliest`).
"""

from __future__ import annotations

import asyncio
import os
from typing import Literal

import httpx
from faststream import AckPolicy, FastStream
from faststream.kafka import KafkaBroker
from pydantic import BaseModel, ConfigDict, Field

BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
TOPIC = os.environ.get("KAFKA_TOPIC_PREFIX", "") + "inbound.messages"
API_URL = os.environ.get("PIPELINE_API_URL", "http://127.0.0.1:8080")
API_KEY = os.environ.get("PIPELINE_API_KEY", "dev-key")
GROUP = os.environ.get("AUTOREPLY_GROUP_ID", "example-autoreply")
# Where a new group starts: `latest` (default) answers only messages that arrive from now on.
START: Literal["latest", "earliest"] = "earliest" if os.environ.get("AUTOREPLY_START") == "earliest" else "latest"


class Inbound(BaseModel):
    """The fields of an `inbound.messages` record this example uses (the record has more)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    wamid: str
    sender: str = Field(alias="from")  # the customer's wa_id: digits, no +
    phone_number_id: str | None = None  # the business number they wrote to
    type: str
    text: str | None = None
    context_wamid: str | None = None  # set when the customer replied to one of our messages


def reply_text(message: Inbound) -> str:
    if message.context_wamid:
        return "Thanks for your answer, we are on it."
    if message.text:
        return f"Thanks, we got your message: “{message.text[:200]}”. An agent will answer shortly."
    return f"Thanks for the {message.type}. An agent will answer shortly."


broker = KafkaBroker(BOOTSTRAP)
app = FastStream(broker)
api = httpx.AsyncClient(base_url=API_URL, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30.0)


async def send(body: dict[str, object], idempotency_key: str) -> str:
    """POST /v1/messages, retrying what is safe to retry (same key: never sent twice)."""
    for attempt in range(1, 6):
        try:
            response = await api.post("/v1/messages", json=body, headers={"Idempotency-Key": idempotency_key})
        except httpx.TransportError:
            await asyncio.sleep(attempt)
            continue
        if response.status_code in (409, 503):
            await asyncio.sleep(float(response.headers.get("retry-after", attempt)))
            continue
        response.raise_for_status()  # 4xx: a bug in this example's request; the record is replayed
        request_id: str = response.json()["request_id"]
        return request_id
    raise RuntimeError("the API did not accept the request after 5 attempts")


@broker.subscriber(TOPIC, group_id=GROUP, auto_offset_reset=START, ack_policy=AckPolicy.NACK_ON_ERROR)
async def on_inbound(message: Inbound) -> None:
    customer = f"+{message.sender}"
    number = {"phone_number_id": message.phone_number_id} if message.phone_number_id else {}
    # Blue ticks and "typing…" first: the customer sees we are on it while the reply is written.
    await send({"to": customer, **number,
                "message": {"type": "read", "message_id": message.wamid, "typing_indicator": True}},
               idempotency_key=f"read-{message.wamid}")
    request_id = await send({"to": customer, **number, "reply_to": message.wamid,
                             "message": {"type": "text", "text": {"body": reply_text(message)}}},
                            idempotency_key=f"autoreply-{message.wamid}")
    print(f"replied to {message.wamid} from ...{message.sender[-4:]} as {request_id}", flush=True)


@app.after_shutdown
async def close_api() -> None:
    await api.aclose()


if __name__ == "__main__":
    asyncio.run(app.run())
