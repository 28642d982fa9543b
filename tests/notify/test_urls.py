"""Safe URLs: https only, public addresses only, at start and at every connection."""

from __future__ import annotations

import ipaddress
import re
import socket
from typing import Any

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from pipeline.config import SettingsError, load_settings
from pipeline.contracts.vocabulary import CallbackEventType
from pipeline.notify.service import check_safe_subscriptions
from pipeline.notify.settings import EVENT_TYPES, Subscription, parse_subscriptions
from pipeline.notify.urls import SafeResolver, UnsafeSubscription, UnsafeUrl, UrlPolicy, check_subscriptions

PRODUCTION = UrlPolicy(development=False, allow_private=False)
DEVELOPMENT = UrlPolicy(development=True, allow_private=False)
PERMISSIVE = UrlPolicy(development=False, allow_private=True)


def subscription(url: str) -> Subscription:
    return Subscription(phone_number_id="*", url=url, secret="s" * 16)


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("http://169.254.169.254/", "cloud metadata"),
        ("https://169.254.169.254/latest/meta-data", "cloud metadata"),
        ("https://10.0.0.1/", "private address"),
        ("https://192.168.1.10/hook", "private address"),
        ("https://[fe80::1]/", "link-local"),
        ("https://127.0.0.1:8443/", "loopback"),
        ("https://localhost/", "loopback"),  # a name that resolves to 127.0.0.1
        ("http://93.184.216.34/", "needs https"),
        ("http://hooks.example.com/", "only https"),
        ("https://[::ffff:10.0.0.1]/", "private address"),
    ],
)
async def test_production_refuses_with_the_rule_named(url: str, rule: str) -> None:
    with pytest.raises(UnsafeSubscription) as caught:
        await check_subscriptions([subscription(url)], PRODUCTION)
    [(name, why)] = caught.value.problems
    assert name.startswith("entry 1 (*->")
    assert rule in why


async def test_public_https_is_fine_and_an_unresolvable_name_only_warns() -> None:
    assert await check_subscriptions([subscription("https://93.184.216.34/hook")], PRODUCTION) == []
    [warning] = await check_subscriptions([subscription("https://does-not-exist.invalid/hook")], PRODUCTION)
    assert "does not resolve now" in warning


async def test_development_allows_loopback_over_http_but_still_no_private_ranges() -> None:
    assert await check_subscriptions([subscription("http://127.0.0.1:9104/callbacks")], DEVELOPMENT) == []
    assert await check_subscriptions([subscription("http://localhost:9104/callbacks")], DEVELOPMENT) == []
    with pytest.raises(UnsafeSubscription, match="private"):
        await check_subscriptions([subscription("https://10.0.0.1/")], DEVELOPMENT)
    with pytest.raises(UnsafeSubscription, match="only https"):
        await check_subscriptions([subscription("http://hooks.example.com/")], DEVELOPMENT)


async def test_allow_private_networks_opens_private_ranges_but_never_metadata() -> None:
    await check_subscriptions([subscription("https://10.0.0.1/")], PERMISSIVE)
    with pytest.raises(UnsafeSubscription, match="metadata"):
        await check_subscriptions([subscription("https://169.254.169.254/")], PERMISSIVE)
    with pytest.raises(UnsafeUrl, match="metadata"):
        PERMISSIVE.check_address(ipaddress.ip_address("fd00:ec2::254"))


async def test_every_unsafe_entry_is_reported_at_once() -> None:
    subs = [subscription("http://169.254.169.254/"), subscription("https://93.184.216.34/"),
            subscription("https://10.0.0.1/")]
    with pytest.raises(UnsafeSubscription) as caught:
        await check_subscriptions(subs, PRODUCTION)
    assert [name.split(" ")[1] for name, _ in caught.value.problems] == ["1", "3"]


async def test_the_stage_refuses_to_start_in_production_with_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_ENV", "production")
    monkeypatch.setenv("API_KEYS", '{"production-key-1": "*"}')
    subs = ('[{"phone_number_id": "*", "url": "http://169.254.169.254/", "secret": "0123456789abcdef"},'
            ' {"phone_number_id": "106540352242922", "url": "https://10.0.0.1/", "secret": "0123456789abcdef"},'
            ' {"phone_number_id": "*", "url": "https://localhost/x", "secret": "0123456789abcdef"}]')
    settings = load_settings(notify={"subscriptions": subs})
    with pytest.raises(SettingsError) as caught:
        await check_safe_subscriptions(settings)
    text = str(caught.value)
    assert "NOTIFY_SUBSCRIPTIONS entry 1 (*->169.254.169.254): 169.254.169.254 is a cloud metadata address" in text
    assert "NOTIFY_SUBSCRIPTIONS entry 2 (106540352242922->10.0.0.1): 10.0.0.1 is a private address" in text
    assert "NOTIFY_SUBSCRIPTIONS entry 3 (*->localhost): 127.0.0.1 is a loopback address" in text
    assert "0123456789abcdef" not in text


class _Pointing(AbstractResolver):
    """A DNS answer we choose: a name re-pointed after start (rebinding)."""

    def __init__(self, *addresses: str) -> None:
        self._addresses = addresses

    async def resolve(self, host: str, port: int = 0, family: Any = socket.AF_INET) -> list[ResolveResult]:
        return [ResolveResult(hostname=host, host=a, port=port, family=socket.AF_INET, proto=0, flags=0)
                for a in self._addresses]

    async def close(self) -> None:
        return None


async def test_the_resolver_drops_refused_addresses_at_connect_time() -> None:
    mixed = SafeResolver(PRODUCTION, _Pointing("10.1.2.3", "93.184.216.34"))
    assert [a["host"] for a in await mixed.resolve("hooks.example.com", 443)] == ["93.184.216.34"]
    rebound = SafeResolver(PRODUCTION, _Pointing("169.254.169.254"))
    with pytest.raises(OSError, match="only to refused addresses"):
        await rebound.resolve("hooks.example.com", 443)


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("{}", "must be a JSON list"),
        ("[{", "must be a JSON list"),
        ('[{"phone_number_id": "abc", "url": "https://x.example", "secret": "0123456789abcdef"}]',
         "entry 1: phone_number_id"),
        ('[{"phone_number_id": "*", "url": "ftp://x.example", "secret": "0123456789abcdef"}]', "entry 1: url"),
        ('[{"phone_number_id": "*", "url": "https://x.example", "secret": "short"}]',
         "entry 1: secret: Value error, must be at least 16 characters"),
        ('[{"phone_number_id": "*", "url": "https://x.example", "secret": "0123456789abcdef", "events": ["nope"]}]',
         "entry 1: events"),
        ('[{"phone_number_id": "*", "url": "https://u:p@x.example", "secret": "0123456789abcdef"}]',
         "must not carry credentials"),
    ],
)
def test_bad_subscriptions_name_the_entry_and_the_rule(raw: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)) as caught:
        parse_subscriptions(raw)
    assert "0123456789abcdef" not in str(caught.value)


def test_the_settings_know_exactly_the_callback_event_types() -> None:
    assert {t.value for t in CallbackEventType} == EVENT_TYPES


def test_a_bad_setting_is_reported_as_the_variable() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(notify={"subscriptions": "[1]"})
    [(variable, _)] = caught.value.problems
    assert variable == "NOTIFY_SUBSCRIPTIONS"
