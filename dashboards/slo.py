"""The service-level objectives, their error ratios, and the burn-rate alerts built from them.

One definition feeds the dashboards' threshold lines, Prometheus' recording and alerting rules
(`deploy/prometheus/rules/slo.yml`) and Grafana's managed alert rules, so the three cannot drift.
Burn-rate windows and factors are the SRE workbook's (chapter "Alerting on SLOs"): page on 14.4x over
1h and 5m or 6x over 6h and 30m; ticket on 1x over 3d and 6h.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Relative to the repository root: prefix it with wherever the repository is browsed (see docs/operations.md).
RUNBOOK = "docs/operations.md"
DATASOURCE_UID = "delivery-prometheus"
DATASOURCE = {"type": "prometheus", "uid": DATASOURCE_UID}
WINDOWS = ("5m", "30m", "1h", "6h", "3d")


@dataclass(frozen=True)
class Slo:
    key: str  # recording-rule and label name: delivery:<key>:rate5m
    title: str
    objective: float  # 0.99 → 1% error budget
    metric: str
    bad: str  # label matchers of the bad events
    total: str  # label matchers of all events (may be "")
    alert: str  # alertname of the burn-rate alerts
    what: str  # "send requests that ended in failure", for descriptions

    @property
    def budget(self) -> float:
        return round(1 - self.objective, 6)

    def ratio(self, window: str, extra: str = "") -> str:
        """bad/total over `window`. A missing bad series counts as 0 (no failure yet is a 0 ratio, not a gap).

        `extra` are more matchers (dashboards' `$instance`, `$phone_number_id`).
        """
        bad = _matchers(self.bad, extra)
        total = _matchers(self.total, extra)
        return (
            f"(sum(rate({self.metric}{bad}[{window}])) or vector(0))\n"
            f"/\nsum(rate({self.metric}{total}[{window}]))"
        )

    def recorded(self, window: str) -> str:
        return f"delivery:{self.key}:rate{window}"

    @property
    def anchor(self) -> str:
        return self.alert.lower()


def _matchers(*parts: str) -> str:
    joined = ", ".join(p for p in parts if p)
    return f"{{{joined}}}" if joined else ""


SLOS = (
    Slo(
        key="send_error_ratio",
        title="Send error ratio",
        objective=0.99,
        metric="delivery_messages_total",
        bad='outcome!="sent"',
        total="",
        alert="DeliverySendErrorBudgetBurn",
        what="send requests that ended without being sent (failed, dead-lettered or expired)",
    ),
    Slo(
        key="delivery_failure_ratio",
        title="Delivery failure ratio",
        # Part of these failures is the recipients' doing (not on WhatsApp, blocked the business,
        # outside the 24h window), so the budget is wider than the send budget.
        objective=0.97,
        metric="delivery_status_events_total",
        bad='status="failed"',
        total='status=~"sent|failed"',
        alert="DeliveryFailureBudgetBurn",
        what="messages Meta reported as failed",
    ),
    Slo(
        key="api_error_ratio",
        title="API error ratio",
        objective=0.999,
        metric="delivery_api_requests_total",
        bad='outcome="unavailable"',
        total="",
        alert="DeliveryApiErrorBudgetBurn",
        what="API requests answered 503 (Kafka unavailable)",
    ),
)


@dataclass(frozen=True)
class BurnAlert:
    severity: str
    factor: float
    long: str
    short: str
    for_: str


BURN_ALERTS = (
    BurnAlert("page", 14.4, "1h", "5m", "2m"),
    BurnAlert("page", 6.0, "6h", "30m", "2m"),
    BurnAlert("ticket", 1.0, "3d", "6h", "30m"),
)


def _factor(value: float) -> str:
    return f"{value:g}"


def prometheus_rules() -> dict[str, Any]:
    """`deploy/prometheus/rules/slo.yml`: recording rules per ratio and window, then the burn alerts."""
    groups = []
    for slo in SLOS:
        # Recording rules first, alerts after, in one group: rules of a group run in order, so the alerts
        # read this evaluation's ratios (separate groups would race by one interval).
        rules: list[dict[str, Any]] = [{"record": slo.recorded(w), "expr": slo.ratio(w)} for w in WINDOWS]
        for severity in ("page", "ticket"):
            pairs = [b for b in BURN_ALERTS if b.severity == severity]
            expr = "\nor\n".join(
                f"(\n  {slo.recorded(b.long)} > ({_factor(b.factor)} * {slo.budget:g})\n"
                f"and\n  {slo.recorded(b.short)} > ({_factor(b.factor)} * {slo.budget:g})\n)"
                for b in pairs
            )
            windows = " or ".join(f"{_factor(b.factor)}x over {b.long} and {b.short}" for b in pairs)
            rules.append(
                {
                    "alert": slo.alert,
                    "expr": expr,
                    "for": pairs[0].for_,
                    "labels": {"severity": severity, "slo": slo.key},
                    "annotations": {
                        "summary": f"{slo.title} is burning its {slo.budget:.1%} error budget too fast ({severity})",
                        "description": (
                            f"{{{{ $value | humanizePercentage }}}} of {slo.what} over the long window; the "
                            f"objective is {slo.objective:.1%}. Burn rate {windows}."
                        ),
                        "runbook_url": f"{RUNBOOK}#{slo.anchor}",
                    },
                }
            )
        groups.append({"name": f"delivery-slo-{slo.key}", "rules": rules})
    return {"groups": groups}


def _grafana_query(ref: str, expr: str, seconds: int) -> dict[str, Any]:
    return {
        "refId": ref,
        "relativeTimeRange": {"from": seconds, "to": 0},
        "datasourceUid": DATASOURCE_UID,
        "model": {"refId": ref, "expr": expr, "instant": True, "range": False, "editorMode": "code",
                  "intervalMs": 60000, "maxDataPoints": 43200},
    }


def _expr(ref: str, model: dict[str, Any]) -> dict[str, Any]:
    return {
        "refId": ref,
        "relativeTimeRange": {"from": 0, "to": 0},
        "datasourceUid": "__expr__",
        "model": {"refId": ref, "datasource": {"type": "__expr__", "uid": "__expr__"}, **model},
    }


_SECONDS = {"m": 60, "h": 3600, "d": 86400}


def _seconds(window: str) -> int:
    return int(window[:-1]) * _SECONDS[window[-1]]


def grafana_alert_rules() -> dict[str, Any]:
    """Grafana-managed twins of the burn-rate alerts, one rule per window pair.

    Query A is the smaller of the long- and short-window ratios (`clamp_max(long, scalar(short))`), so
    one threshold on it means "both windows burn faster than the factor" — the multi-window rule.
    """
    rules = []
    for slo in SLOS:
        for burn in BURN_ALERTS:
            threshold = round(burn.factor * slo.budget, 6)
            expr = f"clamp_max(\n{slo.ratio(burn.long)},\nscalar(\n{slo.ratio(burn.short)}\n)\n)"
            rules.append(
                {
                    "uid": f"{slo.key.replace('_', '-')}-{burn.long}-{burn.short}",
                    "title": f"{slo.title} budget burn {burn.long}/{burn.short}",
                    "condition": "C",
                    "data": [
                        _grafana_query("A", expr, _seconds(burn.long)),
                        _expr("B", {"type": "reduce", "expression": "A", "reducer": "last",
                                    "settings": {"mode": "dropNN"}}),
                        _expr("C", {"type": "threshold", "expression": "B",
                                    "conditions": [{"evaluator": {"type": "gt", "params": [threshold]}}]}),
                    ],
                    "for": burn.for_,
                    "noDataState": "OK",  # no traffic is not an outage; a missing target has its own alert
                    "execErrState": "Error",
                    "isPaused": False,
                    "labels": {"severity": burn.severity, "slo": slo.key},
                    "annotations": {
                        "summary": (
                            f"{slo.title} above {_factor(burn.factor)}x its {slo.budget:.1%} budget "
                            f"over {burn.long} and {burn.short}"
                        ),
                        "description": (
                            f"{{{{ humanizePercentage $values.B.Value }}}} of {slo.what} over both windows "
                            f"(threshold {threshold:g}); the objective is {slo.objective:.1%}."
                        ),
                        "runbook_url": f"{RUNBOOK}#{slo.anchor}",
                    },
                }
            )
    return {
        "apiVersion": 1,
        "groups": [
            {"orgId": 1, "name": "delivery-slo-burn", "folder": "Delivery pipeline", "interval": "1m", "rules": rules}
        ],
    }
