"""Status and inbound webhooks: Meta's shape (checked against tests/fixtures/), signature, order,
duplicates, batching and retries — received by a real HTTP server."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pipeline.sandbox.testing import SandboxHandle, running_sandbox
from tests.sandbox.conftest import NUMBER, USER, Graph, WebhookReceiver, text_body

# One webhook worker, so posts arrive in the order the sandbox sends them (with several, as at Meta,
# concurrent posts may overtake each other).
FAST = {"sent_after_seconds": 0, "delivered_after_seconds": 0.02, "read_after_seconds": 0.04,
        "failed_after_seconds": 0.01, "webhook_concurrency": 1}


@pytest.fixture
async def hooked(receiver: WebhookReceiver, http: aiohttp.ClientSession) -> AsyncIterator[Graph]:
    """A sandbox posting its webhooks to `receiver`, with statuses tens of milliseconds apart."""
    async with running_sandbox(webhook_url=receiver.url, phone_number_ids=[NUMBER], **FAST) as sandbox:
        yield Graph(sandbox, http)


def shape(value: Any) -> Any:
    """The key structure of a JSON value: dict keys (recursively), list items' shapes, scalar types."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__


def fixture(fixtures_dir: Path, name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((fixtures_dir / name).read_text())
    return loaded


def verifies(sandbox: SandboxHandle, raw: bytes, signature: str | None) -> bool:
    expected = "sha256=" + hmac.new(sandbox.app_secret.encode(), raw, hashlib.sha256).hexdigest()
    return signature is not None and hmac.compare_digest(expected, signature)


def single_status_body(post_json: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    body = json.loads(json.dumps(post_json))
    body["entry"][0]["changes"][0]["value"]["statuses"] = [status]
    return body


async def test_statuses_follow_in_order_signed_and_shaped_like_metas(
    hooked: Graph, receiver: WebhookReceiver, fixtures_dir: Path
) -> None:
    status, answer = await hooked.send(text_body(request_id="req_01JD3Q8Z0M7W4K2B5N6P9R1S3T"))
    assert status == 200
    wamid = answer["messages"][0]["id"]
    statuses = await receiver.wait_statuses(3)
    assert [s["status"] for s in statuses] == ["sent", "delivered", "read"]
    assert all(verifies(hooked.sandbox, post.raw, post.signature) for post in receiver.posts)
    for item in statuses:
        assert item["id"] == wamid
        assert item["recipient_id"] == USER
        assert item["biz_opaque_callback_data"] == "req_01JD3Q8Z0M7W4K2B5N6P9R1S3T"
    assert [int(s["timestamp"]) for s in statuses] == sorted(int(s["timestamp"]) for s in statuses)
    post = receiver.posts[0].json()
    assert post["entry"][0]["changes"][0]["value"]["metadata"] == {
        "display_phone_number": hooked.sandbox.settings.display_phone_number, "phone_number_id": NUMBER}
    for item, name in zip(statuses, ("status-sent.json", "status-delivered.json", "status-read.json"), strict=True):
        expected = fixture(fixtures_dir, name)
        assert shape(single_status_body(post, item)) == shape(expected), name


async def test_a_wrong_secret_does_not_verify(hooked: Graph, receiver: WebhookReceiver) -> None:
    await hooked.send(text_body())
    post = (await receiver.wait_posts(1))[0]
    assert post.signature is not None
    assert post.signature.startswith("sha256=")
    wrong = "sha256=" + hmac.new(b"not-the-secret", post.raw, hashlib.sha256).hexdigest()
    assert not hmac.compare_digest(wrong, post.signature)
    assert not verifies(hooked.sandbox, post.raw + b" ", post.signature)
    legacy = "sha1=" + hmac.new(hooked.sandbox.app_secret.encode(), post.raw, hashlib.sha1).hexdigest()
    assert post.sha1_signature == legacy
    assert post.user_agent == "facebookexternalua"


async def test_template_pricing_is_billable_and_service_replies_are_free(
    hooked: Graph, receiver: WebhookReceiver
) -> None:
    template = {"messaging_product": "whatsapp", "to": USER, "type": "template",
                "template": {"name": "marketing_spring_sale", "language": {"code": "en"}}}
    await hooked.send(template)
    await hooked.send(text_body(to="16505550042"))
    sent = {s["recipient_id"]: s for s in await receiver.wait_statuses(6) if s["status"] == "sent"}
    assert sent[USER]["pricing"] == {"billable": True, "pricing_model": "PMP", "type": "regular",
                                     "category": "marketing"}
    assert sent[USER]["conversation"]["origin"] == {"type": "marketing"}
    assert sent["16505550042"]["pricing"]["billable"] is False


async def test_undeliverable_number_gets_a_failed_status_with_131026(
    hooked: Graph, receiver: WebhookReceiver, fixtures_dir: Path
) -> None:
    status, _ = await hooked.send(text_body(to="16505559999", request_id="req-x"))
    assert status == 200  # Meta accepts; the failure comes later
    [failed] = await receiver.wait_statuses(1)
    assert failed["status"] == "failed"
    assert failed["errors"][0]["code"] == 131026
    assert failed["biz_opaque_callback_data"] == "req-x"
    expected = fixture(fixtures_dir, "status-failed.json")
    assert shape(single_status_body(receiver.posts[0].json(), failed)) == shape(expected)
    await hooked.sandbox.control.wait_webhooks_idle()
    assert len(receiver.statuses()) == 1  # no sent/delivered/read for it


async def test_outside_window_fails_131047_but_templates_go_through(hooked: Graph, receiver: WebhookReceiver) -> None:
    await hooked.send(text_body(to="16505559047"))
    template = {"messaging_product": "whatsapp", "to": "16505559047", "type": "template",
                "template": {"name": "order_update", "language": {"code": "en_US"}}}
    await hooked.send(template)
    statuses = await receiver.wait_statuses(4)
    assert sorted(s["status"] for s in statuses) == ["delivered", "failed", "read", "sent"]
    assert next(s for s in statuses if s["status"] == "failed")["errors"][0]["code"] == 131047


@pytest.mark.parametrize(("to", "expected"), [
    ("16505559201", ["sent", "delivered", "read", "sent", "delivered", "read"]),  # copies 50 ms later
    ("16505559202", ["sent", "read", "delivered"]),
    ("16505559203", ["sent", "read"]),
])
async def test_untidy_delivery_numbers(hooked: Graph, receiver: WebhookReceiver, to: str, expected: list[str]) -> None:
    await hooked.send(text_body(to=to))
    await hooked.sandbox.control.wait_webhooks_idle()
    statuses = receiver.statuses()
    assert [s["status"] for s in statuses] == expected
    if to.endswith("9202"):  # delivered arrives last but keeps its true, earlier timestamp
        by_kind = {s["status"]: int(s["timestamp"]) for s in statuses}
        assert by_kind["delivered"] <= by_kind["read"]


async def test_duplicate_and_reorder_probabilities(hooked: Graph, receiver: WebhookReceiver) -> None:
    await hooked.sandbox.control.configure(duplicate_probability=1.0, reorder_probability=1.0)
    await hooked.send(text_body())
    await hooked.sandbox.control.wait_webhooks_idle()
    kinds = [s["status"] for s in receiver.statuses()]
    assert Counter(kinds) == {"sent": 2, "delivered": 2, "read": 2}
    assert kinds.index("read") < kinds.index("delivered")


async def test_read_probability_zero_means_never_read(hooked: Graph, receiver: WebhookReceiver) -> None:
    await hooked.sandbox.control.configure(read_probability=0.0)
    await hooked.send(text_body())
    await hooked.sandbox.control.wait_webhooks_idle()
    assert [s["status"] for s in receiver.statuses()] == ["sent", "delivered"]


async def test_many_due_statuses_are_batched_into_few_posts(hooked: Graph, receiver: WebhookReceiver) -> None:
    await hooked.sandbox.control.configure(rate_per_second=0, sent_after_seconds=0.2, read_probability=0.0,
                                           delivered_after_seconds=0.4)
    for i in range(40):
        assert (await hooked.send(text_body(to=f"1650555{i:04d}", request_id=f"r{i}")))[0] == 200
    await hooked.sandbox.control.wait_webhooks_idle()
    statuses = receiver.statuses()
    assert len(statuses) == 80
    assert len(receiver.posts) < 40  # sent statuses due together share posts
    assert max(len(post.statuses()) for post in receiver.posts) > 1
    assert {s["biz_opaque_callback_data"] for s in statuses} == {f"r{i}" for i in range(40)}


async def test_failed_posts_are_retried_with_the_same_signed_bytes(hooked: Graph, receiver: WebhookReceiver) -> None:
    await hooked.sandbox.control.configure(webhook_retry_base_seconds=0.05)
    receiver.fail_next = 2
    await hooked.send(text_body(to="16505559999"))  # one status only: a failed one
    [post] = await receiver.wait_posts(1)
    assert verifies(hooked.sandbox, post.raw, post.signature)
    assert receiver.failed == 2
    deliveries = (await hooked.sandbox.control.webhooks())["deliveries"]
    assert [(d["attempt"], d["answer"]) for d in deliveries] == [(1, 500), (2, 500), (3, 200)]
    assert deliveries[1]["at"] - deliveries[0]["at"] >= 0.05
    assert deliveries[2]["at"] - deliveries[1]["at"] >= 0.1  # backoff doubles


async def test_delivery_gives_up_after_max_attempts(hooked: Graph, receiver: WebhookReceiver) -> None:
    await hooked.sandbox.control.configure(webhook_retry_base_seconds=0.01, webhook_max_attempts=3)
    receiver.fail_next = 100
    await hooked.send(text_body(to="16505559999"))
    summary = await hooked.sandbox.control.wait_webhooks_idle(within=5)
    assert receiver.failed == 3
    assert (summary["given_up"], summary["dropped_events"], summary["retries"]) == (1, 1, 2)


async def test_unreachable_webhook_is_retried_not_fatal(receiver: WebhookReceiver, http: aiohttp.ClientSession) -> None:
    async with running_sandbox(webhook_url="http://127.0.0.1:9/nothing", webhook_retry_base_seconds=0.01,
                               webhook_max_attempts=2, **FAST) as sandbox:
        graph = Graph(sandbox, http)
        assert (await graph.send(text_body()))[0] == 200
        summary = await sandbox.control.wait_webhooks_idle()
        assert summary["given_up"] >= 1
        deliveries = (await sandbox.control.webhooks())["deliveries"]
        assert all(d["answer"] == "ClientConnectorError" for d in deliveries)


async def test_queue_limit_bounds_pending_webhooks(receiver: WebhookReceiver, http: aiohttp.ClientSession) -> None:
    async with running_sandbox(webhook_url=receiver.url, webhook_queue_limit=4, sent_after_seconds=0.3,
                               delivered_after_seconds=0.3, read_after_seconds=0.3) as sandbox:
        graph = Graph(sandbox, http)
        for i in range(3):
            assert (await graph.send(text_body(to=f"1650555000{i}")))[0] == 200  # sending never waits on it
        summary = await sandbox.control.wait_webhooks_idle()
        assert summary["dropped_events"] == 5
        assert len(receiver.statuses()) == 4


async def test_no_webhook_url_means_no_webhooks(graph: Graph) -> None:
    assert (await graph.send(text_body()))[0] == 200
    assert (await graph.sandbox.control.webhooks())["summary"]["pending"] == 0


async def test_inbound_text_and_button_reply_match_the_fixtures(
    hooked: Graph, receiver: WebhookReceiver, fixtures_dir: Path
) -> None:
    wamid = await hooked.sandbox.control.inbound_text(USER, "Where is my order?", NUMBER, name="Ana Souza")
    reply_wamid = await hooked.sandbox.control.inbound_button_reply(
        USER, "track", "Track", NUMBER, name="Ana Souza", context_message_id="wamid.ORIGINAL")
    posts = await receiver.wait_posts(2)
    text_post, button_post = (post.json() for post in posts)
    assert shape(text_post) == shape(fixture(fixtures_dir, "inbound-text.json"))
    assert shape(button_post) == shape(fixture(fixtures_dir, "inbound-button-reply.json"))
    text_message = text_post["entry"][0]["changes"][0]["value"]["messages"][0]
    assert (text_message["id"], text_message["from"], text_message["text"]) == (
        wamid, USER, {"body": "Where is my order?"})
    button = button_post["entry"][0]["changes"][0]["value"]["messages"][0]
    assert button["id"] == reply_wamid
    assert button["context"] == {"from": hooked.sandbox.settings.display_phone_number, "id": "wamid.ORIGINAL"}
    assert button["interactive"]["button_reply"] == {"id": "track", "title": "Track"}
    assert all(verifies(hooked.sandbox, post.raw, post.signature) for post in posts)


async def test_webhook_verification_handshake(hooked: Graph, receiver: WebhookReceiver) -> None:
    assert (await hooked.sandbox.control.verify_webhook("verify-me"))["verified"] is True
    wrong = await hooked.sandbox.control.verify_webhook("wrong")
    assert (wrong["verified"], wrong["status"]) == (False, 403)


async def test_webhook_url_can_be_set_at_run_time(receiver: WebhookReceiver, http: aiohttp.ClientSession) -> None:
    async with running_sandbox(webhook_concurrency=1) as sandbox:
        graph = Graph(sandbox, http)
        await graph.send(text_body())  # no URL yet: no webhooks for this one
        await sandbox.control.configure(webhook_url=receiver.url, **{k: v for k, v in FAST.items()
                                                                      if k != "webhook_concurrency"})
        await graph.send(text_body(request_id="after"))
        statuses = await receiver.wait_statuses(3)
        assert [s["status"] for s in statuses] == ["sent", "delivered", "read"]
        assert {s["biz_opaque_callback_data"] for s in statuses} == {"after"}
