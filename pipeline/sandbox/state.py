"""Everything the sandbox remembers and decides, apart from HTTP.

    state = SandboxState(settings)
    wamid = state.accept(phone_number_id, message, scenario, now)   # or raises GraphError (limits)
    state.stats()                                                    # what tests and benchmarks read

`settings` is the live configuration: `configure()` swaps in a validated copy, so the hot path reads
plain attributes and a bad change never half-applies.
"""

from __future__ import annotations

import hmac
import math
import random
import time
from collections import Counter, deque
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from pydantic import SecretStr, ValidationError

from pipeline.sandbox import ids
from pipeline.sandbox.errors import GraphError
from pipeline.sandbox.limits import PairLimiter, SlidingWindow
from pipeline.sandbox.media import MediaStore
from pipeline.sandbox.metrics import SandboxMetrics
from pipeline.sandbox.scenarios import Answer, Scenario
from pipeline.sandbox.settings import SandboxSettings
from pipeline.sandbox.statuses import Accepted, plan_statuses
from pipeline.sandbox.validation import Message
from pipeline.sandbox.webhooks import WebhookDispatcher

OUTAGE_MODES = ("error", "timeout", "disconnect")
ALL_NUMBERS = "*"
_FIXED = frozenset({"host", "port", "webhook_concurrency"})  # only read at start-up
_PROFILE: dict[str, Any] = {
    "about": "A sandbox business", "address": "1 Sandbox Way", "description": "Meta's side, emulated",
    "email": "sandbox@example.com", "profile_picture_url": "", "websites": ["https://example.com"],
    "vertical": "OTHER",
}


class SendRecord(NamedTuple):
    """One accepted send, in the order accepted: the shape of the send log's entries.

    The log keeps them as plain tuples (`tuple(record)`): the collector stops tracking an exact tuple
    of strings and numbers, but never a NamedTuple's (or a dataclass's). Tracked, a log of 100,000
    sends made every full collection scan them: 41 ms pauses in a benchmark, long enough for the
    requests that queued meanwhile to be counted in the same second.
    """

    seq: int
    phone_number_id: str
    to: str
    request_id: str | None
    wamid: str
    type: str
    scenario: str
    at: float  # epoch seconds
    recipient: str | None = None  # the body's `recipient` (a BSUID) when that, not `to`, addressed it


@dataclass(slots=True)
class NumberStats:
    requests: SlidingWindow  # every /messages request with a valid body, whatever its answer
    accepted: SlidingWindow  # those answered 200
    accepted_metric: Any  # the number's child of sandbox_accepted_messages_total, bound once


