"""Pure parts of the dead-letter tooling: what an entry is, which entries a filter selects, how one is shown.

    selection = Selection(stage=Stage.SENDER, reason=DeadLetterReason.PAYLOAD_REJECTED, since=parse_since("2h"))
    selection.matches(entry)         # True / False
    describe(entry)                  # a dict for `show`: decoded key, headers, reason, value
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pipeline.contracts import DeadLetter, DeadLetterReason, Stage

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


@dataclass(frozen=True)
class Entry:
    """A dead letter as stored: its place on the dead-letters topic is its id."""

    partition: int
    offset: int
    letter: DeadLetter

    @property
    def id(self) -> str:
        return f"{self.partition}:{self.offset}"


@dataclass(frozen=True)
class Selection:
    stage: Stage | None = None
    reason: DeadLetterReason | None = None
    since: datetime | None = None

    def matches(self, entry: Entry) -> bool:
        letter = entry.letter
        return (
            (self.stage is None or letter.stage == self.stage)
            and (self.reason is None or letter.reason == self.reason)
            and (self.since is None or letter.failed_at >= self.since)
        )


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`2h`, `30m`, `7d`, `90s` ago, or an RFC 3339 instant (`2026-12-03T10:00:00Z`)."""
    now = now or datetime.now(UTC)
    match = _DURATION.match(text.strip())
    if match:
        return now - timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})
    try:
        instant = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--since: {text!r} is neither a duration (30m, 2h, 7d) nor an RFC 3339 instant") from None
    if instant.tzinfo is None:
        raise ValueError(f"--since: {text!r} needs a timezone (e.g. 2026-12-03T10:00:00Z)")
    return instant


def parse_id(text: str) -> tuple[int, int]:
    partition, sep, offset = text.partition(":")
    if not sep or not partition.isdigit() or not offset.isdigit():
        raise ValueError(f"{text!r} is not a dead-letter id (PARTITION:OFFSET, as `list` prints)")
    return int(partition), int(offset)


def decode_bytes(raw: bytes | None, *, as_json: bool = True) -> Any:
    """JSON when it is JSON (and `as_json`), text when it is UTF-8, else base64 (marked as such)."""
    if raw is None:
        return None
    if as_json:
        try:
            return json.loads(raw)
        except ValueError:
            pass
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(raw).decode("ascii")}


def describe(entry: Entry) -> dict[str, Any]:
    letter = entry.letter
    key = base64.b64decode(letter.key_b64) if letter.key_b64 is not None else None
    return {
        "id": entry.id,
        "stage": letter.stage.value,
        "reason": letter.reason.value,
        "error": letter.error,
        "failed_at": letter.failed_at.isoformat(),
        "origin": {"topic": letter.topic, "partition": letter.partition, "offset": letter.offset},
        "request_id": letter.request_id,
        "key": decode_bytes(key, as_json=False),
        "headers": dict(letter.headers),
        "value": decode_bytes(letter.raw_value()),
    }


def summary_line(entry: Entry) -> str:
    letter = entry.letter
    return (
        f"{entry.id:>10}  {letter.failed_at:%Y-%m-%d %H:%M:%S}  {letter.stage.value:<7} {letter.reason.value:<18} "
        f"{letter.topic}  {letter.error[:80]}"
    )
