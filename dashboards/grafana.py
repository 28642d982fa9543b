"""Grafana dashboards built with Grafana's own typed builders (grafana-foundation-sdk, Grafana 11.6).

    board = Dashboard("delivery-sender", "Delivery — sender", "…", variables=[instance_var('job="delivery-sender"')])
    board.row("Throughput")
    board.timeseries("Attempts / s", [q('sum by (outcome) (rate(x[$__rate_interval]))', "{{outcome}}")], unit="ops")
    board.json()

A thin facade over the SDK's builders: the dashboards in `generate.py` say what to show (a row, a graph, a
stat, a state timeline); the SDK owns Grafana's model (field names, enums, schema version), and this module
only fixes the house style (legend, tooltip, line style, the pinned datasource) and the grid layout: panels
fill rows of 24 columns left to right, as a person would lay them out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.builders import prometheus, stat, statetimeline, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models import prometheus as prometheus_model
from slo import DATASOURCE

WIDTH = 24
_DATASOURCE = model.DataSourceRef(type_val=DATASOURCE["type"], uid=DATASOURCE["uid"])
_Builder = timeseries.Panel | stat.Panel | statetimeline.Panel


@dataclass(frozen=True)
class Query:
    """One Prometheus query of a panel."""

    expr: str
    legend: str = "__auto"

    def builder(self, ref_id: str) -> prometheus.Dataquery:
        return (prometheus.Dataquery().expr(self.expr).legend_format(self.legend).ref_id(ref_id)
                .datasource(_DATASOURCE).editor_mode(prometheus_model.QueryEditorMode.CODE).range())


def q(expr: str, legend: str = "__auto") -> Query:
    return Query(expr, legend)


def _variable(name: str, label: str, query: str) -> dashboard_builders.QueryVariable:
    return (dashboard_builders.QueryVariable(name).label(label).datasource(_DATASOURCE)
            .query(query)  # a plain string: Prometheus' `label_values(...)` variable query
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)  # numbers and replicas come and go
            .include_all(True).multi(True).all_value(".*").sort(model.VariableSort.ALPHABETICAL_ASC)
            .current(model.VariableOption(selected=True, text=["All"], value=["$__all"])))


def instance_var(job_matcher: str = 'job=~"delivery-.*"') -> dashboard_builders.QueryVariable:
    return _variable("instance", "Instance", f"label_values(up{{{job_matcher}}}, instance)")


def phone_var(metric: str = "delivery_send_attempts_total") -> dashboard_builders.QueryVariable:
    return _variable("phone_number_id", "Business number", f"label_values({metric}, phone_number_id)")


def thresholds(*steps: tuple[float, str]) -> dashboard_builders.ThresholdsConfig:
    return dashboard_builders.ThresholdsConfig().mode(model.ThresholdsMode.ABSOLUTE).steps(
        [model.Threshold(color="green", value=None), *(model.Threshold(color=c, value=v) for v, c in steps)])


def _legend() -> common_builders.VizLegendOptions:
    return (common_builders.VizLegendOptions().display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM).show_legend(True))


@dataclass
class Dashboard:
    uid: str
    title: str
    description: str
    variables: list[dashboard_builders.QueryVariable]
    tags: tuple[str, ...] = ("delivery",)
    _items: list[dashboard_builders.Row | _Builder] = field(default_factory=list)
    _x: int = 0
    _y: int = 0
    _row_height: int = 0

    def row(self, title: str) -> None:
        self._newline()
        self._items.append(dashboard_builders.Row(title).id(len(self._items) + 1)
                           .grid_pos(model.GridPos(h=1, w=WIDTH, x=0, y=self._y)))
        self._y += 1

    def _newline(self) -> None:
        if self._x:
            self._y += self._row_height
            self._x, self._row_height = 0, 0

    def _place(self, width: int, height: int) -> model.GridPos:
        if self._x + width > WIDTH:
            self._newline()
        pos = model.GridPos(h=height, w=width, x=self._x, y=self._y)
        self._x += width
        self._row_height = max(self._row_height, height)
        return pos

    def _add(self, panel: _Builder, title: str, description: str, queries: list[Query], width: int,
             height: int) -> _Builder:
        panel.id(len(self._items) + 1).title(title).description(description).datasource(_DATASOURCE)
        panel.grid_pos(self._place(width, height))
        for i, query in enumerate(queries):
            panel.with_target(query.builder(chr(ord("A") + i)))
        self._items.append(panel)
        return panel

    def timeseries(self, title: str, queries: list[Query], *, unit: str = "short", description: str = "",
                   width: int = 8, height: int = 8, steps: dashboard_builders.ThresholdsConfig | None = None,
                   minimum: float | None = 0, stack: bool = False) -> timeseries.Panel:
        """A graph; `steps` (from `thresholds`) are drawn as dashed lines."""
        panel = (timeseries.Panel().unit(unit).color_scheme(dashboard_builders.FieldColor().mode(
            model.FieldColorModeId.PALETTE_CLASSIC))
            .draw_style(common.GraphDrawStyle.LINE).line_width(1).fill_opacity(10)
            .show_points(common.VisibilityMode.NEVER).span_nulls(False)
            .stacking(common_builders.StackingConfig().group("A").mode(
                common.StackingMode.NORMAL if stack else common.StackingMode.NONE))
            .thresholds_style(common_builders.GraphThresholdsStyleConfig().mode(
                common.GraphThresholdsStyleMode.DASHED if steps else common.GraphThresholdsStyleMode.OFF))
            .thresholds(steps or thresholds()).legend(_legend())
            .tooltip(common_builders.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI)
                     .sort(common.SortOrder.DESCENDING)))
        if minimum is not None:
            panel.min(minimum)
        self._add(panel, title, description, queries, width, height)
        return panel

    def stat(self, title: str, query: Query, *, unit: str = "short", description: str = "",
             width: int = 4, height: int = 4, steps: dashboard_builders.ThresholdsConfig | None = None) -> stat.Panel:
        panel = (stat.Panel().unit(unit)
                 .color_scheme(dashboard_builders.FieldColor().mode(model.FieldColorModeId.THRESHOLDS))
                 .thresholds(steps or thresholds())
                 .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False).fields(""))
                 .color_mode(common.BigValueColorMode.VALUE).graph_mode(common.BigValueGraphMode.AREA)
                 .justify_mode(common.BigValueJustifyMode.AUTO).orientation(common.VizOrientation.AUTO)
                 .text_mode(common.BigValueTextMode.AUTO))
        self._add(panel, title, description, [query], width, height)
        return panel

    def state_timeline(self, title: str, query: Query, mappings: dict[str, tuple[str, str]], *,
                       description: str = "", width: int = 8, height: int = 8) -> statetimeline.Panel:
        """Discrete states over time; `mappings` is {value: (text, color)}."""
        value_map = model.ValueMap(options={
            value: model.ValueMappingResult(text=text, color=color, index=i)
            for i, (value, (text, color)) in enumerate(mappings.items())
        })
        panel = (statetimeline.Panel()
                 .color_scheme(dashboard_builders.FieldColor().mode(model.FieldColorModeId.THRESHOLDS))
                 .thresholds(thresholds()).mappings([value_map]).fill_opacity(80).line_width(0)
                 .merge_values(True).show_value(common.VisibilityMode.AUTO).align_value(common.TimelineValueAlignment.LEFT)
                 .row_height(0.9).legend(_legend())
                 .tooltip(common_builders.VizTooltipOptions().mode(common.TooltipDisplayMode.SINGLE)
                          .sort(common.SortOrder.NONE)))
        self._add(panel, title, description, [query], width, height)
        return panel

    def json(self) -> dict[str, Any]:
        board = (dashboard_builders.Dashboard(self.title).uid(self.uid).description(self.description)
                 .tags(list(self.tags)).version(1).editable()
                 .tooltip(model.DashboardCursorSync.CROSSHAIR)  # line up a latency spike with the error spike
                 .timezone("utc").time("now-1h", "now").refresh("30s").fiscal_year_start_month(0).live_now(False)
                 .annotation(dashboard_builders.AnnotationQuery().name("Annotations & Alerts").built_in(1)
                             .datasource(model.DataSourceRef(type_val="grafana", uid="-- Grafana --"))
                             .enable(True).hide(True).icon_color("rgba(0, 211, 255, 1)").type("dashboard"))
                 .link(dashboard_builders.DashboardLink("Delivery dashboards").type(model.DashboardLinkType.DASHBOARDS)
                       .tags(["delivery"]).as_dropdown(True).include_vars(True).keep_time(True)
                       .icon("external link").target_blank(False).tooltip("").url("")))
        for variable in self.variables:
            board.with_variable(variable)
        for item in self._items:
            if isinstance(item, dashboard_builders.Row):
                board.with_row(item)
            else:
                board.with_panel(item)
        encoded: dict[str, Any] = json.loads(JSONEncoder(sort_keys=False).encode(board.build()))
        return encoded
