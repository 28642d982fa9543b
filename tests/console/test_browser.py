"""The console in a real browser (Debian's chromium, driven by Playwright) over the whole local pipeline.

API → sender → sandbox → webhooks → ingest → store; the browser reads the store's read API with the key an
operator types. The screenshots it takes are the ones in docs/console/.
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from pipeline.local.stack import LocalStack
from pipeline.store.settings import sqlite_url
from pipeline.topics import create_topics
from tests.e2e.conftest import stack_settings

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

NUMBER = "106540352242922"
OTHER_NUMBER = "106540352242999"
KEY = "console-key-a-0123456789"
OTHER_KEY = "console-key-b-0123456789"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "console"
XSS = "<img src=x onerror=alert(1)>"
TRACE_URL = "http://jaeger.example:16686/trace/{trace_id}"


def chromium() -> str:
    path = shutil.which("chromium")
    assert path, "Debian's chromium is missing: `make setup` installs it (apt-get install chromium)"
    return path


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    settings = stack_settings(kafka_bootstrap, sqlite_url(tmp_path_factory.mktemp("store") / "store.db"))
    keys = f'{{"{KEY}": ["{NUMBER}"], "{OTHER_KEY}": ["{OTHER_NUMBER}"], "dev-key": "*"}}'
    settings = settings.model_copy(update={
        "api": settings.api.model_copy(update={"keys": keys_secret(keys)}),
        "console": settings.console.model_copy(update={"trace_url": TRACE_URL}),
    })
    asyncio.run(create_topics(settings.kafka))
    log_dir = tmp_path_factory.mktemp("console-stack-logs")
    running = LocalStack(settings, use_sandbox=True, log_dir=log_dir)
    try:
        running.start()
        yield running
    finally:
        running.stop()
        for log in sorted(log_dir.glob("*.log")):
            print(f"--- {log.name} (last lines)\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:]))


def keys_secret(value: str) -> Any:
    from pydantic import SecretStr

    return SecretStr(value)


@pytest.fixture(scope="module")
async def conversation(stack: LocalStack) -> dict[str, str]:
    """Two messages to one customer (one with hostile HTML), both read, and the customer's reply."""
    recipient = f"1650555{uuid.uuid4().int % 10_000:04d}"
    store = stack.urls["store"]
    async with httpx.AsyncClient(timeout=30) as http:
        ids = []
        for body in ("Your order 12345 shipped", XSS):
            answer = await http.post(f"{stack.urls['api']}/v1/messages", headers={"X-API-Key": KEY}, json={
                "to": f"+{recipient}", "phone_number_id": NUMBER, "message": {"type": "text", "text": {"body": body}},
            })
            assert answer.status_code == 202, answer.text
            ids.append(answer.json()["request_id"])
        deadline = time.monotonic() + 90
        wamid = trace_id = None
        while time.monotonic() < deadline:
            views = [await http.get(f"{store}/v1/messages/{i}", headers={"X-API-Key": KEY}) for i in ids]
            if all(v.status_code == 200 and v.json()["status"] == "read" for v in views):
                wamid, trace_id = views[0].json()["wamid"], views[0].json()["trace_id"]
                break
            await asyncio.sleep(0.5)
        assert wamid, f"the messages did not reach read in the store: {[v.text for v in views]}"
        reply = await http.post(f"{stack.urls['sandbox']}/_sandbox/inbound", json={
            "from": recipient, "phone_number_id": NUMBER, "text": "Thanks, when does it arrive?",
            "context_message_id": wamid,
        })
        assert reply.status_code == 200, reply.text
        while time.monotonic() < deadline:
            history = await http.get(f"{store}/v1/contacts/{recipient}/messages", headers={"X-API-Key": KEY})
            if history.status_code == 200 and any(m["direction"] == "inbound" for m in history.json()["messages"]):
                break
            await asyncio.sleep(0.5)
        else:
            pytest.fail("the reply never reached the store")
    assert trace_id, "the store kept no trace id of the send"
    return {"recipient": recipient, "request_id": ids[0], "xss_request_id": ids[1], "wamid": wamid,
            "trace_id": trace_id}


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            yield launched
        finally:
            await launched.close()


async def open_console(browser: Browser, stack: LocalStack, key: str, width: int = 1280) -> tuple[Page, list[str]]:
    page = await browser.new_page(viewport={"width": width, "height": 900})
    dialogs: list[str] = []

    async def dismiss(dialog: Any) -> None:
        dialogs.append(dialog.message)
        await dialog.dismiss()

    page.on("dialog", dismiss)
    await page.bring_to_front()  # focus checks need the active tab
    await page.goto(f"{stack.urls['store']}/console/")
    await page.get_by_label("API key", exact=True).fill(key)
    await page.get_by_role("button", name="Open the console").click()
    await expect(page.get_by_role("search")).to_be_visible()
    return page, dialogs


