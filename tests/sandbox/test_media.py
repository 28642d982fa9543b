"""POST /{version}/{phone_number_id}/media: ids, expiry (131053), caps, and the upload count per content."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import aiohttp

from pipeline.sandbox.testing import running_sandbox
from tests.sandbox.conftest import NUMBER, USER, Graph

JPEG = b"\xff\xd8\xff\xe0" + b"sandbox-image" * 100


async def upload(graph: Graph, content: bytes = JPEG, mime: str | None = "image/jpeg",
                 product: str | None = "whatsapp") -> tuple[int, dict[str, Any]]:
    form = aiohttp.FormData()
    form.add_field("file", content, filename="photo.jpg", content_type=mime or "application/octet-stream")
    if mime is not None:
        form.add_field("type", mime)
    if product is not None:
        form.add_field("messaging_product", product)
    async with graph.http.post(graph.sandbox.media_url(NUMBER), data=form, headers=graph.headers) as r:
        return r.status, await r.json()


def image_by_id(media_id: str) -> dict[str, Any]:
    return {"messaging_product": "whatsapp", "to": USER, "type": "image", "image": {"id": media_id, "caption": "hi"}}


async def test_upload_returns_an_id_that_a_send_can_use(graph: Graph) -> None:
    status, body = await upload(graph)
    assert status == 200
    assert set(body) == {"id"}
    assert body["id"].isdigit()
    assert (await graph.send(image_by_id(body["id"])))[0] == 200
    async with graph.http.get(f"{graph.sandbox.base_url}/v23.0/{body['id']}", headers=graph.headers) as r:
        item = await r.json()
    assert item["sha256"] == hashlib.sha256(JPEG).hexdigest()
    assert (item["mime_type"], item["file_size"]) == ("image/jpeg", len(JPEG))


async def test_uploads_are_counted_per_content(graph: Graph) -> None:
    first = (await upload(graph))[1]["id"]
    second = (await upload(graph))[1]["id"]
    await upload(graph, content=b"other content", mime="text/plain")
    assert first != second
    media = await graph.sandbox.control.media()
    assert media["uploads"] == 3
    assert media["uploads_by_sha256"][hashlib.sha256(JPEG).hexdigest()] == 2
    assert (await graph.sandbox.control.stats())["media"]["uploads"] == 3


async def test_unknown_media_id_is_131009(graph: Graph) -> None:
    status, body = await graph.send(image_by_id("1234567890123456"))
    assert (status, body["error"]["code"]) == (400, 131009)
    assert "image.id" in body["error"]["error_data"]["details"]


async def test_expired_media_id_is_131053_until_uploaded_again(graph: Graph) -> None:
    media_id = (await upload(graph))[1]["id"]
    await graph.sandbox.control.expire_media(media_id)
    status, body = await graph.send(image_by_id(media_id))
    assert (status, body["error"]["code"]) == (400, 131053)
    assert (await graph.sandbox.control.stats())["received"]["messages"] == {"media_error": 1}
    fresh = (await upload(graph))[1]["id"]
    assert (await graph.send(image_by_id(fresh)))[0] == 200


async def test_media_ids_expire_after_the_configured_ttl(http: aiohttp.ClientSession) -> None:
    # A TTL long enough that the first send lands inside it on a loaded machine.
    async with running_sandbox(media_ttl_seconds=1.0) as sandbox:
        graph = Graph(sandbox, http)
        media_id = (await upload(graph))[1]["id"]
        assert (await graph.send(image_by_id(media_id)))[0] == 200
        await asyncio.sleep(1.05)
        assert (await graph.send(image_by_id(media_id)))[1]["error"]["code"] == 131053


async def test_interactive_header_media_is_checked_too(graph: Graph) -> None:
    body = {
        "messaging_product": "whatsapp", "to": USER, "type": "interactive",
        "interactive": {"type": "button", "header": {"type": "image", "image": {"id": "404404404"}},
                        "body": {"text": "t"},
                        "action": {"buttons": [{"type": "reply", "reply": {"id": "a", "title": "A"}}]}},
    }
    status, answer = await graph.send(body)
    assert (status, answer["error"]["code"]) == (400, 131009)


async def test_upload_errors(graph: Graph) -> None:
    assert (await upload(graph, product=None))[1]["error"]["code"] == 100
    assert (await upload(graph, mime=None))[1]["error"]["code"] == 100
    status, body = await upload(graph, mime="application/x-msdownload")
    assert (status, body["error"]["code"]) == (400, 100)
    assert "supported media type" in body["error"]["error_data"]["details"]
    big = b"\xff" * (5 * 1024 * 1024 + 1)
    status, body = await upload(graph, content=big)
    assert (status, body["error"]["code"]) == (400, 131053)
    assert (await graph.sandbox.control.media())["uploads"] == 0
    async with graph.http.post(graph.sandbox.media_url(NUMBER), data=b"x") as r:
        assert (r.status, (await r.json())["error"]["code"]) == (401, 190)


async def test_delete_media(graph: Graph) -> None:
    media_id = (await upload(graph))[1]["id"]
    url = f"{graph.sandbox.base_url}/v23.0/{media_id}"
    async with graph.http.delete(url, headers=graph.headers) as r:
        assert (r.status, await r.json()) == (200, {"success": True})
    async with graph.http.delete(url, headers=graph.headers) as r:
        assert r.status == 400
    assert (await graph.send(image_by_id(media_id)))[1]["error"]["code"] == 131009
