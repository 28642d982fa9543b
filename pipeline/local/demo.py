"""`pipeline demo`: realistic traffic with a mix of outcomes, so the dashboards show life.

Sends through the producer API (the front door users take) to recipients from the sandbox's
test-number table (docs/sandbox.md): mostly deliverable, some undeliverable, outside the window,
throttled, pair-limited, slow, plus requests the API must reject. Against Meta (a real token) only
use it with numbers you own: it sends real messages.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass

import httpx
from rich.console import Console
from rich.live import Live
from rich.table import Table

# (share of traffic, recipient suffix from the sandbox's table, what users see)
MIX: tuple[tuple[float, str, str], ...] = (
    (0.78, "", "delivered and read"),
    (0.06, "9999", "undeliverable (failed status 131026)"),
    (0.04, "9047", "outside the 24 h window (failed status 131047)"),
    (0.03, "9202", "read before delivered"),
    (0.03, "9201", "duplicate status webhooks"),
    (0.02, "9056", "pair rate limit (131056), retried later"),
    (0.02, "9100", "invalid parameter (100), failed"),
    (0.01, "9005", "slow answer"),
    (0.01, "9429", "throughput exceeded (130429), retried"),
)


@dataclass(frozen=True)
class DemoPlan:
    rate_per_second: float
    duration_seconds: float
    invalid_share: float = 0.02  # requests the API must answer with 422


def recipient(rng: random.Random) -> str:
    [suffix] = rng.choices([s for _, s, _ in MIX], weights=[w for w, _, _ in MIX])
    body = f"1650{rng.randrange(10**6, 10**7)}"
    if not suffix:
        # Avoid accidentally ending in a scenario suffix.
        while body[-4:].startswith("9"):
            body = f"1650{rng.randrange(10**6, 10**7)}"
        return f"+{body}"
    return f"+{body[:-4]}{suffix}"


def request_body(rng: random.Random, invalid_share: float) -> dict[str, object]:
    if rng.random() < invalid_share:
        return {"to": "+0000", "message": {"type": "text", "text": {"body": ""}}}  # two field errors
    kind = rng.random()
    if kind < 0.7:
        message: dict[str, object] = {"type": "text", "text": {"body": f"Order {rng.randrange(10**5)} shipped"}}
    elif kind < 0.85:
        message = {
            "type": "interactive",
            "interactive": {
                "type": "button",
                "body": {"text": "Did your parcel arrive?"},
                "action": {"buttons": [
                    {"type": "reply", "reply": {"id": "yes", "title": "Yes"}},
                    {"type": "reply", "reply": {"id": "no", "title": "No"}},
                ]},
            },
        }
    else:
        message = {"type": "template", "template": {"name": "order_update", "language": {"code": "en_US"}}}
    return {"to": recipient(rng), "message": message, "metadata": {"source": "demo"}}


async def run_demo(api_url: str, api_key: str, plan: DemoPlan, seed: int | None = None) -> Counter[str]:
    """Post one batch per second at the planned rate; return the API's answers by status."""
    rng = random.Random(seed)  # traffic shaping, not security
    answers: Counter[str] = Counter()
    console = Console(stderr=True)
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=api_url, headers={"X-API-Key": api_key}, timeout=30) as client:
        with Live(_table(answers, 0.0), console=console, refresh_per_second=2) as live:
            second = 0
            while (elapsed := time.monotonic() - started) < plan.duration_seconds:
                count = int(plan.rate_per_second * (second + 1)) - int(plan.rate_per_second * second)
                items = [request_body(rng, plan.invalid_share) for _ in range(count)]
                try:
                    response = await client.post("/v1/messages:batch", json={"messages": items})
                    for item in response.json().get("results", []):
                        answers[str(item.get("status"))] += 1
                    if response.status_code >= 500:
                        answers[str(response.status_code)] += len(items)
                except httpx.HTTPError as exc:
                    answers[type(exc).__name__] += len(items)
                live.update(_table(answers, elapsed))
                second += 1
                await asyncio.sleep(max(0.0, started + second - time.monotonic()))
    return answers


def _table(answers: Counter[str], elapsed: float) -> Table:
    table = Table(title=f"pipeline demo — {elapsed:.0f}s (Ctrl-C to stop)")
    table.add_column("API answer")
    table.add_column("count", justify="right")
    for status, count in sorted(answers.items()):
        table.add_row(status, str(count))
    return table
