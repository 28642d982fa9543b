"""`pipeline demo`: realistic traffic with a mix of outcomes, so the dashboards show life.

    pipeline demo                      # 60 s at 20/s; delivery outcomes live, a summary at the end or on Ctrl-C

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
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx
from rich.console import Console
from rich.live import Live
from rich.table import Table

from pipeline.local.status import OUTCOMES, scrape

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


@dataclass
class DemoReport:
    """What the demo did so far: the API's answers, and delivery outcomes counted by the stages since the
    start (read from their `/metrics`). Filled while running, so Ctrl-C still has a summary."""

    answers: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    elapsed: float = 0.0

    def summary(self) -> str:
        outcomes = ", ".join(f"{k} {self.outcomes[k]}" for k in OUTCOMES)
        answers = ", ".join(f"{status}: {count}" for status, count in sorted(self.answers.items()))
        return f"{self.elapsed:.0f} s — outcomes: {outcomes} — API answers: {answers or 'none'}"


async def run_demo(
    api_url: str, api_key: str, plan: DemoPlan, seed: int | None = None, *,
    metrics_urls: Sequence[str] = (), report: DemoReport | None = None,
) -> DemoReport:
    """Post one batch per second at the planned rate; show delivery outcomes as the stages count them."""
    rng = random.Random(seed)  # traffic shaping, not security
    report = report or DemoReport()
    console = Console(stderr=True)
    started = time.monotonic()
    baseline = await asyncio.to_thread(scrape, metrics_urls)
    async with httpx.AsyncClient(base_url=api_url, headers={"X-API-Key": api_key}, timeout=30) as client:
        with Live(_table(report), console=console, refresh_per_second=2) as live:
            second = 0
            while (elapsed := time.monotonic() - started) < plan.duration_seconds:
                count = int(plan.rate_per_second * (second + 1)) - int(plan.rate_per_second * second)
                items = [request_body(rng, plan.invalid_share) for _ in range(count)]
                try:
                    response = await client.post("/v1/messages:batch", json={"messages": items})
                    for item in response.json().get("results", []):
                        report.answers[str(item.get("status"))] += 1
                    if response.status_code >= 500:
                        report.answers[str(response.status_code)] += len(items)
                except httpx.HTTPError as exc:
                    report.answers[type(exc).__name__] += len(items)
                now = await asyncio.to_thread(scrape, metrics_urls)
                report.outcomes = Counter({k: max(0, now[k] - baseline[k]) for k in OUTCOMES})
                report.elapsed = elapsed
                live.update(_table(report))
                second += 1
                await asyncio.sleep(max(0.0, started + second - time.monotonic()))
    report.elapsed = time.monotonic() - started
    return report


def _table(report: DemoReport) -> Table:
    table = Table(title=f"pipeline demo — {report.elapsed:.0f}s (Ctrl-C to stop)")
    table.add_column("delivery outcome")
    table.add_column("count", justify="right")
    for outcome in OUTCOMES:
        table.add_row(outcome, str(report.outcomes[outcome]))
    rejected = sum(c for status, c in report.answers.items() if status != "202")
    table.add_row("refused by the API", str(rejected))
    return table