class SandboxState:
    def __init__(self, settings: SandboxSettings, rng: random.Random | None = None) -> None:
        self.initial = settings
        self.settings = settings
        self.metrics = SandboxMetrics()
        self.webhooks = WebhookDispatcher(lambda: self.settings, self.metrics)
        self.rng = rng or random.Random()
        self.media = MediaStore()
        self.pairs = PairLimiter()
        self.numbers: dict[str, NumberStats] = {}
        self.sends: deque[tuple[Any, ...]] = deque(maxlen=settings.send_log_limit)  # SendRecord's fields
        self.reads: deque[dict[str, Any]] = deque(maxlen=10_000)  # mark-as-read calls, newest last
        self.received: dict[str, Counter[str]] = {}  # endpoint -> outcome -> count
        self.outages: dict[str, str] = {}
        self.users: dict[str, str] = {}  # BSUID -> wa_id, for every user the sandbox has named by BSUID
        self.profile: dict[str, Any] = dict(_PROFILE)
        self._seq = 0
        self._request_metrics: dict[tuple[str, str], Any] = {}

    # --- configuration ------------------------------------------------------------------------------

    def configure(self, changes: dict[str, Any]) -> SandboxSettings:
        """Apply a partial change; raises ValueError naming every bad field."""
        unknown = sorted(set(changes) - set(SandboxSettings.model_fields))
        fixed = sorted(set(changes) & _FIXED)
        problems = [f"{name}: not a sandbox setting" for name in unknown]
        problems += [f"{name}: fixed at start-up" for name in fixed]
        if problems:
            raise ValueError("; ".join(problems))
        values = {name: getattr(self.settings, name) for name in SandboxSettings.model_fields}
        values.update(changes)
        try:
            updated = SandboxSettings(**values)
        except ValidationError as exc:
            raise ValueError("; ".join(
                f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
                for err in exc.errors(include_url=False, include_input=False)
            )) from None
        if updated.send_log_limit != self.settings.send_log_limit:
            self.sends = deque(self.sends, maxlen=updated.send_log_limit)
        self.settings = updated
        return updated

    def public_config(self) -> dict[str, Any]:
        return {
            name: "**********" if isinstance(value, SecretStr) else value
            for name, value in self.settings.model_dump().items()
        }

    def reset(self) -> None:
        """Back to the start-up configuration with no history, outage, media or pending webhook."""
        self.settings = self.initial
        self.sends = deque(maxlen=self.initial.send_log_limit)
        self.reads.clear()
        self.media.clear()
        self.pairs.clear()
        self.numbers.clear()
        self.received.clear()
        self.outages.clear()
        self.users.clear()
        self.profile = dict(_PROFILE)
        self.metrics.outage.set(0)
        self.webhooks.clear()

    # --- checks on every Graph request ----------------------------------------------------------------

    def token_ok(self, authorization: str | None, query_token: str | None) -> bool:
        token = query_token
        if authorization is not None:
            scheme, _, value = authorization.partition(" ")
            token = value.strip() if scheme.lower() == "bearer" else None
        expected = self.settings.access_token.get_secret_value()
        return token is not None and hmac.compare_digest(token.encode(), expected.encode())

    def check_version(self, version: str) -> None:
        if not (version.startswith("v") and version[1:].replace(".", "", 1).isdigit()):
            raise GraphError(100, f"Unknown path components: /{version}: the version must look like v23.0")

    def check_number(self, phone_number_id: str) -> None:
        known = self.settings.phone_number_ids
        if not phone_number_id.isdigit() or (known and phone_number_id not in known):
            raise GraphError(
                100,
                f"Unsupported post request. Object with ID '{phone_number_id}' does not exist, cannot be loaded "
                "due to missing permissions, or does not support this operation.",
                subcode=33,
            )

    def outage_for(self, phone_number_id: str) -> str | None:
        if not self.outages:
            return None
        return self.outages.get(phone_number_id) or self.outages.get(ALL_NUMBERS)

    def set_outage(self, mode: str, phone_number_id: str | None) -> None:
        if mode not in OUTAGE_MODES:
            raise ValueError(f"mode: must be one of {', '.join(OUTAGE_MODES)}")
        self.outages[phone_number_id or ALL_NUMBERS] = mode
        self.metrics.outage.set(1)

    def end_outage(self, phone_number_id: str | None) -> None:
        if phone_number_id is None:
            self.outages.clear()
        else:
            self.outages.pop(phone_number_id, None)
        self.metrics.outage.set(1 if self.outages else 0)

    def latency(self, scenario: Scenario | None = None) -> float:
        s = self.settings
        delay = 0.0
        if s.latency_median_seconds > 0:
            delay = s.latency_median_seconds
            if s.latency_sigma > 0:
                delay *= math.exp(s.latency_sigma * self.rng.gauss(0.0, 1.0))
            delay = min(delay, s.latency_max_seconds)
        if scenario is not None and scenario.answer is Answer.SLOW:
            delay += s.slow_seconds
        elif scenario is not None and scenario.answer is Answer.HANG:
            delay = s.hang_seconds
        return delay

    def rate_for(self, phone_number_id: str) -> float:
        return self.settings.rate_overrides.get(phone_number_id, self.settings.rate_per_second)

    def number(self, phone_number_id: str) -> NumberStats:
        stats = self.numbers.get(phone_number_id)
        if stats is None:
            stats = self.numbers[phone_number_id] = NumberStats(
                SlidingWindow(), SlidingWindow(), self.metrics.accepted.labels(phone_number_id)
            )
        return stats

    def count(self, endpoint: str, outcome: str, code: int | None = None) -> None:
        received = self.received.get(endpoint)
        if received is None:
            received = self.received[endpoint] = Counter()
        received[outcome] += 1
        # Bound metric children are cached: `labels()` takes a lock and builds a tuple on every call.
        child = self._request_metrics.get((endpoint, outcome))
        if child is None:
            child = self._request_metrics[(endpoint, outcome)] = self.metrics.requests.labels(endpoint, outcome)
        child.inc()
        if code is not None:
            self.metrics.error_codes.labels(str(code)).inc()

    # --- users ------------------------------------------------------------------------------------------

    def bsuid_of(self, wa_id: str) -> str:
        """The user's business-scoped id for this business (stable), remembered for BSUID sends."""
        user_id = ids.bsuid(self.settings.waba_id, wa_id)
        self.users[user_id] = wa_id
        return user_id

    def resolve_recipient(self, message: Message) -> Message:
        """A BSUID send to a user the sandbox named before is a send to their number; others keep the BSUID."""
        if not message.by_bsuid or message.user_id is None:
            return message
        return replace(message, wa_id=self.users.get(message.user_id, message.user_id))

    # --- the decision on a valid send -------------------------------------------------------------------

    def accept(self, phone_number_id: str, message: Message, scenario: Scenario, now: float) -> str:
        """Apply scenario, media and limit rules; on success log the send, plan its webhooks, return the wamid."""
        s = self.settings
        number = self.number(phone_number_id)
        number.requests.add(now)
        if scenario.answer is Answer.ERROR and scenario.error_code is not None:
            code = scenario.error_code
            status = s.throughput_http_status if code == 130429 else None
            raise GraphError(code, f"test recipient ending in {scenario.suffix} ({scenario.name})", status)
        if message.wa_id == s.display_phone_number:
            raise GraphError(131021, "to: the recipient is this business number itself")
        if message.template_name is not None:
            _check_template_scenario(message.template_name)
            if message.by_bsuid and message.template_name.startswith("authentication"):
                # Meta: one-tap, zero-tap and copy-code authentication templates need a phone number.
                raise GraphError(131062, "recipient: authentication templates cannot be sent to a BSUID")
        wall = time.time()
        for media_id in message.media_ids:
            self.media.check(media_id, f"{message.type}.id", wall)
        rate = self.rate_for(phone_number_id)
        if rate > 0 and number.accepted.count(now) >= rate:
            raise GraphError(
                130429,
                f"Message failed to send because there were too many messages sent from this phone number in a "
                f"short period of time (cap {rate:g}/s)",
                s.throughput_http_status,
            )
        if s.pair_interval_seconds > 0 and not self.pairs.take(
            (phone_number_id, message.wa_id), now, s.pair_burst, s.pair_interval_seconds
        ):
            raise GraphError(
                131056, "Message failed to send because there were too many messages sent from this phone number "
                        "to the same phone number in a short period of time"
            )

        previous_max = number.accepted.max_seen
        number.accepted.add(now)
        if number.accepted.max_seen != previous_max:
            self.metrics.window_max.labels(phone_number_id).set(number.accepted.max_seen)
        number.accepted_metric.inc()
        wamid = ids.outbound_wamid(message.wa_id)
        self._seq += 1
        self.sends.append(tuple(SendRecord(
            self._seq, phone_number_id, message.to, message.request_id, wamid, message.type, scenario.name, wall,
            message.user_id,
        )))
        if s.webhook_url is not None:
            user_id = message.user_id or self.bsuid_of(message.wa_id)
            accepted = Accepted(
                phone_number_id, message.wa_id, user_id, wamid, message.request_id, message.template_name, wall
            )
            for delay, item in plan_statuses(accepted, scenario, s, self.rng):
                self.webhooks.push(delay, phone_number_id, item)
        return wamid

    # --- reading ---------------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {
            "received": {endpoint: dict(outcomes) for endpoint, outcomes in self.received.items()},
            "reads": list(self.reads)[-100:],
            "numbers": {
                number: {
                    "requests": stats.requests.total,
                    "accepted": stats.accepted.total,
                    "max_requests_per_second": stats.requests.max_seen,
                    "max_accepted_per_second": stats.accepted.max_seen,
                    "rate_per_second": self.rate_for(number),
                }
                for number, stats in self.numbers.items()
            },
            "sends": {"logged": len(self.sends), "total": self._seq},
            "media": {"uploads": self.media.summary()["uploads"]},
            "webhooks": self.webhooks.summary(),
            "outages": dict(self.outages),
        }

    def send_log(self, phone_number_id: str | None, after: int, limit: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for entry in self.sends:
            record = SendRecord._make(entry)
            if record.seq <= after or (phone_number_id is not None and record.phone_number_id != phone_number_id):
                continue
            out.append(record._asdict())
            if len(out) >= limit:
                break
        return out


def _check_template_scenario(name: str) -> None:
    # Template test names (docs/sandbox.md): the sandbox keeps no template registry.
    if name.startswith("sandbox_missing"):
        raise GraphError(132001, f"template.name: template {name!r} does not exist in the translation")
    if name.startswith("sandbox_paused"):
        raise GraphError(132015, f"template.name: template {name!r} is paused because of low quality")
