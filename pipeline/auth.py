"""Who is calling: an API key from `Authorization: Bearer <key>` or `X-API-Key: <key>`.

Shared by every HTTP door that takes the API keys (the producer API and the store's read API), so that
neither stage imports the other.

    keys = ApiKeys(settings.api.api_keys())
    key = keys.authenticate(request.headers)     # ApiKey, or None → 401
    key.allows(phone_number_id)                  # False → 403
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence

from pipeline.config import ApiKey


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key the caller sent, from either header (`Authorization` wins when both are present)."""
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
        return None
    key = headers.get("x-api-key")
    return key.strip() if key and key.strip() else None


class ApiKeys:
    """The configured keys, compared in constant time.

    Both sides are hashed first so that the comparison also hides the length of the keys, and every
    key is compared on every call so that the time does not tell which (or how many) keys exist.
    """

    def __init__(self, keys: Sequence[ApiKey]) -> None:
        self._digests = [(_digest(k.key.get_secret_value()), k) for k in keys]

    def authenticate(self, headers: Mapping[str, str]) -> ApiKey | None:
        presented = presented_key(headers)
        if presented is None:
            return None
        digest = _digest(presented)
        match = None
        for candidate, key in self._digests:
            if hmac.compare_digest(candidate, digest):
                match = key
        return match


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
