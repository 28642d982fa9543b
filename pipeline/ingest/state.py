"""Per-message delivery state and the forward-only rule that turns status updates into events.

    state = MessageState()
    d = state.apply(DeliveryStatus.READ, timestamp=1764000030, source_offset=7, now_ms=…)
    d.outcome            # Outcome.FORWARD
    d.emit               # [(SENT, READ), (DELIVERED, READ), (READ, None)]: implied ones first
    state.apply(DeliveryStatus.DELIVERED, 1764000002, 8, …).outcome   # OUT_OF_ORDER: not emitted

Rules (docs/ingest.md explains why):
- sent < delivered < read < played is one chain; a status implies every status before it. When one
  arrives before the statuses it implies, those are emitted first, marked as implied, with its
  timestamp — so every read message also counts as delivered.
- The real update of an implied status arrives later: it is recorded (its timestamp feeds the
  transition histograms) and counted as out of order, never emitted — the state does not go back.
- failed is terminal: anything after it is out of order.
- A (wamid, status) seen before is a duplicate: no event, no change.

The state is the value of the compacted `status.state` topic (`to_json`/`from_json`). Each entry keeps
the `status.updates` offset that established it, so a restart can undo exactly the work whose input
offsets were never committed (`rolled_back`) and replay it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import orjson
from pydantic import BaseModel

from pipeline.contracts import DeliveryStatus

CHAIN = (DeliveryStatus.SENT, DeliveryStatus.DELIVERED, DeliveryStatus.READ, DeliveryStatus.PLAYED)

# transition label → (from, to), both Meta's timestamps
TRANSITIONS = {
    "sent_to_delivered": (DeliveryStatus.SENT, DeliveryStatus.DELIVERED),
    "delivered_to_read": (DeliveryStatus.DELIVERED, DeliveryStatus.READ),
}
# transition label → to, from the API's accepted time (which the callback data carries)
FROM_ACCEPTED = {
    "accepted_to_sent": DeliveryStatus.SENT,
    "accepted_to_delivered": DeliveryStatus.DELIVERED,
}
FORMAT_VERSION = 1


class Outcome(StrEnum):
    FORWARD = "forward"
    DUPLICATE = "duplicate"
    OUT_OF_ORDER = "out_of_order"


@dataclass(slots=True)
class Seen:
    timestamp: int  # epoch seconds, as Meta reported (an implied status: its implier's)
    source_offset: int  # the status.updates offset that made this entry what it is now
    implied: bool = False
    implied_offset: int | None = None  # where it was first implied, if it was: a rollback may return there


@dataclass(slots=True)
class Decision:
    outcome: Outcome
    # (status to emit, the status that implied it or None), in emission order
    emit: list[tuple[DeliveryStatus, DeliveryStatus | None]] = field(default_factory=list)
    transitions: list[tuple[str, float]] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.outcome is not Outcome.DUPLICATE


@dataclass(slots=True)
class MessageState:
    statuses: dict[DeliveryStatus, Seen] = field(default_factory=dict)
    updated_ms: int = 0  # processing time of the last change: drives retention

    @property
    def current(self) -> DeliveryStatus | None:
        if DeliveryStatus.FAILED in self.statuses:
            return DeliveryStatus.FAILED
        reached = [s for s in CHAIN if s in self.statuses]
        return reached[-1] if reached else None

    def apply(
        self, status: DeliveryStatus, timestamp: int, source_offset: int, now_ms: int, accepted_at: float | None = None
    ) -> Decision:
        """`accepted_at` (epoch seconds), when the update carries it, times the accepted_to_* transitions."""
        seen = self.statuses.get(status)
        if seen is not None and not seen.implied:
            return Decision(Outcome.DUPLICATE)
        self.updated_ms = now_ms
        if seen is not None or DeliveryStatus.FAILED in self.statuses or not self._ahead(status):
            # The real update of an implied status, or anything after failed: record, never emit.
            implied_offset = seen.source_offset if seen is not None else None
            self.statuses[status] = Seen(timestamp, source_offset, implied_offset=implied_offset)
            return Decision(Outcome.OUT_OF_ORDER, transitions=self._transitions(status, accepted_at))
        decision = Decision(Outcome.FORWARD)
        if status in CHAIN:
            for implied in CHAIN[: CHAIN.index(status)]:
                if implied not in self.statuses:
                    self.statuses[implied] = Seen(timestamp, source_offset, True, source_offset)
                    decision.emit.append((implied, status))
        self.statuses[status] = Seen(timestamp, source_offset)
        decision.emit.append((status, None))
        decision.transitions = self._transitions(status, accepted_at)
        return decision

    def _ahead(self, status: DeliveryStatus) -> bool:
        current = self.current
        return current is None or status.rank > current.rank

    def _transitions(self, arrived: DeliveryStatus, accepted_at: float | None) -> list[tuple[str, float]]:
        """Durations that became known now: both ends real, one of them the status that arrived."""
        observed = []
        for label, end in FROM_ACCEPTED.items():
            if arrived is end and accepted_at is not None:
                # Meta's seconds against our milliseconds: a sub-second send may look negative.
                observed.append((label, max(0.0, self.statuses[end].timestamp - accepted_at)))
        for label, (start, end) in TRANSITIONS.items():
            if arrived not in (start, end):
                continue
            a, b = self.statuses.get(start), self.statuses.get(end)
            if a is not None and b is not None and not a.implied and not b.implied:
                # Meta's timestamps have one-second resolution and may tie or even invert.
                observed.append((label, float(max(0, b.timestamp - a.timestamp))))
        return observed

    def rolled_back(self, committed_offset: int) -> MessageState | None:
        """The state as it was before offset `committed_offset` was applied (None: no state yet).

        Exactly what applying only the updates below that offset would have built, so replaying the
        rest decides the same way the first run did.
        """
        if all(seen.source_offset < committed_offset for seen in self.statuses.values()):
            return self
        kept: dict[DeliveryStatus, Seen] = {}
        for status, seen in self.statuses.items():
            if seen.source_offset < committed_offset:
                kept[status] = seen
            elif seen.implied_offset is not None and seen.implied_offset < committed_offset:
                kept[status] = Seen(seen.timestamp, seen.implied_offset, True, seen.implied_offset)
        return MessageState(kept, self.updated_ms) if kept else None

    # --- the status.state record -----------------------------------------------------------------

    def to_json(self) -> bytes:
        """The record, sized to its content: orjson writes into a 4 KiB buffer, and kept as it comes
        (the in-memory state holds one per message) each ~220-byte value pinned ~4 KiB of RSS."""
        current = self.current
        return _compact(orjson.dumps(
            {
                "v": FORMAT_VERSION,
                "status": current.value if current else None,
                "statuses": {s.value: _entry(seen) for s, seen in self.statuses.items()},
                "updated_ms": self.updated_ms,
            }
        ))

    @classmethod
    def from_json(cls, raw: bytes) -> MessageState:
        data = orjson.loads(raw)
        return cls(
            statuses={
                DeliveryStatus(s): Seen(
                    int(e["timestamp"]),
                    int(e["source_offset"]),
                    bool(e.get("implied", False)),
                    int(e["implied_offset"]) if e.get("implied_offset") is not None else None,
                )
                for s, e in data["statuses"].items()
            },
            updated_ms=int(data.get("updated_ms", 0)),
        )


def _compact(raw: bytes) -> bytes:
    return bytes(memoryview(raw))  # a copy: small bytes live in pymalloc's pools, the buffer is freed


class StateEntry(BaseModel):
    timestamp: int
    source_offset: int
    implied: bool = False
    implied_offset: int | None = None


class StateRecord(BaseModel):
    """The `status.state` value `to_json` writes (described for the AsyncAPI document; parsed by hand)."""

    v: int = FORMAT_VERSION
    status: DeliveryStatus | None
    statuses: dict[DeliveryStatus, StateEntry]
    updated_ms: int


def _entry(seen: Seen) -> dict[str, int | bool]:
    entry: dict[str, int | bool] = {"timestamp": seen.timestamp, "source_offset": seen.source_offset}
    if seen.implied:
        entry["implied"] = True
    if seen.implied_offset is not None:
        entry["implied_offset"] = seen.implied_offset
    return entry
