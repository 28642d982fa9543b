"""Every PromQL expression the repository ships, ready to parse with promtool or run on a real Prometheus.

    exprs = collect_expressions()          # dashboards, variables, Prometheus rules, Grafana alert rules
    problems = promtool_parse(exprs)       # [] when the real Prometheus parser accepts every one
    for e in exprs:
        server.query(e.probe)              # must return >= 1 series once a real pipeline was scraped
    selectors(exprs)                       # every metric selector inside them, to query one by one

Grafana's variables are substituted for values any Prometheus accepts: `$__rate_interval` → 1m,
`$__range` → 5m, `=~"$instance"` → `=~".*"`. An alert expression returns series only while it fires, so
its probe turns each comparison into a `bool` comparison: the probe returns a series whenever the
alert's inputs exist, firing or not. Both rewrites are checked by promtool like the originals.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "dashboards"
RULES = ROOT / "deploy" / "prometheus" / "rules"
GRAFANA_ALERTING = ROOT / "deploy" / "grafana" / "provisioning" / "alerting"
DATASOURCE_UID = "delivery-prometheus"

GRAFANA_INTERVALS = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "5m"}
_VARIABLE_MATCH = re.compile(r'=~"\$\{?(\w+)\}?"')
_LABEL_VALUES = re.compile(r"^label_values\((?:(.+),\s*)?(\w+)\)$", re.S)
# Our metric families, the recording rules' names, and `up{...}`: all the dashboards and rules chart
# (FastStream's `faststream_*` and the sandbox's `sandbox_*` are scraped, not charted). Our expressions only
# (promtool has already parsed them), so a pattern over names is enough here — not a general PromQL parser.
_SELECTOR = re.compile(r"(?<![\w:])(delivery_\w+|delivery:[\w:]+|up(?=\{))(\{[^}]*\})?")


@dataclass(frozen=True)
class Expression:
    source: str  # where it lives, for messages: "dashboards/delivery-api.json | Requests by outcome | A"
    kind: str  # panel | variable | record | alert | grafana-alert
    expr: str  # as written in the file

    @property
    def promql(self) -> str:
        """The expression with Grafana's variables replaced; label_values() as the query Grafana runs."""
        text = self.expr.strip()
        if self.kind == "variable":
            match = _LABEL_VALUES.match(text)
            if match is None:
                raise ValueError(f"{self.source}: only label_values(metric, label) variables are supported")
            metric, label = match.group(1), match.group(2)
            text = f"count by ({label}) ({metric})" if metric else f"count by ({label}) ({{{label}!=''}})"
        for name, value in GRAFANA_INTERVALS.items():
            text = text.replace(name, value)
        text = _VARIABLE_MATCH.sub('=~".*"', text)
        if "$" in text:
            raise ValueError(f"{self.source}: unsubstituted Grafana variable in {text!r}")
        return text

    @property
    def probe(self) -> str:
        """What must return >= 1 series on a Prometheus that scraped the pipeline."""
        return with_bool_comparisons(self.promql) if self.kind == "alert" else self.promql


def with_bool_comparisons(expr: str) -> str:
    """`a > 0.1 and b == 2` → `a > bool 0.1 and b == bool 2`: comparisons return 0/1 instead of filtering.

    Label matchers (inside braces) and strings are left alone.
    """
    out: list[str] = []
    i, depth, quote = 0, 0, ""
    while i < len(expr):
        ch = expr[i]
        if quote:
            out.append(ch)
            if ch == "\\" and i + 1 < len(expr):
                out.append(expr[i + 1])
                i += 1
            elif ch == quote:
                quote = ""
            i += 1
            continue
        if ch in "\"'`":
            quote = ch
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif depth == 0:
            op = next((o for o in ("==", "!=", ">=", "<=", ">", "<") if expr.startswith(o, i)), None)
            if op is not None:
                rest = expr[i + len(op):]
                out.append(op if rest.lstrip().startswith("bool") else f"{op} bool")
                i += len(op)
                continue
        out.append(ch)
        i += 1
    return "".join(out)


def _relative(path: Path) -> str:
    return str(path.relative_to(ROOT))


def dashboard_expressions() -> list[Expression]:
    found = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        for var in board.get("templating", {}).get("list", []):
            if var.get("type") == "query":
                query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
                found.append(Expression(f"{_relative(path)} | ${var['name']}", "variable", query))
        for panel in _panels(board["panels"]):
            for target in panel.get("targets", []):
                if target.get("expr"):
                    source = f"{_relative(path)} | {panel['title']} | {target['refId']}"
                    found.append(Expression(source, "panel", target["expr"]))
    return found


def _panels(panels: list[dict[str, object]]) -> list[dict[str, object]]:
    flat = []
    for panel in panels:
        flat.append(panel)
        nested = panel.get("panels")
        if isinstance(nested, list):
            flat.extend(_panels(nested))
    return flat


def rule_expressions() -> list[Expression]:
    found = []
    for path in sorted(RULES.glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                name = rule.get("record") or rule["alert"]
                severity = rule.get("labels", {}).get("severity", "")
                source = f"{_relative(path)} | {group['name']} | {name}{f' ({severity})' if severity else ''}"
                found.append(Expression(source, "record" if "record" in rule else "alert", rule["expr"]))
    return found


def grafana_alert_expressions() -> list[Expression]:
    found = []
    for path in sorted(GRAFANA_ALERTING.glob("*.yml")):
        for group in yaml.safe_load(path.read_text()).get("groups", []):
            for rule in group["rules"]:
                for query in rule["data"]:
                    if query["datasourceUid"] != "__expr__":
                        source = f"{_relative(path)} | {rule['uid']} | {query['refId']}"
                        found.append(Expression(source, "grafana-alert", query["model"]["expr"]))
    return found


def collect_expressions() -> list[Expression]:
    return dashboard_expressions() + rule_expressions() + grafana_alert_expressions()


def selectors(expressions: list[Expression]) -> dict[str, list[str]]:
    """Every metric selector (`name{matchers}`) in the probes, with the sources that use it."""
    found: dict[str, list[str]] = {}
    for e in expressions:
        for name, matchers in _SELECTOR.findall(e.probe):
            found.setdefault(f"{name}{matchers}", []).append(e.source)
    return found


def promtool() -> str:
    """promtool's path; missing is a failure, since `make setup` installs it (Debian's `prometheus`)."""
    binary = shutil.which("promtool")
    if binary is None:
        raise RuntimeError("promtool is not installed: `make setup` installs Debian's `prometheus` package")
    return binary


def promtool_parse(expressions: list[Expression]) -> list[str]:
    """Parse every expression (and its probe) with promtool, Prometheus' own parser; return the problems."""
    binary = promtool()
    groups, sources = [], {}
    for index, e in enumerate(expressions):
        for variant, text in (("expr", e.promql), ("probe", e.probe)):
            name = f"e{index}-{variant}"
            sources[name] = f"{e.source} ({variant})"
            groups.append({"name": name, "rules": [{"record": "promcheck:parse", "expr": text}]})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "expressions.yml"
        path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
        result = subprocess.run([binary, "check", "rules", str(path)], capture_output=True, text=True, check=False)
    if result.returncode == 0:
        return []
    output = result.stdout + result.stderr
    problems = [
        f"{source}: {line.strip()}"
        for name, source in sources.items()
        for line in output.splitlines()
        if f'"{name}"' in line or f" {name}," in line or f"group {name}" in line
    ]
    return problems or [output.strip()]
