"""The read API's query parameters, checked: a bad one is a FieldError naming the field and the rule.

    q = QueryParams(request.query_params)
    limit = q.limit()                      # 1..200, default 50
    since = q.time("since")
    if q.errors: ...                       # a 422 listing q.errors
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime

from pipeline.contracts import FieldError
from pipeline.store.backend import Cursor
from pipeline.store.rows import STATUS_RANK
from pipeline.store.views import decode_cursor

MAX_LIMIT = 200
_WORD = re.compile(r"\w+\*?")
_PHONE_NUMBER_ID = re.compile(r"^\d{5,20}$")
_FORMATTING = re.compile(r"[\s().\-+]")


def normalise_wa_id(value: str) -> str | None:
    """`+1 (650) 555-1234`, `16505551234` → `16505551234`; None unless 8 to 15 digits remain."""
    digits = _FORMATTING.sub("", value)
    if digits.startswith("00"):
        digits = digits[2:]
    return digits if digits.isdigit() and 8 <= len(digits) <= 15 else None


class QueryParams:
    def __init__(self, params: Mapping[str, str]) -> None:
        self.params = params
        self.errors: list[FieldError] = []

    def _fail(self, field: str, rule: str, message: str, limit: object = None) -> None:
        self.errors.append(FieldError(field=field, rule=rule, message=message, limit=limit))

    def limit(self) -> int:
        raw = self.params.get("limit")
        if raw is None:
            return 50
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
            self._fail("limit", "range", f"must be an integer from 1 to {MAX_LIMIT}", MAX_LIMIT)
            return 50
        return int(raw)

    def cursor(self, field: str) -> Cursor | None:
        raw = self.params.get(field)
        if raw is None:
            return None
        cursor = decode_cursor(raw)
        if cursor is None:
            self._fail(field, "cursor", "must be a next_cursor value returned by this API")
        return cursor

    def time(self, field: str) -> datetime | None:
        raw = self.params.get(field)
        if raw is None:
            return None
        try:
            value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            value = None
        if value is None or value.tzinfo is None:
            self._fail(field, "datetime", "must be an RFC 3339 time with a timezone, e.g. 2026-11-24T10:00:00Z")
            return None
        return value

    def phone_number_id(self) -> str | None:
        raw = self.params.get("phone_number_id")
        if raw is not None and not _PHONE_NUMBER_ID.match(raw):
            self._fail("phone_number_id", "pattern", "must be 5 to 20 digits", r"^\d{5,20}$")
            return None
        return raw

    def contact(self, field: str) -> str | None:
        raw = self.params.get(field)
        if raw is None:
            return None
        wa_id = normalise_wa_id(raw)
        if wa_id is None:
            self._fail(field, "phone_number", "must be a phone number of 8 to 15 digits, e.g. +16505551234")
        return wa_id

    def status_rank(self) -> int | None:
        raw = self.params.get("status")
        if raw is None:
            return None
        if raw not in STATUS_RANK:
            self._fail("status", "enum", f"must be one of {', '.join(STATUS_RANK)}", list(STATUS_RANK))
            return None
        return STATUS_RANK[raw]

    def words(self) -> tuple[str, ...]:
        raw = self.params.get("q")
        if raw is None:
            return ()
        if len(raw) > 200:
            self._fail("q", "too_long", "at most 200 characters", 200)
            return ()
        words = tuple(w.lower() for w in _WORD.findall(raw))
        if not words:
            self._fail("q", "words", "must contain at least one word (letters or digits)")
        return words

    def window(self, since: datetime | None, until: datetime | None) -> None:
        if since is not None and until is not None and since >= until:
            self._fail("until", "after_since", "must be later than `since`")
