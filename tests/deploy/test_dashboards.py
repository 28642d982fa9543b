"""The committed dashboards: regenerated without a diff, loadable, pinned, filterable, and complete."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.promcheck import DASHBOARDS, DATASOURCE_UID, ROOT, dashboard_expressions

BOARDS = sorted(DASHBOARDS.glob("*.json"))


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in board["panels"] if p["type"] != "row"]


def _datasource_uids(node: Any) -> list[str]:
    """Every datasource uid referenced anywhere in a JSON tree."""
    found = []
    if isinstance(node, dict):
        ds = node.get("datasource")
        if isinstance(ds, dict) and "uid" in ds:
            found.append(ds["uid"])
        elif isinstance(ds, str):
            found.append(ds)
        for value in node.values():
            found.extend(_datasource_uids(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(_datasource_uids(item))
    return found


def test_generator_output_is_committed() -> None:
    result = subprocess.run(
        [sys.executable, str(DASHBOARDS / "generate.py"), "--check"], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr


def test_the_four_dashboards_exist() -> None:
    assert {p.stem for p in BOARDS} == {"delivery-overview", "delivery-api", "delivery-sender", "delivery-ingest"}


def test_uids_are_pinned_unique_and_valid() -> None:
    uids = [_load(p)["uid"] for p in BOARDS]
    assert len(set(uids)) == len(uids)
    for path, uid in zip(BOARDS, uids, strict=True):
        assert uid == path.stem, "file name and uid agree, so a link to a uid finds its file"
        assert re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", uid), uid
        assert _load(path).get("id") is None, "a pinned id would clash on import"


@pytest.mark.parametrize("path", BOARDS, ids=lambda p: p.stem)
def test_only_the_pinned_datasource_is_referenced(path: Path) -> None:
    board = _load(path)
    uids = set(_datasource_uids(board["panels"])) | set(_datasource_uids(board["templating"]))
    assert uids == {DATASOURCE_UID}


@pytest.mark.parametrize("path", BOARDS, ids=lambda p: p.stem)
def test_panels_are_complete_and_laid_out(path: Path) -> None:
    board = _load(path)
    ids = [p["id"] for p in board["panels"]]
    assert len(set(ids)) == len(ids)
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        cover = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & cover, f"{panel['title']} overlaps another panel"
        cells |= cover
    for panel in _panels(board):
        assert panel["title"], panel
        assert panel["targets"], panel
        assert all(t["expr"].strip() for t in panel["targets"])
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])


@pytest.mark.parametrize("path", BOARDS, ids=lambda p: p.stem)
def test_rates_use_rate_interval_and_variables_are_used(path: Path) -> None:
    board = _load(path)
    exprs = [t["expr"] for p in _panels(board) for t in p["targets"]]
    for expr in exprs:
        # Range windows of rate()/increase() in panels: $__rate_interval (or $__range for totals).
        for window in re.findall(r"(?:rate|increase)\([^\[]*\[([^\]]+)\]", expr):
            assert window in ("$__rate_interval", "$__range"), expr
    names = [v["name"] for v in board["templating"]["list"]]
    assert "instance" in names
    for name in names:
        assert any(f'=~"${name}"' in e for e in exprs), f"variable ${name} filters no panel"
        variable = next(v for v in board["templating"]["list"] if v["name"] == name)
        assert variable["includeAll"]
        assert variable["allValue"] == ".*"
        assert variable["multi"]
    joined = "\n".join(exprs)
    # A panel that reads a phone_number_id-labelled metric must honour the number filter.
    if "phone_number_id" in names:
        for expr in exprs:
            if re.search(r"delivery_(messages|send_attempts|send_duration|rate_limit|circuit)", expr):
                assert '$phone_number_id' in expr, expr
    assert "$instance" in joined


def test_overview_has_what_an_operator_needs_first() -> None:
    board = _load(DASHBOARDS / "delivery-overview.json")
    exprs = "\n".join(t["expr"] for p in _panels(board) for t in p["targets"])
    for needed in (
        "delivery_api_requests_total", "delivery_messages_total", "delivery_status_events_total",  # throughput
        "error_class", "error_code", "delivery_failures_total",  # failures by class/code
        "histogram_quantile(0.5, sum by (le) (rate(delivery_send_duration_seconds_bucket",  # Graph API latency
        "histogram_quantile(0.95, sum by (le) (rate(delivery_send_duration_seconds_bucket",
        "histogram_quantile(0.99, sum by (le) (rate(delivery_send_duration_seconds_bucket",
        "delivery_rate_limit_per_second", "delivery_rate_limit_configured_per_second",  # effective vs configured
        "delivery_circuit_state", "delivery_consumer_lag_messages", "delivery_dead_letters_total",
        "delivery_transition_seconds_bucket",
    ):
        assert needed in exprs, needed


def test_error_ratio_panels_draw_the_alert_thresholds() -> None:
    board = _load(DASHBOARDS / "delivery-overview.json")
    by_title = {p["title"]: p for p in _panels(board) if p["type"] == "timeseries"}
    send = by_title["Send error ratio"]
    steps = [s["value"] for s in send["fieldConfig"]["defaults"]["thresholds"]["steps"]]
    assert steps == [None, 0.01, 0.06, 0.144]  # 1x, 6x, 14.4x of the 1% budget
    assert send["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] != "off"
    delivery = by_title["Delivery failure ratio"]
    steps = [s["value"] for s in delivery["fieldConfig"]["defaults"]["thresholds"]["steps"]]
    assert steps == [None, 0.03, 0.18, 0.432]  # 1x, 6x, 14.4x of the 3% budget


def test_every_panel_query_is_collected() -> None:
    collected = dashboard_expressions()
    panel_targets = sum(len(p["targets"]) for path in BOARDS for p in _panels(_load(path)))
    assert len([e for e in collected if e.kind == "panel"]) == panel_targets
