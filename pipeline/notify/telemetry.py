"""The notify stage's metrics (defined in the catalog, pipeline/observability/metrics.py) behind the
hook object the delivery code calls.

    hooks = NotifyTelemetry()
    hooks.declare(["https://hooks.example.com:443"])   # every series exists at 0 from the start
    hooks.attempted("https://hooks.example.com:443", CallbackAttemptResult.SUCCESS, 0.052)

The `endpoint` label is `host:port` of a subscription's URL: bounded, since it comes from settings.
Children are bound once per label set (prometheus-client's `labels()` locks and builds a tuple per
call, a visible cost at thousands of callbacks per second).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pipeline.contracts.vocabulary import (
    CallbackAttemptResult,
    CallbackOutcome,
    CircuitState,
    DeadLetterReason,
    Stage,
)
from pipeline.observability.metrics import CALLBACK_ATTEMPT_DURATION as ATTEMPT_DURATION
from pipeline.observability.metrics import CALLBACK_ATTEMPTS as ATTEMPTS
from pipeline.observability.metrics import CALLBACK_BREAKER as BREAKER
from pipeline.observability.metrics import CALLBACK_DISABLED as DISABLED
from pipeline.observability.metrics import CALLBACK_OLDEST_AGE as OLDEST_AGE
from pipeline.observability.metrics import CALLBACK_QUEUE_DEPTH as QUEUE_DEPTH
from pipeline.observability.metrics import CALLBACK_RETRIES as RETRIES
from pipeline.observability.metrics import CALLBACKS, DEAD_LETTERS


def endpoint_label(origin: str) -> str:
    return origin.split("://", 1)[-1]


class NotifyTelemetry:
    """Implements `pipeline.notify.delivery.DeliveryHooks` with the metrics above."""

    def __init__(self) -> None:
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (metric, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def declare(self, origins: Iterable[str]) -> None:
        for origin in origins:
            label = endpoint_label(origin)
            for result in CallbackAttemptResult:
                self._child(ATTEMPTS, label, result.value)
            for outcome in CallbackOutcome:
                self._child(CALLBACKS, label, outcome.value)
            self._child(RETRIES, label)
            for gauge in (BREAKER, QUEUE_DEPTH, OLDEST_AGE, DISABLED):
                self._child(gauge, label).set(0)
        for reason in (DeadLetterReason.CALLBACK_UNDELIVERABLE, DeadLetterReason.CALLBACK_GONE,
                       DeadLetterReason.CALLBACK_BACKLOG_FULL):
            self._child(DEAD_LETTERS, Stage.NOTIFY.value, reason.value)

    def attempted(self, endpoint: str, result: CallbackAttemptResult, seconds: float) -> None:
        label = endpoint_label(endpoint)
        self._child(ATTEMPTS, label, result.value).inc()
        self._child(ATTEMPT_DURATION, label).observe(seconds)

    def retried(self, endpoint: str) -> None:
        self._child(RETRIES, endpoint_label(endpoint)).inc()

    def finished(self, endpoint: str, outcome: CallbackOutcome, reason: DeadLetterReason | None) -> None:
        self._child(CALLBACKS, endpoint_label(endpoint), outcome.value).inc()
        if reason is not None:
            self._child(DEAD_LETTERS, Stage.NOTIFY.value, reason.value).inc()

    def breaker(self, endpoint: str, state: CircuitState) -> None:
        self._child(BREAKER, endpoint_label(endpoint)).set(state.gauge_value)

    def backlog(self, endpoint: str, depth: int, oldest_age_seconds: float) -> None:
        label = endpoint_label(endpoint)
        self._child(QUEUE_DEPTH, label).set(depth)
        self._child(OLDEST_AGE, label).set(oldest_age_seconds)

    def disabled(self, endpoint: str) -> None:
        self._child(DISABLED, endpoint_label(endpoint)).set(1)

    def dead_lettered_record(self, reason: DeadLetterReason) -> None:
        """A source record that is not its topic's contract (no endpoint involved)."""
        self._child(DEAD_LETTERS, Stage.NOTIFY.value, reason.value).inc()
