"""Which status webhooks follow an accepted message, and when.

    for delay, item in plan_statuses(accepted, scenario, settings, random.Random()):
        dispatcher.push(delay, accepted.phone_number_id, item)

Each status carries the time it *happened* (`timestamp`); `delay` is when it is *posted*. The two
differ on purpose when statuses are reordered or duplicated, as Meta's do.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any

from pipeline.sandbox import payloads
from pipeline.sandbox.errors import status_error
from pipeline.sandbox.scenarios import Scenario, Statuses
from pipeline.sandbox.settings import SandboxSettings

_FAILURE_DETAILS = {
    131026: "Message could not be delivered: the recipient cannot receive this message.",
    131047: "Message failed to send because more than 24 hours have passed since the customer last replied "
            "to this number.",
}
_LATE = 0.05  # how much later a reordered status is posted than the one it should have preceded


@dataclass(frozen=True, slots=True)
class Accepted:
    """A message the sandbox answered 200 to."""

    phone_number_id: str
    wa_id: str  # the recipient's number; their BSUID for a BSUID send to a user the sandbox never saw
    user_id: str  # the recipient's BSUID
    wamid: str
    request_id: str | None
    template_name: str | None
    accepted_at: float  # epoch seconds


def conversation_id(phone_number_id: str, wa_id: str, category: str) -> str:
    # Stable per (number, user, category), like a conversation that lasts its 24 h.
    return hashlib.sha256(f"{phone_number_id}:{wa_id}:{category}".encode()).hexdigest()[:32]


def plan_statuses(
    message: Accepted, scenario: Scenario, settings: SandboxSettings, rng: random.Random
) -> list[tuple[float, dict[str, Any]]]:
    """(seconds from now, status item) pairs, in posting order."""
    t0 = message.accepted_at

    def make(kind: str, after: float, **extra: Any) -> tuple[float, dict[str, Any]]:
        return after, payloads.status(
            message.wamid, kind, int(t0 + after), message.wa_id, message.request_id,
            recipient_user_id=message.user_id, **extra
        )

    exempt = scenario.templates_exempt and message.template_name is not None
    if scenario.statuses is Statuses.FAILED and scenario.failure_code is not None and not exempt:
        code = scenario.failure_code
        details = _FAILURE_DETAILS.get(code, "Message failed to send.")
        return [make("failed", settings.failed_after_seconds, errors=[status_error(code, details)])]

    price = payloads.pricing(message.template_name)
    category = str(price["category"])
    conversation = payloads.conversation(
        conversation_id(message.phone_number_id, message.wa_id, category),
        int(t0 + settings.sent_after_seconds) + 86_400,
        category,
    )
    sent = make("sent", settings.sent_after_seconds, price=price, conversation=conversation)
    delivered = make("delivered", settings.delivered_after_seconds, price=price)
    forced_read = scenario.statuses in (Statuses.READ_FIRST, Statuses.NO_DELIVERED)
    read = make("read", settings.read_after_seconds, price=price) if forced_read or (
        rng.random() < settings.read_probability) else None

    plan = [sent]
    if scenario.statuses is not Statuses.NO_DELIVERED:
        reorder = read is not None and (
            scenario.statuses is Statuses.READ_FIRST or rng.random() < settings.reorder_probability
        )
        # Reordered: delivered (with its true, earlier timestamp) is posted just after read.
        plan.append((read[0] + _LATE, delivered[1]) if reorder and read is not None else delivered)
    if read is not None:
        plan.append(read)

    if scenario.statuses is Statuses.TWICE:
        plan += [(delay + _LATE, item) for delay, item in plan]
    elif settings.duplicate_probability > 0:
        plan += [(d + rng.uniform(_LATE, 1.0), i) for d, i in plan if rng.random() < settings.duplicate_probability]
    plan.sort(key=lambda pair: pair[0])
    return plan
