"""Meta's webhook signature: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(app_secret, raw body)>`.

    header = sign(b"app-secret", body)                 # "sha256=3f…"
    signature_matches(b"app-secret", body, header)     # True; constant time
"""

from __future__ import annotations

import hashlib
import hmac

PREFIX = "sha256="


def sign(app_secret: bytes, body: bytes) -> str:
    return PREFIX + hmac.new(app_secret, body, hashlib.sha256).hexdigest()


def signature_matches(app_secret: bytes, body: bytes, header: bytes | str | None) -> bool:
    """True when `header` is the signature of exactly these bytes (never parse the body first)."""
    if not header:
        return False
    given = header.encode("latin-1", "replace") if isinstance(header, str) else header
    # Bytes, not str: compare_digest refuses non-ASCII str, and a header is attacker-controlled.
    return hmac.compare_digest(sign(app_secret, body).encode("ascii"), given.strip())
