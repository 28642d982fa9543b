"""Uploaded media: ids that expire, size caps per kind, and an upload count per content for tests.

    store = MediaStore()
    item = store.upload(b"...", "image/jpeg", now, ttl=30 * 86400)
    store.check(item.id, "image.id", now)    # raises GraphError 131009 (unknown) or 131053 (expired)
    store.uploads_of(hashlib.sha256(b"...").hexdigest())   # 1: did the client re-use its upload?
    store.content(item)                      # b"...": what the media URL serves (with the token)
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass

from pipeline.sandbox import ids
from pipeline.sandbox.errors import GraphError

_MB = 1024 * 1024
# MIME type -> (kind, size cap in bytes), from Meta's supported-media table.
SUPPORTED: dict[str, tuple[str, int]] = {
    "image/jpeg": ("image", 5 * _MB),
    "image/png": ("image", 5 * _MB),
    "image/webp": ("sticker", 500 * 1024),  # animated stickers: 500 KB; static 100 KB (not told apart here)
    "audio/aac": ("audio", 16 * _MB),
    "audio/amr": ("audio", 16 * _MB),
    "audio/mpeg": ("audio", 16 * _MB),
    "audio/mp4": ("audio", 16 * _MB),
    "audio/ogg": ("audio", 16 * _MB),
    "video/mp4": ("video", 16 * _MB),
    "video/3gpp": ("video", 16 * _MB),
    "text/plain": ("document", 100 * _MB),
    "application/pdf": ("document", 100 * _MB),
    "application/msword": ("document", 100 * _MB),
    "application/vnd.ms-excel": ("document", 100 * _MB),
    "application/vnd.ms-powerpoint": ("document", 100 * _MB),
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": ("document", 100 * _MB),
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": ("document", 100 * _MB),
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": ("document", 100 * _MB),
}
MAX_UPLOAD_BYTES = 100 * _MB


@dataclass
class MediaItem:
    id: str
    sha256: str
    mime_type: str
    size: int
    phone_number_id: str
    uploaded_at: float  # wall-clock epoch seconds
    expires_at: float


class MediaStore:
    def __init__(self) -> None:
        self._items: dict[str, MediaItem] = {}
        self._uploads: Counter[str] = Counter()
        self._content: dict[str, bytes] = {}  # by sha256: the same file uploaded twice is kept once

    def upload(self, content: bytes, mime_type: str, phone_number_id: str, now: float, ttl: float) -> MediaItem:
        if mime_type not in SUPPORTED:
            raise GraphError(100, f"type: {mime_type!r} is not a supported media type "
                                  f"(one of {', '.join(sorted(SUPPORTED))})")
        kind, cap = SUPPORTED[mime_type]
        if len(content) > cap:
            raise GraphError(131053, f"file: {kind} files must be at most {cap} bytes (got {len(content)})")
        if not content:
            raise GraphError(131053, "file: the file is empty")
        digest = hashlib.sha256(content).hexdigest()
        item = MediaItem(ids.media_id(), digest, mime_type, len(content), phone_number_id, now, now + ttl)
        self._items[item.id] = item
        self._uploads[digest] += 1
        self._content.setdefault(digest, content)
        return item

    def content(self, item: MediaItem) -> bytes:
        return self._content.get(item.sha256, b"")

    def get(self, media_id: str) -> MediaItem | None:
        return self._items.get(media_id)

    def check(self, media_id: str, field: str, now: float) -> MediaItem:
        item = self._items.get(media_id)
        if item is None:
            raise GraphError(131009, f"{field}: no uploaded media has the id {media_id!r}")
        if now >= item.expires_at:
            raise GraphError(131053, f"{field}: media {media_id} expired; upload it again")
        return item

    def expire(self, media_id: str, now: float) -> bool:
        item = self._items.get(media_id)
        if item is None:
            return False
        item.expires_at = min(item.expires_at, now)
        return True

    def delete(self, media_id: str) -> bool:
        item = self._items.pop(media_id, None)
        if item is not None and not any(other.sha256 == item.sha256 for other in self._items.values()):
            self._content.pop(item.sha256, None)
        return item is not None

    def uploads_of(self, sha256: str) -> int:
        return self._uploads[sha256]

    def summary(self) -> dict[str, object]:
        return {
            "uploads": sum(self._uploads.values()),
            "uploads_by_sha256": dict(self._uploads),
            "items": [vars(item) for item in self._items.values()],
        }

    def clear(self) -> None:
        self._items.clear()
        self._uploads.clear()
        self._content.clear()
