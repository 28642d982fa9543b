"""Keep secrets and phone numbers out of everything an operator reads.

    mask_phone("+16505551234")                        # "+1*******234"
    bsuid_ref("US.13491208655302741918")              # "US.bs_5c0e…" — a BSUID names a person too
    redact({"access_token": "EAAG…", "to": "+16505551234"})
    register_secrets(settings)                         # configured secrets vanish from any text
    scrub_url("/webhooks?hub.verify_token=abc&x=1")   # "/webhooks?hub.verify_token=[redacted]&x=1"
    wamid_ref("wamid.HBgL…")                           # "wm_…" — the same in every stage

Three layers, so that no single mistake leaks a secret: secret-looking *keys* are redacted wherever
they appear; known token *shapes* (Bearer …, Meta's EAA… tokens) are cut out of free text; and the
*values* of the secrets this process was configured with are cut out of every string.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
from collections.abc import Iterable, Mapping
from datetime import date, time, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode
from uuid import UUID

from pydantic import BaseModel, SecretStr

REDACTED = "[redacted]"

# Keys whose values are secrets wherever they appear (log fields, error bodies, headers, query strings).
_SECRET_KEY = re.compile(r"(token|secret|password|passwd|authorization|api[_-]?key|signature|cookie)", re.I)
# Keys that hold a person's phone number.
PHONE_KEYS = frozenset({"to", "recipient_id", "from", "from_", "wa_id", "phone", "recipient", "input"})
# Keys that hold a business-scoped user id (BSUID): Meta's stable name for one person.
USER_ID_KEYS = frozenset({
    "user_id", "parent_user_id", "from_user_id", "recipient_user_id", "recipient_parent_user_id",
    "recipient_participant_user_id",
})
# A BSUID (`US.13491208655302741918`, parent `US.ENT.…`), whole or in free text. In text a digit is
# required in the id, so that words after a capitalised abbreviation ("OK.Thanks") stay readable.
_BSUID = re.compile(r"^[A-Z]{2}\.(?:ENT\.)?[0-9A-Za-z]{1,128}$")
_BSUID_IN_TEXT = re.compile(r"\b[A-Z]{2}\.(?:ENT\.)?(?=[A-Za-z]*[0-9])[0-9A-Za-z]{6,128}\b")
# Bearer tokens and Meta access tokens (EAA…) inside free text, e.g. an exception message.
_TOKEN_IN_TEXT = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]{8,}|\bEAA[A-Za-z0-9]{20,}")
# Keys that hold a wamid: Meta's message ids are base64 of a record that holds the recipient's number.
WAMID_KEYS = frozenset({"wamid", "context_wamid", "message_id"})
# A wamid inside free text (an error message that quotes one): the same reference as under its keys.
_WAMID_IN_TEXT = re.compile(r"\bwamid\.[A-Za-z0-9+/=_-]+")
# A `+`-prefixed E.164 number in free text ("sending to +16505551234"). Bare digit runs are left
# alone: business phone number ids and timestamps look the same and are needed for debugging.
_PHONE_IN_TEXT = re.compile(r"\+\d{7,15}\b")
# Configured secrets shorter than this are not scrubbed from text: replacing a 3-letter value
# everywhere would mangle logs, and such a value is no secret anyway.
_MIN_SECRET_LENGTH = 8

# ITU-T E.164 country codes of one and two digits; every other code has three. A table because
# masking must keep the country (useful when debugging) and nothing else.
_ONE_DIGIT = {"1", "7"}
_TWO_DIGIT = {
    "20", "27", "30", "31", "32", "33", "34", "36", "39", "40", "41", "43", "44", "45", "46", "47", "48", "49",
    "51", "52", "53", "54", "55", "56", "57", "58", "60", "61", "62", "63", "64", "65", "66", "81", "82", "84",
    "86", "90", "91", "92", "93", "94", "95", "98",
}

_known_secrets: set[str] = set()
_known_pattern: re.Pattern[str] | None = None


def mask_phone(value: str) -> str:
    """Country code and the last 3 digits survive; everything between becomes `*`."""
    digits = value.lstrip("+")
    if not digits.isdigit() or len(digits) < 7:
        return "***"
    cc = 1 if digits[:1] in _ONE_DIGIT else 2 if digits[:2] in _TWO_DIGIT else 3
    return f"+{digits[:cc]}{'*' * (len(digits) - cc - 3)}{digits[-3:]}"


def bsuid_ref(bsuid: str) -> str:
    """A stable short reference to a BSUID for logs: its country (as a masked phone keeps it) and a hash.

    Unkeyed, like `wamid_ref`, so an operator holding the BSUID can find its lines; unlike a phone
    number, a BSUID's 20-odd characters are far too many to recover by hashing guesses.
    """
    country, _, _ = bsuid.partition(".")
    return f"{country[:2]}.bs_" + hashlib.blake2b(bsuid.encode("utf-8", "replace"), digest_size=6).hexdigest()


def wamid_ref(wamid: str) -> str:
    """A stable short reference to a wamid for logs and spans: the same in every stage and process.

    Unkeyed on purpose, so that an operator holding Meta's wamid can compute it (`pipeline wamid-ref`)
    and find the log lines; 48 bits keep collisions negligible within any retention window of logs.
    """
    return "wm_" + hashlib.blake2b(wamid.encode("utf-8", "replace"), digest_size=6).hexdigest()


@functools.lru_cache(maxsize=4096)  # field names repeat: a regex per field of every log line otherwise
def is_secret_key(key: str) -> bool:
    return _SECRET_KEY.search(key) is not None


def register_secrets(values: Iterable[SecretStr | str | None] | BaseModel) -> None:
    """Remember secret values so that `scrub_text` removes them from any text, whatever its shape.

    Accepts the settings tree (every `SecretStr` in it, API keys included) or explicit values.
    """
    global _known_pattern
    found = _secrets_in(values) if isinstance(values, BaseModel) else list(values)
    for value in found:
        raw = value.get_secret_value() if isinstance(value, SecretStr) else value
        if raw and len(raw) >= _MIN_SECRET_LENGTH:
            _known_secrets.add(raw)
    if _known_secrets:
        # Longest first, so a secret that contains another is removed whole.
        alternatives = sorted(_known_secrets, key=len, reverse=True)
        _known_pattern = re.compile("|".join(re.escape(s) for s in alternatives))


def _secrets_in(model: BaseModel) -> list[SecretStr | str]:
    found: list[SecretStr | str] = []
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, SecretStr):
            found.append(value)
        elif isinstance(value, BaseModel):
            found.extend(_secrets_in(value))
    api_keys = getattr(model, "api_keys", None)
    if callable(api_keys):  # ApiSettings keeps its keys inside one JSON SecretStr
        found.extend(key.key for key in api_keys())
    subscriptions = getattr(model, "subscription_list", None)
    if callable(subscriptions):  # NotifySettings keeps the signing secrets inside one JSON SecretStr
        found.extend(subscription.secret for subscription in subscriptions())
    return found


def scrub_text(text: str) -> str:
    # Substring tests first: a regex scan of every field of every log line cost more than the rest
    # of the line's redaction, and both token shapes start with a fixed word.
    if "Bearer" in text or "EAA" in text:
        text = _TOKEN_IN_TEXT.sub(lambda m: f"{m.group(1) or ''}{REDACTED}", text)
    if _known_pattern is not None:
        text = _known_pattern.sub(REDACTED, text)
    if "wamid." in text:  # before the phone numbers: base64 can hold a "+" and digits
        text = _WAMID_IN_TEXT.sub(lambda m: wamid_ref(m.group(0)), text)
    if "+" in text:
        text = _PHONE_IN_TEXT.sub(lambda m: mask_phone(m.group(0)), text)
    if "." in text:
        text = _BSUID_IN_TEXT.sub(lambda m: bsuid_ref(m.group(0)), text)
    return text


def scrub_query(query: str) -> str:
    """Redact the values of secret-looking parameters (`hub.verify_token`, `access_token`, …)."""
    if not query:
        return query
    pairs = parse_qsl(query, keep_blank_values=True)
    if not any(is_secret_key(k) for k, _ in pairs):
        return scrub_text(query)
    return scrub_text(urlencode([(k, REDACTED if is_secret_key(k) else v) for k, v in pairs], safe="[]"))


def scrub_url(url: str) -> str:
    """A URL or request target with secret query parameters redacted."""
    base, sep, query = url.partition("?")
    if not sep:
        return scrub_text(url)
    fragment = ""
    if "#" in query:
        query, _, fragment = query.partition("#")
        fragment = "#" + fragment
    return f"{scrub_text(base)}?{scrub_query(query)}{fragment}"


def _str_by_key(value: str, key: str | None) -> str:
    if key in PHONE_KEYS:  # `to`, `recipient`, `input`: a phone number or, since BSUIDs, one of those
        return bsuid_ref(value) if _BSUID.match(value) else mask_phone(value)
    if key in USER_ID_KEYS:
        return bsuid_ref(value) if _BSUID.match(value) else scrub_text(value)
    if key in WAMID_KEYS:
        return wamid_ref(value)
    return scrub_text(value)


def redact(value: Any, key: str | None = None) -> Any:
    """Recursively redact secrets and mask phone numbers in a log event or error payload.

    Anything that is not plain data (exceptions, arbitrary objects) becomes scrubbed text here, so
    that no `str()` further down the line can reveal what this function never saw.
    """
    kind = type(value)
    if kind is str:  # most fields of every log line: the checks below in the same order, without the walk
        if key is not None:
            if is_secret_key(key):
                return REDACTED if value != "" else value
            return _str_by_key(value, key)
        return scrub_text(value)
    if kind is int or kind is float:
        return value if key is None or not is_secret_key(key) else REDACTED
    if value is None or isinstance(value, bool):
        return value  # says whether something is set or valid, never what it is
    if isinstance(value, SecretStr):
        return REDACTED
    if key is not None and is_secret_key(key):
        return REDACTED if value != "" else value
    if isinstance(value, int | float | date | time | timedelta | UUID):
        return value  # the JSON renderer formats them
    if isinstance(value, str):
        return _str_by_key(value, key)
    if isinstance(value, Mapping):
        return {str(k): redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact(v, key) for v in value]
    if isinstance(value, BaseModel):  # settings, contracts: SecretStr fields dump as "**********"
        return redact(value.model_dump(mode="json"), key)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return redact({f.name: getattr(value, f.name) for f in dataclasses.fields(value)}, key)
    if isinstance(value, BaseException):
        return scrub_text(f"{type(value).__name__}: {value}")
    if isinstance(value, bytes):
        return scrub_text(value.decode("utf-8", "replace"))
    return scrub_text(str(value))
