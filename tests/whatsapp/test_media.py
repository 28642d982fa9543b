"""Media upload: multipart shape, upload-once cache by content, expiry, and one re-upload on 131052/131053."""

from __future__ import annotations

import asyncio
import functools
from email.parser import BytesParser
from email.policy import HTTP

import httpx
import orjson
import pytest

from pipeline.contracts import ErrorClass, SendRequest
from pipeline.whatsapp import GraphApiError, WhatsAppClient
from pipeline.whatsapp.media import MEDIA_ID_LIFETIME_SECONDS, REUSE_MARGIN_SECONDS, check_media
from tests.whatsapp.conftest import NUMBER, USER, wa_settings

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
DAY = 86_400.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class FakeMeta:
    """Answers uploads with fresh ids and sends with wamids; `fail_uploads`/`fail_sends` queue error codes."""

    def __init__(self) -> None:
        self.uploads: list[httpx.Request] = []
        self.sends: list[dict[str, object]] = []
        self.fail_uploads: list[int] = []
        self.fail_sends: list[int] = []
        self.upload_gate: asyncio.Event | None = None

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/media"):
            self.uploads.append(request)
            if self.upload_gate is not None:
                await self.upload_gate.wait()
            if self.fail_uploads:
                return self._error(self.fail_uploads.pop(0))
            return httpx.Response(200, json={"id": f"media-{len(self.uploads)}"})
        self.sends.append(orjson.loads(request.content))
        if self.fail_sends:
            return self._error(self.fail_sends.pop(0))
        return httpx.Response(200, json={"messages": [{"id": f"wamid.{len(self.sends)}"}]})

    @staticmethod
    def _error(code: int) -> httpx.Response:
        return httpx.Response(400, json={"error": {"code": code, "message": f"(#{code}) media"}})


@pytest.fixture
def meta() -> FakeMeta:
    return FakeMeta()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def client(meta: FakeMeta, clock: FakeClock) -> WhatsAppClient:
    return WhatsAppClient(wa_settings(), transport=httpx.MockTransport(meta), clock=clock)


def image_request(media_id: str = "placeholder") -> SendRequest:
    return SendRequest.model_validate({"to": USER, "message": {"type": "image", "image": {"id": media_id,
                                                                                          "caption": "Receipt"}}})


async def test_upload_is_multipart_with_file_type_and_messaging_product(client: WhatsAppClient, meta: FakeMeta) -> None:
    media_id = await client.upload_media(NUMBER, PNG, "image/png", filename="receipt.png")

    assert media_id == "media-1"
    upload = meta.uploads[0]
    assert upload.url.path == f"/v23.0/{NUMBER}/media"
    assert int(upload.headers["content-length"]) == len(upload.content)  # not chunked
    form = BytesParser(policy=HTTP).parsebytes(
        b"content-type: " + upload.headers["content-type"].encode() + b"\r\n\r\n" + upload.content)
    parts = {part.get_param("name", header="content-disposition"): part for part in form.iter_parts()}
    assert parts["messaging_product"].get_content() == "whatsapp"
    assert parts["type"].get_content() == "image/png"
    assert parts["file"].get_filename() == "receipt.png"
    assert parts["file"].get_content_type() == "image/png"
    assert parts["file"].get_payload(decode=True) == PNG


async def test_same_content_uploads_once_per_number_and_type(client: WhatsAppClient, meta: FakeMeta) -> None:
    first = await client.upload_media(NUMBER, PNG, "image/png")
    again = await client.upload_media(NUMBER, PNG, "image/png")
    other_content = await client.upload_media(NUMBER, PNG + b"!", "image/png")
    other_number = await client.upload_media("222222", PNG, "image/png")

    assert first == again
    assert len({first, other_content, other_number}) == 3
    assert len(meta.uploads) == 3


async def test_concurrent_requests_for_the_same_content_share_one_upload(client: WhatsAppClient,
                                                                         meta: FakeMeta) -> None:
    meta.upload_gate = asyncio.Event()
    waiters = [asyncio.create_task(client.upload_media(NUMBER, PNG, "image/png")) for _ in range(5)]
    await asyncio.sleep(0.01)
    waiters[0].cancel()  # one caller giving up must not cancel the upload the others wait for
    meta.upload_gate.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)

    assert isinstance(results[0], asyncio.CancelledError)
    assert results[1:] == ["media-1"] * 4
    assert len(meta.uploads) == 1


async def test_ids_are_reused_until_a_day_before_metas_30_day_expiry(client: WhatsAppClient, meta: FakeMeta,
                                                                      clock: FakeClock) -> None:
    assert MEDIA_ID_LIFETIME_SECONDS == 30 * DAY
    first = await client.upload_media(NUMBER, PNG, "image/png")
    clock.now += MEDIA_ID_LIFETIME_SECONDS - REUSE_MARGIN_SECONDS - 1
    assert await client.upload_media(NUMBER, PNG, "image/png") == first
    clock.now += 1
    renewed = await client.upload_media(NUMBER, PNG, "image/png")

    assert renewed != first
    assert len(meta.uploads) == 2
    clock.now += 20 * DAY
    assert await client.upload_media(NUMBER, PNG, "image/png") == renewed  # the clock restarts with the new id


