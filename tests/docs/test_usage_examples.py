"""Every module docstring's usage example still matches the real signatures.

A usage block is the indented part of a module docstring. Python blocks must parse, and every call in
them to something the module (or the block's own imports) defines must bind to that thing's signature:
the right number of positional arguments and only keywords it takes (names the example binds
itself, `x = …` or `with … as x`, are its own). Blocks that show a shell command,
an HTTP route table or a diagram are prose, recognised by their first word or their arrows.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import inspect
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
_PROSE_STARTS = ("$ ", "pipeline ", "python ", "curl ", "kcat ", "GET ", "POST ", "PUT ", "PATCH ", "DELETE ", "make ")
_PROSE_MARKS = ("─", "│", "▶", "→ [")


def _modules() -> list[Path]:
    found = sorted((ROOT / "pipeline").rglob("*.py"))
    found += sorted(p for p in (ROOT / "tests").rglob("*.py") if not p.name.startswith("test_"))
    return found


def _usage_blocks(doc: str) -> Iterator[str]:
    block: list[str] = []
    for line in [*doc.splitlines(), "end"]:
        if line.startswith("    ") or (block and not line.strip()):
            block.append(line)
            continue
        text = textwrap.dedent("\n".join(block)).strip("\n")
        block = []
        if text.strip():
            yield text


def _is_prose(block: str) -> bool:
    return block.startswith(_PROSE_STARTS) or any(mark in block for mark in _PROSE_MARKS)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(node: ast.expr, namespace: dict[str, Any]) -> Any:
    if isinstance(node, ast.Name):
        if node.id in namespace:
            return namespace[node.id]
        return None
    if isinstance(node, ast.Attribute):
        owner = _resolve(node.value, namespace)
        if owner is None or not (inspect.ismodule(owner) or inspect.isclass(owner)):
            return None  # an instance's attributes depend on state the example does not build
        return getattr(owner, node.attr, _MISSING)
    return None


_MISSING = object()


def _problems(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    doc = ast.get_docstring(tree, clean=False)
    if not doc:
        return []
    module = importlib.import_module(_module_name(path))
    problems: list[str] = []
    for block in _usage_blocks(doc):
        if _is_prose(block):
            continue
        try:
            parsed = ast.parse(block.replace("…", "..."))
        except SyntaxError as err:
            problems.append(f"does not parse ({err.msg}): {block.splitlines()[0]!r}")
            continue
        namespace = dict(vars(module))
        assigned: set[str] = set()
        for node in ast.walk(parsed):
            if isinstance(node, ast.ImportFrom) and node.module:
                source = importlib.import_module(node.module)
                for alias in node.names:
                    namespace[alias.asname or alias.name] = getattr(source, alias.name, _MISSING)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    namespace[alias.asname or alias.name.split(".")[0]] = importlib.import_module(alias.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                assigned.add(node.id)
        for name in assigned:
            namespace.pop(name, None)  # a local of the example shadows the module's own
        for node in ast.walk(parsed):
            if not isinstance(node, ast.Call):
                continue
            target = _resolve(node.func, namespace)
            label = ast.unparse(node.func)
            if target is _MISSING:
                problems.append(f"{label}: no such attribute")
                continue
            if target is None or getattr(builtins, label, None) is target or not callable(target):
                continue
            if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
                continue
            try:
                signature = inspect.signature(target)
            except (TypeError, ValueError):
                continue
            try:
                signature.bind(*node.args, **{k.arg: k.value for k in node.keywords if k.arg})
            except TypeError as err:
                problems.append(f"{ast.unparse(node)[:100]}: {err}")
    return problems


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_usage_example_matches_the_code(path: Path) -> None:
    assert _problems(path) == []
