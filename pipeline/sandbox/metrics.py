"""The sandbox's own Prometheus metrics (prefix `sandbox_`, own registry, served at /metrics).

Labels are small fixed sets; `phone_number_id` (the business's own number) is allowed, recipients never.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Graph error code -> the `outcome` label (and the key of `received` in /_sandbox/stats).
OUTCOME_OF_CODE: dict[int, str] = {
    2: "unavailable",
    100: "invalid",
    131008: "invalid",
    131009: "invalid",
    131021: "invalid",
    190: "unauthorized",
    368: "policy",
    130429: "throttled",
    131056: "pair_limited",
    131000: "transient",
    131052: "media_error",
    131053: "media_error",
    132001: "template_error",
    132015: "template_error",
}


def outcome_of(code: int) -> str:
    return OUTCOME_OF_CODE.get(code, "other_error")


class SandboxMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "sandbox_requests_total", "Graph API requests answered, by endpoint and outcome",
            ["endpoint", "outcome"], registry=r,
        )
        self.error_codes = Counter(
            "sandbox_error_codes_total", "Graph API error answers by Meta error code", ["code"], registry=r
        )
        self.accepted = Counter(
            "sandbox_accepted_messages_total", "Messages accepted (HTTP 200)", ["phone_number_id"], registry=r
        )
        self.window_max = Gauge(
            "sandbox_window_max_per_second", "Most messages accepted in any one-second window",
            ["phone_number_id"], registry=r,
        )
        self.delay = Histogram(
            "sandbox_response_delay_seconds", "Latency the sandbox added before answering",
            buckets=(0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 5, 10, 30, 60), registry=r,
        )
        self.media_uploads = Counter("sandbox_media_uploads_total", "Media uploads accepted", registry=r)
        self.webhook_posts = Counter(
            "sandbox_webhook_posts_total", "Webhook POST attempts by outcome (ok, failed, given_up)",
            ["outcome"], registry=r,
        )
        self.webhook_statuses = Counter(
            "sandbox_webhook_statuses_total", "Statuses delivered in acknowledged webhooks", ["status"], registry=r
        )
        self.webhook_dropped = Counter(
            "sandbox_webhook_dropped_total", "Webhook events dropped (queue full, no URL, retries exhausted)",
            registry=r,
        )
        self.webhook_pending = Gauge("sandbox_webhook_pending", "Webhook events not yet acknowledged", registry=r)
        self.outage = Gauge("sandbox_outage", "1 while an outage is switched on", registry=r)
