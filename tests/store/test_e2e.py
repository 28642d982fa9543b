"""The store in the whole pipeline, as users run it: API → sender → sandbox → webhooks → ingest → store.

Read through the API's own address (it forwards the read routes to the store), so the one-base-URL
promise is tested too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipeline.local.stack import LocalStack
from pipeline.store.settings import sqlite_url
from pipeline.topics import create_topics
from tests.e2e.conftest import stack_settings

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
HEADERS = {"Authorization": "Bearer dev-key"}
CONTACT = "16505550188"


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    settings = stack_settings(kafka_bootstrap, sqlite_url(tmp_path_factory.mktemp("store") / "store.db"))
    asyncio.run(create_topics(settings.kafka))
    log_dir: Path = tmp_path_factory.mktemp("store-stack-logs")
    stack = LocalStack(settings, use_sandbox=True, log_dir=log_dir)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        for log in sorted(log_dir.glob("*.log")):
            print(f"--- {log.name} (last lines)\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:]))


async def poll(check: Any, timeout: float = 90.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    last: Exception | None = None
    while asyncio.get_running_loop().time() < deadline:
        try:
            return await check()
        except (AssertionError, KeyError, httpx.HTTPError) as exc:
            last = exc
        await asyncio.sleep(0.5)
    raise AssertionError(f"not true in {timeout} s: {last!r}")


async def test_a_message_reaches_read_and_a_reply_counts_in_the_response_rate(stack: LocalStack) -> None:
    async with httpx.AsyncClient(base_url=stack.urls["api"], headers=HEADERS, timeout=30) as api:
        sent = await api.post("/v1/messages", json={
            "to": f"+{CONTACT}", "message": {"type": "text", "text": {"body": "Order 4711 is ready for pickup"}}})
        assert sent.status_code == 202, sent.text
        request_id = sent.json()["request_id"]

        async def read() -> dict[str, Any]:
            response = await api.get(f"/v1/messages/{request_id}")
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            assert body["status"] == "read"
            return body

        message = await poll(read)
        assert message["outcome"] == "sent"
        assert [s["status"] for s in message["timeline"]] == ["accepted", "sent", "delivered", "read"]
        assert message["text"] == "Order 4711 is ready for pickup"

        async with httpx.AsyncClient(base_url=stack.urls["sandbox"], timeout=30) as sandbox:
            reply = await sandbox.post("/_sandbox/inbound", json={
                "from": CONTACT, "text": "Thanks, on my way", "context_message_id": message["wamid"],
                "phone_number_id": message["phone_number_id"]})
            assert reply.status_code == 200, reply.text

        async def answered() -> dict[str, Any]:
            conversation = (await api.get(f"/v1/contacts/{CONTACT}/messages")).json()
            # As a set: Meta's inbound timestamps are whole seconds, so a reply within the second of
            # the send (the sandbox is that fast) may list before it.
            assert sorted(m["direction"] for m in conversation["messages"]) == ["inbound", "outbound"]
            return conversation

        conversation = await poll(answered)
        [inbound] = [m for m in conversation["messages"] if m["direction"] == "inbound"]
        assert inbound["reply_to"] == message["wamid"]
        assert inbound["text"] == "Thanks, on my way"
        analytics = (await api.get(f"/v1/contacts/{CONTACT}/analytics")).json()
        assert analytics["response"]["answered"] == 1
        assert analytics["response"]["rate"] == 1.0
        assert analytics["counts"]["read"] == 1
        found = (await api.get("/v1/messages", params={"q": "4711"})).json()
        assert [m["request_id"] for m in found["messages"]] == [request_id]
        assert (await api.get("/v1/messages/req_unknown")).status_code == 404