async def test_an_operator_follows_a_message_from_search_to_read_and_the_reply(
    stack: LocalStack, conversation: dict[str, str], browser: Browser
) -> None:
    page, dialogs = await open_console(browser, stack, KEY)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    # Keyboard: the skip link is the first stop, and Enter on it lands on the content. (Read from the DOM:
    # headless pages report no window focus, which Playwright's to_be_focused needs.)
    first = "[...document.querySelectorAll('a[href], button, input, select')].find(e => e.offsetParent !== null)"
    assert await page.evaluate(f"{first}.textContent") == "Skip to content"
    await page.focus("a.skip")
    await page.keyboard.press("Enter")
    assert await page.evaluate("document.activeElement.id") == "main"

    await page.get_by_label("Request id, wamid, recipient number or text").fill(f"+{conversation['recipient']}")
    await page.get_by_role("button", name="Search").click()
    results = page.locator("table tbody tr")
    await expect(results).to_have_count(2)
    await expect(page.get_by_text(XSS, exact=True)).to_be_visible()  # hostile HTML is only text
    await page.screenshot(path=SCREENSHOTS / "search.png", full_page=True)

    await page.get_by_role("link", name=conversation["request_id"]).click()
    timeline = page.locator("ol.timeline li")
    await expect(timeline).to_have_count(4)
    await expect(timeline.locator(".badge")).to_have_text(["accepted", "sent", "delivered", "read"])
    assert "+" in (await timeline.nth(3).inner_text())  # the read step shows its delay after acceptance
    trace = page.get_by_role("link", name=conversation["trace_id"])  # CONSOLE_TRACE_URL filled with the send's trace
    await expect(trace).to_have_attribute("href", TRACE_URL.format(trace_id=conversation["trace_id"]))
    await page.screenshot(path=SCREENSHOTS / "message.png", full_page=True)

    await page.get_by_role("link", name="(conversation)").click()
    bubbles = page.locator("article.bubble")
    await expect(bubbles).to_have_count(3)
    reply = page.locator("article.bubble.inbound")
    await expect(reply).to_contain_text("Thanks, when does it arrive?")
    await expect(reply.locator(".reply a")).to_have_text("Your order 12345 shipped")  # linked to what it answers
    await page.screenshot(path=SCREENSHOTS / "conversation.png", full_page=True)

    await page.get_by_role("link", name="Overview").click()
    await page.get_by_label("Business number (empty: all of the key's)").fill(NUMBER)
    await page.get_by_role("button", name="Show").click()
    funnel = page.get_by_role("img", name="Delivery funnel")
    await expect(funnel).to_be_visible()
    # all_text_contents does not wait: let the page finish drawing the five bars of this number's funnel first
    await expect(funnel.locator("g text:nth-of-type(2)")).to_have_count(5)
    counts = await funnel.locator("g text:nth-of-type(2)").all_text_contents()
    assert [int(c) for c in counts][:4] >= [2, 2, 2, 2], counts  # accepted, sent, delivered, read
    await expect(page.get_by_text("Response rate")).to_be_visible()
    await page.screenshot(path=SCREENSHOTS / "overview.png", full_page=True)

    await page.set_viewport_size({"width": 390, "height": 844})  # a phone-width window stays readable
    await page.goto(f"{stack.urls['store']}/console/#/message/{conversation['xss_request_id']}")
    await expect(page.locator("dl.facts")).to_contain_text(XSS)
    assert dialogs == []
    assert await page.locator("img").count() == 0


async def test_a_key_for_another_number_sees_none_of_it(
    stack: LocalStack, conversation: dict[str, str], browser: Browser
) -> None:
    page, _ = await open_console(browser, stack, OTHER_KEY)
    await page.get_by_label("Request id, wamid, recipient number or text").fill(f"+{conversation['recipient']}")
    await page.get_by_role("button", name="Search").click()
    await expect(page.get_by_text("No message matches")).to_be_visible()
    await page.goto(f"{stack.urls['store']}/console/#/message/{conversation['request_id']}")
    await expect(page.get_by_role("heading", name="Message not found")).to_be_visible()
    await page.goto(f"{stack.urls['store']}/console/#/contact/{conversation['recipient']}")
    await expect(page.get_by_role("heading", name="Conversation not found")).to_be_visible()


async def test_a_wrong_key_is_told_so_and_asked_again(stack: LocalStack, browser: Browser) -> None:
    page = await browser.new_page()
    await page.bring_to_front()
    await page.goto(f"{stack.urls['store']}/console/")
    await page.get_by_label("API key", exact=True).fill("not-a-key-at-all")
    await page.get_by_role("button", name="Open the console").click()
    await expect(page.get_by_role("alert")).to_contain_text("That API key was refused")
    assert await page.evaluate("document.activeElement.id") == "api-key"  # asked again, ready to type
    assert "not-a-key-at-all" not in page.url


async def test_the_console_forbids_inline_script_and_other_origins(stack: LocalStack) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        page = await http.get(f"{stack.urls['store']}/console/")
        assert page.status_code == 200
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy
        assert "unsafe-inline" not in policy
        assert "default-src 'none'" in policy
        assert "<script>" not in page.text  # no inline script to allow
        missing = await http.get(f"{stack.urls['store']}/console/..%2fsettings.py")
        assert missing.status_code == 404
