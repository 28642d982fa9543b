"""Bad signatures and verify-token failures: a warning naming the source address, and a count."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from tests.ingest.conftest import Running, status, webhook

pytestmark = pytest.mark.kafka


async def test_bad_signature_is_a_warning_with_the_source(ingest: Running) -> None:
    before = await ingest.metric("delivery_webhooks_total", outcome="bad_signature")
    body = webhook(status("wamid.security-1", "sent"))
    with capture_logs() as logs:
        response = await ingest.post(body, headers={"X-Hub-Signature-256": "sha256=" + "0" * 64,
                                                    "X-Forwarded-For": "203.0.113.7"})
    assert response.status_code == 401
    (entry,) = [e for e in logs if e["event"] == "webhook_rejected"]
    assert entry["log_level"] == "warning"
    assert entry["reason"] == "bad signature"
    assert entry["source"] == "203.0.113.7"  # behind a trusted proxy (here: loopback), the client's address
    assert await ingest.metric("delivery_webhooks_total", outcome="bad_signature") == before + 1


async def test_wrong_verify_token_is_a_warning_with_the_source(ingest: Running) -> None:
    with capture_logs() as logs:
        response = await ingest.http.get(
            "/webhooks/whatsapp", params={"hub.mode": "subscribe", "hub.verify_token": "guess", "hub.challenge": "1"}
        )
    assert response.status_code == 403
    (entry,) = [e for e in logs if e["event"] == "webhook_verification_failed"]
    assert entry["log_level"] == "warning"
    assert entry["source"] == "127.0.0.1"
    assert "guess" not in str(entry)  # the token given is never logged