async def test_failed_upload_is_not_cached(client: WhatsAppClient, meta: FakeMeta) -> None:
    meta.fail_uploads = [100]
    with pytest.raises(GraphApiError) as info:
        await client.upload_media(NUMBER, PNG, "image/png")
    assert info.value.error_class is ErrorClass.INVALID
    assert len(meta.uploads) == 1  # 100 is not a media error: no second try

    assert await client.upload_media(NUMBER, PNG, "image/png") == "media-2"


@pytest.mark.parametrize("code", [131052, 131053])
async def test_upload_media_error_is_retried_once_then_raised(client: WhatsAppClient, meta: FakeMeta,
                                                              code: int) -> None:
    meta.fail_uploads = [code]
    assert await client.upload_media(NUMBER, PNG, "image/png") == "media-2"

    meta.fail_uploads = [code, code]
    with pytest.raises(GraphApiError) as info:
        await client.upload_media(NUMBER, PNG + b"other", "image/png")
    assert info.value.error_class is ErrorClass.MEDIA
    assert len(meta.uploads) == 4


async def test_send_media_uploads_then_sends_with_the_id(client: WhatsAppClient, meta: FakeMeta) -> None:
    sent = await client.send_media(image_request(), PNG, "image/png", callback_data="req_1")
    await client.send_media(image_request(), PNG, "image/png")

    assert sent.wamid == "wamid.1"
    assert len(meta.uploads) == 1
    assert [s["image"] for s in meta.sends] == [{"id": "media-1", "caption": "Receipt"}] * 2
    assert meta.sends[0]["biz_opaque_callback_data"] == "req_1"


@pytest.mark.parametrize("code", [131052, 131053])
async def test_send_media_reuploads_once_when_meta_rejects_the_media(client: WhatsAppClient, meta: FakeMeta,
                                                                    code: int) -> None:
    await client.upload_media(NUMBER, PNG, "image/png")  # cached: media-1
    meta.fail_sends = [code]
    sent = await client.send_media(image_request(), PNG, "image/png")

    assert sent.wamid == "wamid.2"
    assert [s["image"]["id"] for s in meta.sends] == ["media-1", "media-2"]  # type: ignore[index]

    meta.fail_sends = [code, code]
    with pytest.raises(GraphApiError) as info:
        await client.send_media(image_request(), PNG, "image/png")
    assert info.value.error_class is ErrorClass.MEDIA
    assert len(meta.uploads) == 3  # one re-upload per failed send, then it gives up
    assert len(meta.sends) == 4


async def test_send_message_media_error_drops_the_cached_id(client: WhatsAppClient, meta: FakeMeta) -> None:
    media_id = await client.upload_media(NUMBER, PNG, "image/png")
    meta.fail_sends = [131053]
    with pytest.raises(GraphApiError):
        await client.send_message(image_request(media_id))

    assert await client.upload_media(NUMBER, PNG, "image/png") != media_id
    assert len(meta.uploads) == 2


async def test_send_media_refuses_a_non_media_message(client: WhatsAppClient, meta: FakeMeta) -> None:
    text = SendRequest.model_validate({"to": USER, "message": {"type": "text", "text": {"body": "hi"}}})
    with pytest.raises(ValueError, match=r"message\.type: send_media needs one of audio, document, image"):
        await client.send_media(text, PNG, "image/png")
    assert meta.uploads == []


@pytest.mark.parametrize(
    ("size", "mime", "problem"),
    [
        (5 * 1024 * 1024 + 1, "image/jpeg", r"content: image/jpeg media must be at most 5242880 bytes; got 5242881"),
        (500 * 1024 + 1, "image/webp", r"content: image/webp media must be at most 512000 bytes"),
        (16 * 1024 * 1024 + 1, "video/mp4", r"content: video/mp4 media must be at most 16777216 bytes"),
        (16 * 1024 * 1024 + 1, "audio/ogg", r"content: audio/ogg media must be at most 16777216 bytes"),
        (0, "application/pdf", r"content: must not be empty"),
        (10, "jpeg", r"mime_type: must be a MIME type like 'image/jpeg'; got 'jpeg'"),
    ],
)
def test_media_over_metas_caps_is_refused_before_uploading(size: int, mime: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        check_media(b"x" * size, mime)


async def test_oversized_upload_never_reaches_meta(client: WhatsAppClient, meta: FakeMeta) -> None:
    with pytest.raises(ValueError, match="content: image/png"):
        await client.upload_media(NUMBER, b"x" * (5 * 1024 * 1024 + 1), "image/png")
    assert meta.uploads == []


async def test_the_cache_is_bounded_and_drops_the_oldest_upload_first() -> None:
    from pipeline.whatsapp.media import MediaCache, MediaKey

    cache = MediaCache(FakeClock(), max_entries=2)
    keys = [MediaKey.of(NUMBER, bytes([i]), "image/png") for i in range(3)]
    for i, key in enumerate(keys):
        await cache.get_or_upload(key, functools.partial(_id, f"m{i}"))

    assert len(cache) == 2
    assert cache.get(keys[0]) is None
    assert [cache.get(k) for k in keys[1:]] == ["m1", "m2"]


async def _id(value: str) -> str:
    return value
