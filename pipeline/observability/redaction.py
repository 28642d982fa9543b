"""Keep secrets and phone numbers out of everything an operator reads.

    mask_phone("+16505551234")   # "+1*******234"
    redact({"access_token": "EAAG…", "to": "+16505551234"})
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import SecretStr

REDACTED = "[redacted]"

# Keys whose values are secrets wherever they appear (log fields, error bodies, headers).
_SECRET_KEY = re.compile(r"(token|secret|password|passwd|authorization|api[_-]?key|signature|cookie)", re.I)
# Keys that hold a person's phone number.
PHONE_KEYS = frozenset({"to", "recipient_id", "from", "from_", "wa_id", "phone", "recipient", "input"})
# Bearer tokens and Meta access tokens (EAA…) inside free text, e.g. an exception message.
_TOKEN_IN_TEXT = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]{8,}|\bEAA[A-Za-z0-9]{20,}")

# ITU-T E.164 country codes of one and two digits; every other code has three. A table because
# masking must keep the country (useful when debugging) and nothing else.
_ONE_DIGIT = {"1", "7"}
_TWO_DIGIT = {
    "20", "27", "30", "31", "32", "33", "34", "36", "39", "40", "41", "43", "44", "45", "46", "47", "48", "49",
    "51", "52", "53", "54", "55", "56", "57", "58", "60", "61", "62", "63", "64", "65", "66", "81", "82", "84",
    "86", "90", "91", "92", "93", "94", "95", "98",
}


def mask_phone(value: str) -> str:
    """Country code and the last 3 digits survive; everything between becomes `*`."""
    digits = value.lstrip("+")
    if not digits.isdigit() or len(digits) < 7:
        return "***"
    cc = 1 if digits[:1] in _ONE_DIGIT else 2 if digits[:2] in _TWO_DIGIT else 3
    return f"+{digits[:cc]}{'*' * (len(digits) - cc - 3)}{digits[-3:]}"


def scrub_text(text: str) -> str:
    return _TOKEN_IN_TEXT.sub(lambda m: f"{m.group(1) or ''}{REDACTED}", text)


def redact(value: Any, key: str | None = None) -> Any:
    """Recursively redact secrets and mask phone numbers in a log event or error payload."""
    if isinstance(value, SecretStr):
        return REDACTED
    if key is not None and _SECRET_KEY.search(key):
        return REDACTED if value not in (None, "") else value
    if isinstance(value, Mapping):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v, key) for v in value]
    if isinstance(value, str):
        if key in PHONE_KEYS:
            return mask_phone(value)
        return scrub_text(value)
    if hasattr(value, "model_dump"):  # pydantic models (settings, contracts): redact their fields
        return redact(value.model_dump(mode="json"), key)
    return value
