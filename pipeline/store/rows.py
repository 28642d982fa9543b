"""What the projection writes and what the backends read back: plain rows, no I/O.

    OutboundRow(request_id="req_01…", created_at=t, wamid="wamid.…")   # a partial upsert
    merge(a, b)          # one row from two partial views of the same request

A partial row's `None` means "unknown here": an upsert fills it without erasing what another topic
already stored, so the records of one request may arrive in any order.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime

from pipeline.contracts.vocabulary import DeliveryStatus

# The status of an outbound row before any status webhook: the API accepted it.
ACCEPTED = "accepted"
STATUS_RANK = {ACCEPTED: 0, **{s.value: s.rank for s in DeliveryStatus}}
RANK_STATUS = {rank: status for status, rank in STATUS_RANK.items()}


@dataclass(slots=True)
class OutboundRow:
    request_id: str
    created_at: datetime  # partition and retention time; the same for every record of one request
    phone_number_id: str | None = None
    wa_id: str | None = None  # the recipient, digits only (Meta's wa_id)
    message_type: str | None = None
    text: str | None = None
    metadata: str | None = None  # JSON object
    accepted_at: datetime | None = None
    outcome: str | None = None
    wamid: str | None = None
    attempts: int | None = None
    error_code: int | None = None
    error_title: str | None = None
    error_class: str | None = None
    error_message: str | None = None
    completed_at: datetime | None = None
    trace_id: str | None = None  # 32 hex digits of the send's W3C trace, for the console's trace link


@dataclass(slots=True, frozen=True)
class StatusRow:
    wamid: str
    status: str
    occurred_at: datetime
    request_id: str | None = None
    phone_number_id: str | None = None
    wa_id: str | None = None
    pricing_category: str | None = None
    error_code: int | None = None
    error_title: str | None = None
    error_class: str | None = None
    error_message: str | None = None

    @property
    def rank(self) -> int:
        return STATUS_RANK[self.status]


@dataclass(slots=True, frozen=True)
class InboundRow:
    wamid: str
    wa_id: str  # the sender
    occurred_at: datetime
    phone_number_id: str | None = None
    message_type: str | None = None
    text: str | None = None
    reply_to: str | None = None


@dataclass(slots=True)
class Changes:
    """One batch's effect on the database, applied in one transaction."""

    outbound: dict[str, OutboundRow] = field(default_factory=dict)
    statuses: dict[tuple[str, str], StatusRow] = field(default_factory=dict)
    inbound: dict[str, InboundRow] = field(default_factory=dict)

    @property
    def refresh_wamids(self) -> set[str]:
        """Outbound rows whose status columns must be recomputed from the timeline."""
        wamids = {key[0] for key in self.statuses}
        wamids.update(row.wamid for row in self.outbound.values() if row.wamid)
        return wamids

    def add_outbound(self, row: OutboundRow) -> None:
        known = self.outbound.get(row.request_id)
        self.outbound[row.request_id] = row if known is None else merge(known, row)

    def add_status(self, row: StatusRow) -> None:
        key = (row.wamid, row.status)
        known = self.statuses.get(key)
        if known is None or row.occurred_at < known.occurred_at:
            self.statuses[key] = row

    def add_inbound(self, row: InboundRow) -> None:
        self.inbound.setdefault(row.wamid, row)

    def __len__(self) -> int:
        return len(self.outbound) + len(self.statuses) + len(self.inbound)


_MERGED = tuple(f.name for f in dataclasses.fields(OutboundRow) if f.name not in ("request_id", "created_at"))


def merge(old: OutboundRow, new: OutboundRow) -> OutboundRow:
    """`new`'s known fields written over `old` (in place: the projection's hot loop; `old` is returned).

    `request_id` and `created_at` are the key and stay.
    """
    for name in _MERGED:
        value = getattr(new, name)
        if value is not None:
            setattr(old, name, value)
    return old


# --- what the read side returns ------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class MessageView:
    """An outbound row as stored, status columns included."""

    request_id: str
    created_at: datetime
    phone_number_id: str | None
    wa_id: str | None
    message_type: str | None
    text: str | None
    metadata: str | None
    accepted_at: datetime | None
    outcome: str | None
    wamid: str | None
    error_code: int | None
    error_title: str | None
    error_class: str | None
    error_message: str | None
    status: str
    trace_id: str | None = None


@dataclass(slots=True, frozen=True)
class ConversationItem:
    direction: str  # "outbound" | "inbound"
    id: str
    wamid: str | None
    phone_number_id: str | None
    message_type: str | None
    text: str | None
    at: datetime
    status: str | None
    reply_to: str | None


@dataclass(slots=True, frozen=True)
class AnalyticsFacts:
    """One outbound message's times, the input of the analytics (all relative to its acceptance)."""

    accepted_at: datetime
    sent: bool
    delivered_at: datetime | None
    read_at: datetime | None
    failed: bool
    error_code: int | None
    error_title: str | None
    # The contact's first message within the response window. Meta stamps inbound messages in whole
    # seconds, so the window opens at the accept's second: a reply within that second counts.
    replied_at: datetime | None


@dataclass(slots=True, frozen=True)
class Erased:
    outbound: int
    inbound: int
    statuses: int
