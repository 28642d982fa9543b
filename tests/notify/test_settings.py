"""NOTIFY_* settings: the signing secrets are secrets everywhere."""

from __future__ import annotations

import json

from pipeline.config import load_settings
from pipeline.observability.redaction import register_secrets, scrub_text

SECRET = "whsec_never-in-a-log-0123456789"


def test_signing_secrets_are_scrubbed_from_any_text_and_never_shown_by_the_settings() -> None:
    subscriptions = [{"phone_number_id": "*", "url": "https://hooks.example.com/wa", "secret": SECRET}]
    settings = load_settings(notify={"subscriptions": json.dumps(subscriptions)})
    assert SECRET not in repr(settings) + str(settings.model_dump())
    register_secrets(settings)
    assert SECRET not in scrub_text(f"an error mentioning {SECRET} by accident")
    [subscription] = settings.notify.subscription_list()
    assert SECRET not in repr(subscription)
    assert subscription.name == "*->hooks.example.com"
