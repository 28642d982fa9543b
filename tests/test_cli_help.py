"""Every command's help is plain text without a `<bool>` label on flags."""

from __future__ import annotations

from typing import Any

import typer
from typer.testing import CliRunner

from pipeline.cli import app


def _commands(group: Any, path: list[str]) -> list[list[str]]:
    found = [path]
    for name, command in group.commands.items():
        if hasattr(command, "commands"):  # a group (Typer ships its own click)
            found.extend(_commands(command, [*path, name]))
        else:
            found.append([*path, name])
    return found


def test_no_help_shows_a_bool_metavar() -> None:
    root = typer.main.get_command(app)
    paths = _commands(root, [])
    assert ["dead-letters", "replay"] in paths
    runner = CliRunner()
    for path in paths:
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "<bool>" not in result.output, path
