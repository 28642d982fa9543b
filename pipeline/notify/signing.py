"""`X-Delivery-Signature`: what lets a receiver reject forged and replayed callbacks.

    header = signature_header(secret, body, timestamp=1764763200)
    # "t=1764763200,v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd"
    verify(secret, body, header, tolerance_seconds=300)   # raises SignatureError when forged or old

The signed text is `"<t>.<body>"`: the timestamp is inside the MAC, so an old call replayed later
fails the tolerance check and cannot be re-stamped without the secret (Stripe's scheme, which many
receivers already know). docs/callbacks.md shows the same verification in Python and Node.
"""

from __future__ import annotations

import hashlib
import hmac
import time

HEADER = "X-Delivery-Signature"
DEFAULT_TOLERANCE_SECONDS = 300


class SignatureError(ValueError):
    pass


def signature(secret: str, body: bytes, timestamp: int) -> str:
    return hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def signature_header(secret: str, body: bytes, timestamp: int | None = None) -> str:
    stamp = int(time.time()) if timestamp is None else timestamp
    return f"t={stamp},v1={signature(secret, body, stamp)}"


def verify(
    secret: str, body: bytes, header: str, *, tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> int:
    """The header's timestamp when `header` signs `body` with `secret` within the tolerance window."""
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        fields.setdefault(name, []).append(value)
    stamps = fields.get("t", [])
    if len(stamps) != 1 or not stamps[0].isdigit():
        raise SignatureError("no timestamp (t=) in the signature header")
    stamp = int(stamps[0])
    if abs((time.time() if now is None else now) - stamp) > tolerance_seconds:
        raise SignatureError("timestamp outside the tolerance window")
    expected = signature(secret, body, stamp)
    if not any(hmac.compare_digest(expected, given) for given in fields.get("v1", [])):
        raise SignatureError("signature does not match")
    return stamp
