"""Grafana dashboard JSON as plain dicts: a dashboard that lays out its panels as they are added.

    board = Dashboard("delivery-sender", "Delivery — sender", variables=[instance_var('job="delivery-sender"')])
    board.row("Throughput")
    board.timeseries("Attempts / s", [q('sum by (outcome) (rate(x[$__rate_interval]))', "{{outcome}}")], unit="ops")
    board.json()

Written against Grafana 11's dashboard model (schemaVersion 39). Plain dicts rather than a builder
library: the model is small, and the JSON stays easy to diff against what Grafana exports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from slo import DATASOURCE

SCHEMA_VERSION = 39
WIDTH = 24


def q(expr: str, legend: str = "__auto") -> dict[str, Any]:
    """One Prometheus query of a panel."""
    return {"expr": expr, "legendFormat": legend}


def _variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "definition": query,
        "query": {"query": query, "refId": f"{name}-values"},
        "refresh": 2,  # on time-range change: numbers and replicas come and go
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "regex": "",
        "sort": 1,
        "hide": 0,
    }


def instance_var(job_matcher: str = 'job=~"delivery-.*"') -> dict[str, Any]:
    return _variable("instance", "Instance", f"label_values(up{{{job_matcher}}}, instance)")


def phone_var(metric: str = "delivery_send_attempts_total") -> dict[str, Any]:
    return _variable("phone_number_id", "Business number", f"label_values({metric}, phone_number_id)")


def thresholds(*steps: tuple[float, str]) -> dict[str, Any]:
    return {
        "mode": "absolute",
        "steps": [{"color": "green", "value": None}, *({"color": c, "value": v} for v, c in steps)],
    }


@dataclass
class Dashboard:
    uid: str
    title: str
    description: str
    variables: list[dict[str, Any]]
    tags: tuple[str, ...] = ("delivery",)
    panels: list[dict[str, Any]] = field(default_factory=list)
    _x: int = 0
    _y: int = 0
    _row_height: int = 0

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append(
            {"id": len(self.panels) + 1, "type": "row", "title": title, "collapsed": False, "panels": [],
             "gridPos": {"h": 1, "w": WIDTH, "x": 0, "y": self._y}}
        )
        self._y += 1

    def _newline(self) -> None:
        if self._x:
            self._y += self._row_height
            self._x, self._row_height = 0, 0

    def _place(self, width: int, height: int) -> dict[str, int]:
        if self._x + width > WIDTH:
            self._newline()
        pos = {"h": height, "w": width, "x": self._x, "y": self._y}
        self._x += width
        self._row_height = max(self._row_height, height)
        return pos

    def _panel(self, kind: str, title: str, description: str, queries: list[dict[str, Any]], width: int,
               height: int, defaults: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
        panel = {
            "id": len(self.panels) + 1,
            "type": kind,
            "title": title,
            "description": description,
            "datasource": DATASOURCE,
            "gridPos": self._place(width, height),
            "targets": [
                {"refId": chr(ord("A") + i), "datasource": DATASOURCE, "editorMode": "code", "range": True,
                 "instant": False, **query}
                for i, query in enumerate(queries)
            ],
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": options,
        }
        self.panels.append(panel)
        return panel

    def timeseries(self, title: str, queries: list[dict[str, Any]], *, unit: str = "short", description: str = "",
                   width: int = 8, height: int = 8, steps: dict[str, Any] | None = None,
                   minimum: float | None = 0, stack: bool = False) -> dict[str, Any]:
        """A graph; `steps` (from `thresholds`) are drawn as dashed lines."""
        custom: dict[str, Any] = {
            "drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never", "spanNulls": False,
            "stacking": {"mode": "normal" if stack else "none", "group": "A"},
            "thresholdsStyle": {"mode": "dashed" if steps else "off"},
        }
        defaults: dict[str, Any] = {"unit": unit, "color": {"mode": "palette-classic"}, "custom": custom,
                                    "thresholds": steps or thresholds()}
        if minimum is not None:
            defaults["min"] = minimum
        options = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                   "tooltip": {"mode": "multi", "sort": "desc"}}
        return self._panel("timeseries", title, description, queries, width, height, defaults, options)

    def stat(self, title: str, query: dict[str, Any], *, unit: str = "short", description: str = "",
             width: int = 4, height: int = 4, steps: dict[str, Any] | None = None) -> dict[str, Any]:
        defaults = {"unit": unit, "color": {"mode": "thresholds"}, "thresholds": steps or thresholds()}
        options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                   "colorMode": "value", "graphMode": "area", "justifyMode": "auto", "orientation": "auto",
                   "textMode": "auto"}
        return self._panel("stat", title, description, [query], width, height, defaults, options)

    def state_timeline(self, title: str, query: dict[str, Any], mappings: dict[str, tuple[str, str]], *,
                       description: str = "", width: int = 8, height: int = 8) -> dict[str, Any]:
        """Discrete states over time; `mappings` is {value: (text, color)}."""
        defaults = {
            "color": {"mode": "thresholds"},
            "thresholds": thresholds(),
            "mappings": [{"type": "value", "options": {
                value: {"text": text, "color": color, "index": i}
                for i, (value, (text, color)) in enumerate(mappings.items())
            }}],
            "custom": {"fillOpacity": 80, "lineWidth": 0},
        }
        options = {"mergeValues": True, "showValue": "auto", "alignValue": "left", "rowHeight": 0.9,
                   "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                   "tooltip": {"mode": "single", "sort": "none"}}
        return self._panel("state-timeline", title, description, [query], width, height, defaults, options)

    def json(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": list(self.tags),
            "schemaVersion": SCHEMA_VERSION,
            "version": 1,
            "editable": True,
            "graphTooltip": 1,  # shared crosshair: line up a latency spike with the error spike
            "timezone": "utc",
            "time": {"from": "now-1h", "to": "now"},
            "refresh": "30s",
            "fiscalYearStartMonth": 0,
            "liveNow": False,
            "annotations": {"list": [{
                "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
                "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts",
                "type": "dashboard",
            }]},
            "links": [{"title": "Delivery dashboards", "type": "dashboards", "tags": ["delivery"], "asDropdown": True,
                       "includeVars": True, "keepTime": True, "icon": "external link", "targetBlank": False,
                       "tooltip": "", "url": ""}],
            "templating": {"list": self.variables},
            "panels": self.panels,
        }
