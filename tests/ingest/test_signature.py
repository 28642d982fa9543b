"""Meta's X-Hub-Signature-256: HMAC-SHA256 of the exact bytes, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac

from pipeline.ingest.signature import sign, signature_matches

SECRET = b"sandbox-app-secret"
BODY = b'{"object":"whatsapp_business_account","entry":[]}'


def test_signature_is_hex_hmac_sha256_with_prefix() -> None:
    assert sign(SECRET, BODY) == "sha256=" + hmac.new(SECRET, BODY, hashlib.sha256).hexdigest()


def test_the_right_signature_matches_as_str_or_bytes() -> None:
    header = sign(SECRET, BODY)
    assert signature_matches(SECRET, BODY, header)
    assert signature_matches(SECRET, BODY, header.encode())


def test_wrong_secret_tampered_body_missing_or_garbage_do_not_match() -> None:
    header = sign(SECRET, BODY)
    assert not signature_matches(b"another-secret", BODY, header)
    assert not signature_matches(SECRET, BODY + b" ", header)  # any byte change, even whitespace
    assert not signature_matches(SECRET, BODY, None)
    assert not signature_matches(SECRET, BODY, "")
    assert not signature_matches(SECRET, BODY, header.removeprefix("sha256="))  # prefix required
    assert not signature_matches(SECRET, BODY, "sha1=" + hmac.new(SECRET, BODY, hashlib.sha1).hexdigest())
    assert not signature_matches(SECRET, BODY, "sha256=ünïcödé")  # attacker-controlled: no exception
