"""Which callback URLs notify may call: https only, public addresses only, checked again on every connect.

    policy = UrlPolicy(development=False, allow_private=False)
    await check_subscriptions(subscriptions, policy)    # raises UnsafeSubscription naming entry and rule
    resolver = SafeResolver(policy)                    # aiohttp resolver: refuses unsafe answers later too

Rules (docs/callbacks.md, "Safe URLs"):
- `https` only; `http` only to a loopback address in development (a local receiver).
- An address that is not globally routable — private, loopback, link-local, CGNAT, reserved — is
  refused unless NOTIFY_ALLOW_PRIVATE_NETWORKS; loopback is also fine in development.
- Cloud metadata addresses are refused always, whatever the flags.
- The check runs on every address a name resolves to, at start (a clear error) and at each connection
  (`SafeResolver`), so a name re-pointed at 169.254.169.254 after start (DNS rebinding) gets nowhere.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from pipeline.notify.settings import Subscription

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200")  # AWS, ECS, AWS v6, Alibaba
)


class UnsafeUrl(ValueError):
    """A URL or address breaks a rule; the message names the rule."""


class UnsafeSubscription(ValueError):
    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  {name}: {why}" for name, why in problems)
        super().__init__(f"unsafe callback subscription(s) in NOTIFY_SUBSCRIPTIONS:\n{lines}")


@dataclass(frozen=True)
class UrlPolicy:
    development: bool
    allow_private: bool

    def check_address(self, address: IPAddress, *, scheme: str = "https") -> None:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if address in METADATA_ADDRESSES:
            raise UnsafeUrl(f"{address} is a cloud metadata address (always refused)")
        if address.is_loopback and self.development:
            return
        if scheme != "https":
            raise UnsafeUrl(f"http is allowed only to a loopback address in development; {address} needs https")
        if address.is_multicast or address.is_unspecified:
            raise UnsafeUrl(f"{address} is not a unicast address")
        if not address.is_global and not self.allow_private:
            kind = "loopback" if address.is_loopback else "link-local" if address.is_link_local else "private"
            raise UnsafeUrl(
                f"{address} is a {kind} address (refused unless NOTIFY_ALLOW_PRIVATE_NETWORKS=true)"
            )

    def check_url(self, url: str) -> tuple[str, str, IPAddress | None]:
        """Scheme and host of `url`, with the address when the host is an IP literal (checked here)."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.scheme not in ("http", "https"):
            raise UnsafeUrl("only https URLs are allowed")
        try:
            literal: IPAddress | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            self.check_address(literal, scheme=parts.scheme)
        elif parts.scheme != "https" and not (self.development and host == "localhost"):
            raise UnsafeUrl("only https URLs are allowed (http only to loopback in development)")
        return parts.scheme, host, literal


async def resolve(host: str, port: int = 443) -> list[IPAddress]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos}, key=str)


async def check_subscriptions(subscriptions: Iterable[Subscription], policy: UrlPolicy) -> list[str]:
    """Refuse (all at once) every subscription whose URL or resolved addresses break a rule.

    Returns warnings for names that did not resolve now (checked again at each connection).
    """
    problems: list[tuple[str, str]] = []
    warnings: list[str] = []
    for index, subscription in enumerate(subscriptions, start=1):
        name = f"entry {index} ({subscription.name})"
        try:
            scheme, host, literal = policy.check_url(subscription.url)
            if literal is None:
                try:
                    addresses = await resolve(host)
                except OSError as exc:
                    warnings.append(f"{name}: {host} does not resolve now ({exc}); checked again at each connection")
                    continue
                for address in addresses:
                    policy.check_address(address, scheme=scheme)
        except UnsafeUrl as exc:
            problems.append((name, str(exc)))
    if problems:
        raise UnsafeSubscription(problems)
    return warnings


class SafeResolver(AbstractResolver):
    """aiohttp's default resolver, minus every answer the policy refuses (no answer left: an OSError)."""

    def __init__(self, policy: UrlPolicy, inner: AbstractResolver | None = None) -> None:
        self._policy = policy
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answers = await self._inner.resolve(host, port, family)
        safe: list[ResolveResult] = []
        refused: list[str] = []
        for answer in answers:
            try:
                self._policy.check_address(ipaddress.ip_address(answer["host"]))
            except UnsafeUrl as exc:
                refused.append(str(exc))
                continue
            safe.append(answer)
        if not safe:
            raise OSError(f"{host} resolves only to refused addresses: {'; '.join(refused)}")
        return safe

    async def close(self) -> None:
        await self._inner.close()
