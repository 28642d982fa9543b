"""Turn a pydantic ValidationError into field errors a person can act on.

    try:
        SendRequest.model_validate(data)
    except ValidationError as exc:
        field_errors(exc, data)   # [FieldError(field="message.text.body", rule="string_too_long", ...)]
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError


class FieldError(BaseModel):
    field: str
    rule: str
    message: str
    limit: Any | None = None


_LIMIT_KEYS = ("max_length", "min_length", "le", "ge", "lt", "gt", "pattern", "expected")


def field_errors(exc: ValidationError, data: Any = None) -> list[FieldError]:
    """One entry per problem, with the path as the producer wrote it.

    Pydantic puts the discriminator tag of a tagged union into the location
    (`message.text.text.body`); walking the input drops those tags (`message.text.body`).
    """
    return [
        FieldError(
            field=_path(err["loc"], data, missing=err["type"] == "missing") or "(body)",
            rule=err["type"],
            message=err["msg"],
            limit=next((err["ctx"][k] for k in _LIMIT_KEYS if k in err.get("ctx", {})), None),
        )
        for err in exc.errors(include_url=False, include_input=False)
    ]


def _path(loc: tuple[int | str, ...], data: Any, missing: bool = False) -> str:
    parts: list[str] = []
    node = data
    tag_skipped = False
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(node, dict) and isinstance(part, str) and not tag_skipped:
            repeated = not last and loc[i + 1] == part and node.get("type") == part  # `text.text.body`
            absent = part not in node and not (last and missing)  # a tag the producer never wrote
            if repeated or absent:
                tag_skipped = True
                continue
        parts.append(f"[{part}]" if isinstance(part, int) else part)
        tag_skipped = False
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            node = None
    return ".".join(parts).replace(".[", "[")


def describe(errors: list[FieldError]) -> str:
    """A one-line summary for logs and dead letters: `message.text.body: string_too_long (4096)`."""
    return "; ".join(
        f"{e.field}: {e.rule}" + (f" ({e.limit})" if e.limit is not None else "") + f" — {e.message}"
        for e in errors
    )
