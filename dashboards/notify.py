"""The Callbacks row (notify stage) of the overview dashboard, and Grafana-managed twins of its alerts.

    callbacks_row(board)                 # called by generate.py's overview()
    grafana_alert_rules()                # written to deploy/grafana/provisioning/alerting/notify-alerts.yml

The Prometheus rules themselves are hand-written in deploy/prometheus/rules/notify.yml (with a promtool
test); the thresholds here are the same numbers, and tests/deploy/test_rules.py compares them.
"""

from __future__ import annotations

from typing import Any

from grafana import Dashboard, q, thresholds
from slo import _expr, _grafana_query

I = 'instance=~"$instance"'  # noqa: E741 — reads like the Grafana variable it filters on
RI = "[$__rate_interval]"
FAILURE_RATIO = 0.25  # CallbackFailureRatioHigh
OLDEST_AGE_SECONDS = 900  # CallbackOldestEventOld


def callbacks_row(board: Dashboard) -> None:
    board.row("Callbacks")
    board.timeseries(
        "Callbacks by endpoint and outcome",
        [q(f'sum by (endpoint, outcome) (rate(delivery_callbacks_total{{{I}}}{RI}))', "{{endpoint}} {{outcome}}")],
        unit="ops", description="Callback events that ended per endpoint: delivered, or dead-lettered after "
        "NOTIFY_MAX_ATTEMPTS / NOTIFY_MAX_AGE_SECONDS / 410 Gone.",
    )
    board.timeseries(
        "Callback failure ratio",
        [q(f'sum by (endpoint) (rate(delivery_callback_attempts_total{{result!="success", {I}}}{RI}))'
           f" / sum by (endpoint) (rate(delivery_callback_attempts_total{{{I}}}{RI}))", "{{endpoint}}")],
        unit="percentunit", steps=thresholds((FAILURE_RATIO, "red")),
        description="Share of POSTs per endpoint that did not get a 2xx; the dashed line is the alert ratio.",
    )
    board.timeseries(
        "Attempt results",
        [q(f'sum by (result) (rate(delivery_callback_attempts_total{{result!="success", {I}}}{RI}))', "{{result}}"),
         q(f"sum(rate(delivery_callback_retries_total{{{I}}}{RI}))", "retries scheduled")],
        unit="ops", description="Failed POSTs by what came back (timeout, connect_error, server_error, "
        "throttled, client_error, redirect, gone), and retries scheduled.",
    )
    board.timeseries(
        "Callback attempt latency p95",
        [q(f"histogram_quantile(0.95, sum by (le, endpoint) "
           f"(rate(delivery_callback_attempt_duration_seconds_bucket{{{I}}}{RI})))", "{{endpoint}}")],
        unit="s", description="How long endpoints take to answer a POST (timeouts included).",
    )
    board.timeseries(
        "Queue depth per endpoint",
        [q(f"sum by (endpoint) (delivery_callback_queue_depth{{{I}}})", "{{endpoint}}")],
        unit="short", description="Deliveries waiting or in flight per endpoint (NOTIFY_ENDPOINT_QUEUE_LIMIT).",
    )
    board.timeseries(
        "Oldest undelivered event",
        [q(f"max by (endpoint) (delivery_callback_oldest_event_age_seconds{{{I}}})", "{{endpoint}}")],
        unit="s", steps=thresholds((OLDEST_AGE_SECONDS, "red")),
        description="Age of each endpoint's oldest waiting event since it entered Kafka; the line is the alert.",
    )
    board.state_timeline(
        "Callback breaker per endpoint",
        q(f"max by (endpoint) (delivery_callback_breaker_state{{{I}}})", "{{endpoint}}"),
        {"0": ("closed", "green"), "1": ("half-open", "yellow"), "2": ("open", "red")},
        width=16, description="Each endpoint's circuit breaker: open means nothing is POSTed to it.",
    )
    board.stat(
        "Disabled subscriptions (410)",
        q(f"sum(delivery_callback_subscription_disabled{{{I}}})"),
        steps=thresholds((1, "red")), width=8,
        description="Endpoints that answered 410 Gone; their events are dead-lettered until notify restarts.",
    )


def _rule(uid: str, title: str, expr: str, threshold: float, for_: str, severity: str, summary: str,
          description: str, anchor: str) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "condition": "C",
        "data": [
            _grafana_query("A", expr, 600),
            _expr("B", {"type": "reduce", "expression": "A", "reducer": "last", "settings": {"mode": "dropNN"}}),
            _expr("C", {"type": "threshold", "expression": "B",
                        "conditions": [{"evaluator": {"type": "gt", "params": [threshold]}}]}),
        ],
        "for": for_,
        "noDataState": "OK",  # no callbacks is not a failure
        "execErrState": "Error",
        "isPaused": False,
        "labels": {"severity": severity, "stage": "notify"},
        "annotations": {"summary": summary, "description": description,
                        "runbook_url": f"docs/operations.md#{anchor}"},
    }


def grafana_alert_rules() -> dict[str, Any]:
    """Grafana twins of CallbackFailureRatioHigh and CallbackOldestEventOld (same thresholds)."""
    ratio = (
        'sum by (endpoint) (rate(delivery_callback_attempts_total{result!="success"}[10m]))\n/\n'
        "sum by (endpoint) (rate(delivery_callback_attempts_total[10m]))\n"
        "and\nsum by (endpoint) (rate(delivery_callback_attempts_total[10m])) > 1 / 60"
    )
    rules = [
        _rule("callback-failure-ratio", "Callback failure ratio", ratio, FAILURE_RATIO, "10m", "ticket",
              "Callbacks to {{ $labels.endpoint }} fail",
              "{{ humanizePercentage $values.B.Value }} of the POSTs to {{ $labels.endpoint }} failed over 10 minutes.",
              "callbackfailureratiohigh"),
        _rule("callback-oldest-event", "Callback oldest undelivered event",
              "max by (endpoint) (delivery_callback_oldest_event_age_seconds)", OLDEST_AGE_SECONDS, "5m", "page",
              "Callbacks to {{ $labels.endpoint }} are behind",
              "The oldest undelivered event for {{ $labels.endpoint }} is {{ $values.B.Value }} s old.",
              "callbackoldesteventold"),
    ]
    return {
        "apiVersion": 1,
        "groups": [{"orgId": 1, "name": "delivery-notify", "folder": "Delivery pipeline", "interval": "1m",
                    "rules": rules}],
    }
