"""The one small interface both databases implement, and how to open the configured one.

    backend = open_backend(settings.store)        # SqliteBackend or PostgresBackend, not connected
    await backend.open()                          # connects and migrates
    written = await backend.apply(changes)        # one transaction: {"outbound_messages": 3, ...}
    view = await backend.message("req_01…", Scope.of(key))

Hand-written SQL per backend behind this Protocol (docs/store.md says why): the statements that
matter (upserts, full-text search, partitions) differ between SQLite and PostgreSQL anyway, and each
is tuned to its engine. The behaviour is the same: tests/store runs one suite against both.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from pipeline.config import ApiKey
from pipeline.store.rows import AnalyticsFacts, Changes, ConversationItem, Erased, MessageView, StatusRow
from pipeline.store.settings import SQLITE_SCHEME, StoreSettings

TABLES = ("outbound_messages", "status_events", "inbound_messages")
RESPONSE_WINDOW_SECONDS = 24 * 3600


@dataclass(frozen=True, slots=True)
class Scope:
    """The business numbers a caller may read; `numbers=None` means all of them."""

    numbers: frozenset[str] | None

    @classmethod
    def of(cls, key: ApiKey) -> Scope:
        return cls(None if "*" in key.phone_number_ids else frozenset(key.phone_number_ids))

    def allows(self, phone_number_id: str | None) -> bool:
        return self.numbers is None or (phone_number_id is not None and phone_number_id in self.numbers)

    def narrowed(self, phone_number_id: str | None) -> Scope:
        """Only `phone_number_id` (the caller checked `allows` first), or unchanged when None."""
        return self if phone_number_id is None else Scope(frozenset([phone_number_id]))

    @property
    def sorted_numbers(self) -> list[str]:
        return sorted(self.numbers or ())


ALL = Scope(None)


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a page ended: the (time, id) of its last item; the next page starts strictly before."""

    at: datetime
    id: str


@dataclass(frozen=True, slots=True)
class Search:
    words: tuple[str, ...] = ()  # all must occur; a trailing `*` is a prefix
    wa_id: str | None = None
    status_rank: int | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 50
    cursor: Cursor | None = None


class BackendUnavailable(Exception):
    """The database cannot be reached or refused the operation; the caller retries later."""


class Backend(Protocol):
    name: str

    async def open(self) -> None:
        """Connect and bring the schema to the current version (idempotent)."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise BackendUnavailable unless the database answers."""

    async def apply(self, changes: Changes) -> dict[str, int]:
        """Write one batch in one transaction; rows written per table."""

    async def message(self, request_id: str, scope: Scope) -> tuple[MessageView, list[StatusRow]] | None: ...

    async def conversation(
        self, wa_id: str, scope: Scope, limit: int, before: Cursor | None
    ) -> list[ConversationItem]: ...

    async def search(self, search: Search, scope: Scope) -> list[MessageView]: ...

    async def has_contact(self, wa_id: str, scope: Scope) -> bool: ...

    async def analytics_facts(
        self, scope: Scope, since: datetime, until: datetime, wa_id: str | None
    ) -> list[AnalyticsFacts]: ...

    async def erase(self, wa_id: str, scope: Scope) -> Erased: ...

    async def expire(self, cutoff: datetime) -> dict[str, int]:
        """Delete everything older than `cutoff`; rows removed per table."""


def open_backend(settings: StoreSettings) -> Backend:
    url = settings.database_url.get_secret_value()
    if settings.backend == "sqlite":
        from pipeline.store.sqlite import SqliteBackend

        return SqliteBackend(url.removeprefix(SQLITE_SCHEME))
    from pipeline.store.postgres import PostgresBackend

    return PostgresBackend(url, pool_size=settings.pool_size)
