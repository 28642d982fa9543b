"""Dead-letter tooling: list, show and replay the records a stage could not process.

    entries = await read_entries(settings, Selection(stage=Stage.SENDER, reason=None, since=None), limit=50)
    entries[0].id                                # "0:17": partition and offset on the dead-letters topic
    report = await replay(settings, entries, dry_run=False)
    report.replayed, report.skipped              # ids sent back, ids replayed before (never twice)

A replay produces the original key, value and headers to the origin topic with a `replayed-from` header,
and records the dead letter's id on the compacted `dead-letters.replays` topic, both in one Kafka
transaction: a dead letter is replayed at most once, whatever crashes in between. The command line is
`pipeline dead-letters list|show|replay` (`pipeline.deadletters.cli`); docs/operations.md has a worked example.
"""

from pipeline.deadletters.replay import ReplayReport, read_entries, replay, replayed_ids
from pipeline.deadletters.select import Entry, Selection, parse_since

__all__ = [
    "Entry",
    "ReplayReport",
    "Selection",
    "parse_since",
    "read_entries",
    "replay",
    "replayed_ids",
]
