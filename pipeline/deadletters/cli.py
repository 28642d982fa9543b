"""`pipeline dead-letters list|show|replay`: the command line of the dead-letter tooling.

    pipeline dead-letters list --stage sender --reason payload_rejected --since 2h --limit 20
    pipeline dead-letters show 0:17
    pipeline dead-letters replay --reason payload_rejected --dry-run
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import Annotated

import typer

from pipeline.config import settings_for_command
from pipeline.contracts import DeadLetterReason, Stage

app = typer.Typer(
    help="List, show and replay dead letters (docs/operations.md#dead-letters).", no_args_is_help=True,
    rich_markup_mode=None,  # plain help, as every command of `pipeline` (no `<bool>` on flags)
)

StageOption = Annotated[Stage | None, typer.Option(help="Only dead letters of this stage.")]
ReasonOption = Annotated[DeadLetterReason | None, typer.Option(help="Only dead letters with this reason.")]
SinceOption = Annotated[
    str | None, typer.Option(help="Only dead letters since: a duration (30m, 2h, 7d) or an RFC 3339 instant.")
]


def _selection(stage: Stage | None, reason: DeadLetterReason | None, since: str | None) -> object:
    from pipeline.deadletters.select import Selection, parse_since

    when: datetime | None = None
    if since is not None:
        try:
            when = parse_since(since)
        except ValueError as exc:
            typer.echo(f"pipeline: {exc}", err=True)
            raise typer.Exit(2) from None
    return Selection(stage=stage, reason=reason, since=when)


@app.command("list")
def list_(
    stage: StageOption = None, reason: ReasonOption = None, since: SinceOption = None,
    limit: Annotated[int, typer.Option(help="At most this many (the most recent).", min=1)] = 50,
) -> None:
    """One line per dead letter: id, time, stage, reason, origin topic, error."""
    from pipeline.deadletters.replay import read_entries
    from pipeline.deadletters.select import Selection, summary_line

    selection = _selection(stage, reason, since)
    assert isinstance(selection, Selection)
    entries = asyncio.run(read_entries(settings_for_command(), selection, limit))
    for entry in entries:
        typer.echo(summary_line(entry))
    typer.echo(f"{len(entries)} dead letter(s)", err=True)


@app.command("show")
def show(entry_id: Annotated[str, typer.Argument(metavar="ID", help="PARTITION:OFFSET, as `list` prints.")]) -> None:
    """One dead letter, decoded: original key, headers, reason, error and value."""
    from pipeline.deadletters.replay import read_entry
    from pipeline.deadletters.select import describe

    try:
        entry = asyncio.run(read_entry(settings_for_command(), entry_id))
    except ValueError as exc:
        typer.echo(f"pipeline: {exc}", err=True)
        raise typer.Exit(2) from None
    if entry is None:
        typer.echo(f"pipeline: no dead letter {entry_id}", err=True)
        raise typer.Exit(1)
    typer.echo(json.dumps(describe(entry), indent=2, ensure_ascii=False))


@app.command("replay")
def replay_(
    stage: StageOption = None, reason: ReasonOption = None, since: SinceOption = None,
    limit: Annotated[int | None, typer.Option(help="At most this many (the most recent).", min=1)] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be replayed; send nothing.")] = False,
) -> None:
    """Send matching dead letters back to their origin topic (header `replayed-from`), each at most once."""
    from pipeline.deadletters.replay import read_entries, replay
    from pipeline.deadletters.select import Selection

    selection = _selection(stage, reason, since)
    assert isinstance(selection, Selection)
    settings = settings_for_command()

    async def run() -> tuple[int, list[str], list[str]]:
        entries = await read_entries(settings, selection, limit)
        report = await replay(settings, entries, dry_run=dry_run)
        return len(entries), report.replayed, report.skipped

    matched, replayed, skipped = asyncio.run(run())
    verb = "would replay" if dry_run else "replayed"
    for entry_id in replayed:
        typer.echo(f"{verb} {entry_id}")
    typer.echo(f"{matched} matched, {len(replayed)} {verb}, {len(skipped)} already replayed before")
