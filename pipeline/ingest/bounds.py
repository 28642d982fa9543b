"""Bounds a validly signed webhook must respect before anything walks it recursively or keeps it.

    check_depth(data, raw)                # raises TooDeep past MAX_DEPTH levels (iterative: no recursion)
    oversize(item, ITEM_BYTES["messages"])  # "1,250,034 bytes; at most 262,144" or None
    phone_number_label("106540352242922")   # "106540352242922"; "other" for anything but 5-20 digits

A signature proves Meta (or whoever holds the app secret) sent a body, not that the body is sane:
pydantic's serializer stops at a few hundred levels and Kafka refuses a record over its topic's size,
and either failure used to repeat on every retry of the batch. So the body is measured here, where one
bad webhook can still be dead-lettered on its own.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

MAX_DEPTH = 64
"""Meta's deepest documented shape (an edit of an interactive reply) nests about 12 levels."""

ITEM_BYTES = {"statuses": 64 * 1024, "messages": 256 * 1024, "account": 256 * 1024}
"""Largest item (one status, one message object, one account value) as JSON. A status is a few hundred
bytes; a message carries at most a 65,536-character text. An InboundMessage holds its text twice (text
and raw), so 256 KiB keeps every record far below its topic's 1 MiB."""

_PHONE_NUMBER_ID = re.compile(r"^[0-9]{5,20}$")


class TooDeep(ValueError):
    """The body nests deeper than MAX_DEPTH; the message says where."""


_CONTAINERS = (dict, list)


def check_depth(data: Any, raw: bytes | None = None, limit: int = MAX_DEPTH) -> None:
    """Raise TooDeep if `data` (parsed JSON, from `raw`) nests deeper than `limit` containers.

    Level by level with a plain list, not recursion: the walk that guards against deep input must not
    itself be one. A body with no more than `limit` opening brackets cannot nest deeper (brackets inside
    strings only over-count), so typical webhooks skip the walk at the cost of two `bytes.count`.
    """
    if raw is not None and raw.count(b"{") + raw.count(b"[") <= limit:
        return
    level = [data] if isinstance(data, _CONTAINERS) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            raise TooDeep(f"(body): nested more than {limit} levels deep")
        deeper: list[Any] = []
        for node in level:
            children = node.values() if isinstance(node, dict) else node
            deeper += [child for child in children if isinstance(child, _CONTAINERS)]
        level = deeper


SMALL_BODY_BYTES = 64 * 1024
"""A body this small has no oversize item worth measuring: re-serialised, JSON grows at most about 4x
(`1e9` becomes `1000000000.0`), far below any topic's 1 MiB, and the normaliser's last guard checks
every record against its topic anyway."""


def oversize(item: Any, limit: int) -> str | None:
    """None when `item` serialises within `limit` bytes; otherwise what to tell the operator."""
    size = len(orjson.dumps(item))
    return None if size <= limit else f"{size:,} bytes as JSON; at most {limit:,}"


def phone_number_label(value: str | None) -> str:
    """A metric label value: a valid phone_number_id, `unknown` when absent, `other` for anything else.

    Labels are bounded by construction: a 200 KB `metadata.phone_number_id` once became a series.
    """
    if value is None:
        return "unknown"
    return value if _PHONE_NUMBER_ID.match(value) else "other"
