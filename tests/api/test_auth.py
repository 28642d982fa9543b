"""API keys: both headers, constant-time matching against every key, permissions per business number."""

from __future__ import annotations

import pytest

from pipeline.auth import ApiKeys, presented_key
from pipeline.config import ApiSettings


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"authorization": "Bearer abc-123-xyz"}, "abc-123-xyz"),
        ({"authorization": "bearer   abc-123-xyz  "}, "abc-123-xyz"),
        ({"x-api-key": "abc-123-xyz"}, "abc-123-xyz"),
        ({"authorization": "Bearer from-auth", "x-api-key": "from-header"}, "from-auth"),
        ({"authorization": "Basic YWJjOmRlZg=="}, None),
        ({"authorization": "Bearer "}, None),
        ({"x-api-key": "  "}, None),
        ({}, None),
    ],
)
def test_presented_key(headers: dict[str, str], expected: str | None) -> None:
    assert presented_key(headers) == expected


def test_keys_authenticate_and_scope_to_business_numbers() -> None:
    settings = ApiSettings(keys='{"all-numbers-key": "*", "one-number-key": ["1065403522"]}')
    keys = ApiKeys(settings.api_keys())
    everything = keys.authenticate({"x-api-key": "all-numbers-key"})
    limited = keys.authenticate({"authorization": "Bearer one-number-key"})
    assert everything is not None
    assert everything.allows("999999999")
    assert limited is not None
    assert limited.allows("1065403522")
    assert not limited.allows("999999999")
    assert keys.authenticate({"x-api-key": "one-number-key-but-longer"}) is None
    assert keys.authenticate({"x-api-key": "one-number-ke"}) is None
    assert ApiKeys(()).authenticate({"x-api-key": "anything"}) is None
