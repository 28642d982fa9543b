"""The searchable text of a message body: what a person would search for.

    searchable_text(message)   # a message body as JSON data: "order_update 12345 Track" for a template

Body, caption, file name, template name and parameters, button and list titles: every string a
recipient reads. Ids, links and media references are left out (they only add noise to the index).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

_TEXT_KEYS = frozenset(
    {"body", "caption", "text", "title", "description", "button", "filename", "name", "address", "payload", "emoji"}
)


def searchable_text(body: BaseModel | dict[str, Any]) -> str | None:
    """From a validated body or its JSON data (the projection passes the data it already parsed)."""
    parts: list[str] = []
    _collect(body if isinstance(body, dict) else body.model_dump(mode="json", exclude_none=True), parts)
    text = " ".join(p for p in parts if p.strip())
    return text or None


def _collect(value: Any, parts: list[str]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, str):
                if key in _TEXT_KEYS:
                    parts.append(item)
            else:
                _collect(item, parts)
    elif isinstance(value, list):
        for item in value:
            _collect(item, parts)
