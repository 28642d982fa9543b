"""Upload-once cache of media ids, keyed by content hash, and Meta's media size caps.

    cache = MediaCache(clock=time.time)
    media_id = await cache.get_or_upload(key, upload)      # `upload` runs once per key and lifetime

Meta keeps an uploaded media id for 30 days; an id is reused until a day before that, so that a
message sent with it still finds the media when Meta fetches it later.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

MEDIA_ID_LIFETIME_SECONDS = 30 * 24 * 3600
REUSE_MARGIN_SECONDS = 24 * 3600

_MB = 1024 * 1024
_MIME = re.compile(r"^[a-z]+/[A-Za-z0-9.+-]+$")


def max_media_bytes(mime_type: str) -> int:
    """Meta's cap for this MIME type: image 5 MB, audio/video 16 MB, sticker (webp) 500 KB, else 100 MB."""
    if mime_type == "image/webp":  # stickers; static ones are capped at 100 KB, animated at 500 KB
        return 500 * 1024
    if mime_type.startswith("image/"):
        return 5 * _MB
    if mime_type.startswith(("audio/", "video/")):
        return 16 * _MB
    return 100 * _MB


def check_media(content: bytes, mime_type: str) -> None:
    """Raise `ValueError` naming the field and the rule, before spending an upload on it."""
    if not _MIME.match(mime_type):
        raise ValueError(f"mime_type: must be a MIME type like 'image/jpeg'; got {mime_type!r}")
    if not content:
        raise ValueError("content: must not be empty")
    limit = max_media_bytes(mime_type)
    if len(content) > limit:
        raise ValueError(f"content: {mime_type} media must be at most {limit} bytes; got {len(content)}")


@dataclass(frozen=True)
class MediaKey:
    phone_number_id: str
    sha256: str
    mime_type: str

    @classmethod
    def of(cls, phone_number_id: str, content: bytes, mime_type: str) -> MediaKey:
        return cls(phone_number_id, hashlib.sha256(content).hexdigest(), mime_type)


@dataclass(frozen=True)
class _Entry:
    media_id: str
    uploaded_at: float


class MediaCache:
    """Media ids by content, with one upload in flight per content however many callers ask.

    Holds at most `max_entries` ids (a sender of per-user documents would otherwise grow it forever).
    """

    def __init__(
        self,
        clock: Callable[[], float],
        lifetime_seconds: float = MEDIA_ID_LIFETIME_SECONDS - REUSE_MARGIN_SECONDS,
        max_entries: int = 10_000,
    ) -> None:
        self._clock = clock
        self._lifetime = lifetime_seconds
        self._max_entries = max_entries
        self._entries: dict[MediaKey, _Entry] = {}
        self._uploading: dict[MediaKey, asyncio.Task[str]] = {}

    def get(self, key: MediaKey) -> str | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self._clock() - entry.uploaded_at >= self._lifetime:
            del self._entries[key]
            return None
        return entry.media_id

    def invalidate(self, media_id: str) -> bool:
        """Forget an id Meta rejected (131052/131053), so the next request uploads again."""
        stale = [key for key, entry in self._entries.items() if entry.media_id == media_id]
        for key in stale:
            del self._entries[key]
        return bool(stale)

    async def get_or_upload(self, key: MediaKey, upload: Callable[[], Awaitable[str]]) -> str:
        cached = self.get(key)
        if cached is not None:
            return cached
        task = self._uploading.get(key)
        if task is None:
            task = asyncio.create_task(self._upload(key, upload))
            task.add_done_callback(_retrieve)
            self._uploading[key] = task
        # Shielded: one caller giving up must not cancel the upload the others are waiting for.
        return await asyncio.shield(task)

    async def _upload(self, key: MediaKey, upload: Callable[[], Awaitable[str]]) -> str:
        try:
            media_id = await upload()
            self._entries.pop(key, None)
            self._entries[key] = _Entry(media_id, self._clock())
            while len(self._entries) > self._max_entries:
                # Dicts keep insertion order: the oldest upload goes first (it expires first anyway).
                del self._entries[next(iter(self._entries))]
            return media_id
        finally:
            del self._uploading[key]

    def __len__(self) -> int:
        return len(self._entries)


def _retrieve(task: asyncio.Task[str]) -> None:
    # Every waiter may have been cancelled; the failure is theirs to see, not the loop's to warn about.
    if not task.cancelled():
        task.exception()
