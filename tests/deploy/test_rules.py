"""Prometheus rules (promtool check + unit tests), Grafana alerting and datasource provisioning, and
the parse check of every PromQL expression the repository ships."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.promcheck import (
    DATASOURCE_UID,
    GRAFANA_ALERTING,
    ROOT,
    RULES,
    Expression,
    collect_expressions,
    promtool,
    promtool_parse,
    with_bool_comparisons,
)

RULE_FILES = sorted(RULES.glob("*.yml"))
RULE_TESTS = sorted((ROOT / "deploy" / "prometheus" / "tests").glob("*.yml"))
PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"
OPERATIONS = ROOT / "docs" / "operations.md"

def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _alert_rules() -> list[dict[str, Any]]:
    return [r for path in RULE_FILES for g in _yaml(path)["groups"] for r in g["rules"] if "alert" in r]


def _grafana_rules() -> list[dict[str, Any]]:
    return [r for path in sorted(GRAFANA_ALERTING.glob("*.yml")) for g in _yaml(path).get("groups", [])
            for r in g["rules"]]


def _anchors() -> set[str]:
    """GitHub's heading anchors of docs/operations.md."""
    headings = re.findall(r"^#+\s+(.+?)\s*$", OPERATIONS.read_text(), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}


def test_promtool_check_rules() -> None:
    result = subprocess.run([promtool(), "check", "rules", *map(str, RULE_FILES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests() -> None:
    assert RULE_TESTS, "deploy/prometheus/tests/*.yml"
    result = subprocess.run([promtool(), "test", "rules", *map(str, RULE_TESTS)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS)


def test_every_alert_is_tested_firing_and_quiet() -> None:
    """Each alertname appears in the promtool tests both with expected alerts and with none."""
    tests = [t for path in RULE_TESTS for t in _yaml(path)["tests"]]
    cases = [c for t in tests for c in t.get("alert_rule_test", [])]
    for name in {r["alert"] for r in _alert_rules()}:
        mine = [c for c in cases if c["alertname"] == name]
        assert any(c["exp_alerts"] for c in mine), f"{name}: no test shows it firing"
        assert any(not c["exp_alerts"] for c in mine), f"{name}: no test shows it quiet"


def test_alerts_carry_severity_annotations_and_a_runbook_anchor() -> None:
    anchors = _anchors()
    for rule in _alert_rules() + _grafana_rules():
        name = rule.get("alert") or rule["title"]
        assert rule["labels"]["severity"] in ("page", "ticket"), name
        annotations = rule["annotations"]
        assert annotations["summary"], name
        assert annotations["description"], name
        url = annotations["runbook_url"]
        assert url.startswith("docs/operations.md#"), url
        assert url.split("#", 1)[1] in anchors, f"{name}: {url} has no heading in docs/operations.md"


def test_burn_rate_alerts_use_the_workbook_windows() -> None:
    burns = [r for r in _alert_rules() if r["alert"].endswith("BudgetBurn")]
    assert {r["alert"] for r in burns} >= {"DeliverySendErrorBudgetBurn", "DeliveryFailureBudgetBurn"}
    for rule in burns:
        expr = rule["expr"]
        if rule["labels"]["severity"] == "page":
            assert re.search(r"rate1h > \(14\.4 \* [\d.]+\)\s+and\s+\S+rate5m > \(14\.4", expr), expr
            assert re.search(r"rate6h > \(6 \* [\d.]+\)\s+and\s+\S+rate30m > \(6 \*", expr), expr
        else:
            assert re.search(r"rate3d > \(1 \* [\d.]+\)\s+and\s+\S+rate6h > \(1 \*", expr), expr


def test_recording_rules_cover_every_ratio_and_window() -> None:
    recorded = {r["record"] for path in RULE_FILES for g in _yaml(path)["groups"] for r in g["rules"] if "record" in r}
    for ratio in ("send_error_ratio", "delivery_failure_ratio", "api_error_ratio"):
        for window in ("5m", "30m", "1h", "6h", "3d"):
            assert f"delivery:{ratio}:rate{window}" in recorded


# --- Grafana provisioning -----------------------------------------------------------------------


def test_datasource_uid_is_pinned_once() -> None:
    sources = _yaml(PROVISIONING / "datasources" / "prometheus.yml")
    assert sources["apiVersion"] == 1
    prometheus = [d for d in sources["datasources"] if d["type"] == "prometheus"]
    assert [d["uid"] for d in prometheus] == [DATASOURCE_UID]


def test_grafana_alert_rules_are_well_formed() -> None:
    doc = _yaml(GRAFANA_ALERTING / "slo-alerts.yml")
    assert doc["apiVersion"] == 1
    rules = _grafana_rules()
    uids = [r["uid"] for r in rules]
    assert len(set(uids)) == len(uids)
    assert all(re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", u) for u in uids)
    for rule in rules:
        steps = {d["refId"]: d for d in rule["data"]}
        assert rule["condition"] in steps
        kinds = [(d["datasourceUid"], d["model"].get("type")) for d in rule["data"]]
        assert kinds == [(DATASOURCE_UID, None), ("__expr__", "reduce"), ("__expr__", "threshold")], rule["uid"]
        assert steps["B"]["model"]["expression"] == "A"
        assert steps["C"]["model"]["expression"] == "B"
        assert rule["noDataState"] in ("OK", "NoData", "Alerting")
        assert rule["execErrState"] in ("Error", "Alerting")
        assert re.fullmatch(r"\d+[smh]", rule["for"])
    # The same error-rate alerts as Prometheus: both SLOs, every window pair.
    titles = {r["title"] for r in rules}
    for slo in ("Send error ratio", "Delivery failure ratio"):
        for pair in ("1h/5m", "6h/30m", "3d/6h"):
            assert f"{slo} budget burn {pair}" in titles


def test_grafana_thresholds_match_the_prometheus_alerts() -> None:
    """Grafana's threshold for each window pair equals the factor x budget in Prometheus' rule."""
    prometheus = {
        (r["labels"]["slo"], r["labels"]["severity"]): r["expr"] for r in _alert_rules() if "slo" in r["labels"]
    }
    for rule in (r for r in _grafana_rules() if "slo" in r["labels"]):
        threshold = rule["data"][2]["model"]["conditions"][0]["evaluator"]["params"][0]
        slo, severity = rule["labels"]["slo"], rule["labels"]["severity"]
        factors = re.findall(r"> \(([\d.]+) \* ([\d.]+)\)", prometheus[(slo, severity)])
        assert any(abs(float(f) * float(b) - threshold) < 1e-9 for f, b in factors), rule["uid"]


def test_grafana_callback_alerts_match_the_prometheus_rules() -> None:
    """notify-alerts.yml (dashboards/notify.py) and notify.yml alert on the same numbers."""
    prometheus = {r["alert"]: r for r in _alert_rules()}
    grafana = {r["uid"]: r for r in _grafana_rules() if r["labels"].get("stage") == "notify"}
    assert set(grafana) == {"callback-failure-ratio", "callback-oldest-event"}
    pairs = {"callback-failure-ratio": "CallbackFailureRatioHigh", "callback-oldest-event": "CallbackOldestEventOld"}
    for uid, name in pairs.items():
        rule, twin = grafana[uid], prometheus[name]
        threshold = rule["data"][2]["model"]["conditions"][0]["evaluator"]["params"][0]
        assert f"> {threshold:g}" in twin["expr"], name
        assert rule["for"] == twin["for"], name
        assert rule["labels"]["severity"] == twin["labels"]["severity"], name
        assert rule["annotations"]["runbook_url"] == twin["annotations"]["runbook_url"], name


def test_the_store_lag_alert_is_the_same_in_grafana_and_prometheus() -> None:
    (grafana,) = [r for r in _grafana_rules() if r["uid"] == "store-projection-lag"]
    (prometheus,) = [r for r in _alert_rules() if r["alert"] == "DeliveryStoreProjectionLag"]
    threshold = grafana["data"][2]["model"]["conditions"][0]["evaluator"]["params"][0]
    assert prometheus["expr"].endswith(f"> {threshold}")
    assert (grafana["for"], grafana["labels"]["severity"]) == (prometheus["for"], prometheus["labels"]["severity"])
    assert grafana["annotations"]["runbook_url"] == prometheus["annotations"]["runbook_url"]


def test_contact_point_and_policy() -> None:
    doc = _yaml(GRAFANA_ALERTING / "notifications.yml")
    (point,) = doc["contactPoints"]
    (receiver,) = point["receivers"]
    assert receiver["type"] == "webhook"
    assert receiver["settings"]["url"] == "${ALERT_WEBHOOK_URL}", "the URL comes from the environment"
    (policy,) = doc["policies"]
    assert policy["receiver"] == point["name"]
    assert all(route["receiver"] == point["name"] for route in policy["routes"])


def test_dashboard_provider_points_at_the_mounted_folder() -> None:
    doc = _yaml(PROVISIONING / "dashboards" / "delivery.yml")
    (provider,) = doc["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/etc/grafana/dashboards"


# --- every expression parses ----------------------------------------------------------------------


def test_every_expression_parses_with_promtool() -> None:
    expressions = collect_expressions()
    kinds = {e.kind for e in expressions}
    assert kinds == {"panel", "variable", "record", "alert", "grafana-alert"}
    assert promtool_parse(expressions) == []
    print(f"{len(expressions)} expressions parsed by promtool")


def test_the_parse_check_reports_bad_expressions_by_source() -> None:
    bad = Expression("dashboards/x.json | Broken | A", "panel", "sum(rate(delivery_messages_total[$__rate_interval])")
    problems = promtool_parse([bad, Expression("ok", "panel", "up")])
    assert problems
    assert all(p.startswith("dashboards/x.json | Broken | A") for p in problems)
    assert any("unclosed left parenthesis" in p for p in problems)


def test_bool_rewrite_leaves_matchers_and_strings_alone() -> None:
    expr = 'sum(x{a!="b", c=~"d>e"}) > 0.5 and y == 2 or z >= bool 1 or label_replace(w, "l", "<", "", "") < 3'
    assert with_bool_comparisons(expr) == (
        'sum(x{a!="b", c=~"d>e"}) > bool 0.5 and y == bool 2 or z >= bool 1 '
        'or label_replace(w, "l", "<", "", "") < bool 3'
    )


def test_grafana_variables_are_substituted() -> None:
    matchers = 'phone_number_id=~"$phone_number_id", instance=~"${instance}"'
    e = Expression("s", "panel", f"sum(rate(x{{{matchers}}}[$__rate_interval]))")
    assert e.promql == 'sum(rate(x{phone_number_id=~".*", instance=~".*"}[1m]))'
    v = Expression("s", "variable", 'label_values(up{job=~"delivery-.*"}, instance)')
    assert v.promql == 'count by (instance) (up{job=~"delivery-.*"})'
    with pytest.raises(ValueError, match="unsubstituted"):
        _ = Expression("s", "panel", 'x{a="$other"}').promql
