"""Test recipients: like a payment provider's test cards, the last four digits pick the outcome.

    scenario_for("16505559999").name   # 'undeliverable'
    scenario_for("16505551234").name   # 'ok'

Numbers whose last four digits start with 9 are reserved for scenarios (only those listed here do
anything special); use other numbers for ordinary traffic. The table is printed in docs/sandbox.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Answer(StrEnum):
    ACCEPT = "accept"  # 200 at once (after the normal latency)
    ERROR = "error"  # a synchronous Graph API error
    SLOW = "slow"  # 200 after `slow_seconds` more
    HANG = "hang"  # accepted (logged, webhooks follow) but the answer is held `hang_seconds`


class Statuses(StrEnum):
    NORMAL = "normal"  # sent, delivered, read (read with `read_probability`)
    FAILED = "failed"  # one failed status carrying `failure_code`
    TWICE = "twice"  # every status webhook posted twice
    READ_FIRST = "read_first"  # read arrives before delivered
    NO_DELIVERED = "no_delivered"  # sent then read; delivered never comes


@dataclass(frozen=True)
class Scenario:
    suffix: str
    name: str
    answer: Answer = Answer.ACCEPT
    error_code: int | None = None  # for Answer.ERROR
    statuses: Statuses = Statuses.NORMAL
    failure_code: int | None = None  # for Statuses.FAILED
    templates_exempt: bool = False  # a template is delivered normally (the 24 h window rule)
    what: str = ""


OK = Scenario("", "ok", what="accepted; sent, delivered, read")

SCENARIOS: tuple[Scenario, ...] = (
    Scenario("9999", "undeliverable", statuses=Statuses.FAILED, failure_code=131026,
             what="accepted (200), then a failed status with 131026, as Meta does"),
    Scenario("9047", "outside_window", statuses=Statuses.FAILED, failure_code=131047, templates_exempt=True,
             what="accepted (200), then failed 131047 — unless the message is a template"),
    Scenario("9000", "transient", Answer.ERROR, 131000, what="HTTP 500, code 131000"),
    Scenario("9503", "unavailable", Answer.ERROR, 2, what="HTTP 503, code 2"),
    Scenario("9429", "throttled", Answer.ERROR, 130429,
             what="code 130429 with HTTP `throughput_http_status` (400 by default)"),
    Scenario("9056", "pair_limited", Answer.ERROR, 131056, what="HTTP 400, code 131056"),
    Scenario("9190", "auth", Answer.ERROR, 190, what="HTTP 401, code 190 (as if the token expired)"),
    Scenario("9368", "policy", Answer.ERROR, 368, what="HTTP 400, code 368"),
    Scenario("9100", "invalid", Answer.ERROR, 100, what="HTTP 400, code 100"),
    Scenario("9005", "slow", Answer.SLOW, what="accepted after `slow_seconds` (5 s) more than the normal latency"),
    Scenario("9030", "timeout", Answer.HANG,
             what="accepted and logged, webhooks follow, but the answer is held `hang_seconds` (35 s)"),
    Scenario("9201", "duplicate_statuses", statuses=Statuses.TWICE, what="every status webhook posted twice"),
    Scenario("9202", "read_before_delivered", statuses=Statuses.READ_FIRST, what="read arrives before delivered"),
    Scenario("9203", "read_without_delivered", statuses=Statuses.NO_DELIVERED, what="sent, read; no delivered"),
)

_BY_SUFFIX = {s.suffix: s for s in SCENARIOS}


def scenario_for(wa_id: str) -> Scenario:
    return _BY_SUFFIX.get(wa_id[-4:], OK)
