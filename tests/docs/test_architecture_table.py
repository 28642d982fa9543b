"""docs/architecture.md's package table is the import graph: derived from the code, compared both ways."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "pipeline"
_ROW = re.compile(r"^\| `pipeline/([a-z0-9_]+)(?:/|\.py)` \|(?:[^|\\]|\\.)*\| ([^|]*) \|$")


def _unit(path: Path) -> str:
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else path.stem


def derived_graph() -> dict[str, set[str]]:
    """Each top-level module or package of `pipeline`, and the others it imports (anywhere in its code)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        unit = _unit(path)
        graph.setdefault(unit, set())
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else (
                [alias.name for alias in node.names] if isinstance(node, ast.Import) else [])
            for name in names:
                parts = name.split(".")
                if parts[0] == "pipeline" and len(parts) > 1 and parts[1] != unit:
                    graph[unit].add(parts[1])
    return {unit: deps for unit, deps in graph.items() if unit not in {"__init__", "__main__"}}


def documented_graph() -> dict[str, set[str]]:
    table: dict[str, set[str]] = {}
    for line in (ROOT / "docs" / "architecture.md").read_text().splitlines():
        match = _ROW.match(line.strip())
        if match:
            cell = match.group(2).strip()
            table[match.group(1)] = set() if cell == "—" else {d.strip(" `") for d in cell.split(",")}
    return table


def test_every_module_is_in_the_table_with_exactly_what_it_imports() -> None:
    assert documented_graph() == derived_graph()


def test_the_stages_never_import_each_other() -> None:
    stages = {"api", "sender", "ingest", "store", "notify"}
    graph = derived_graph()
    assert {(unit, dep) for unit in stages & graph.keys() for dep in graph[unit] & stages} == set()
