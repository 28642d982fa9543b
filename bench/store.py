"""The store's projection throughput and read-route latency, on SQLite and on PostgreSQL.

    .venv/bin/python bench/store.py [--events 100000] [--messages 1000000] [--queries 300]
                                    [--backends sqlite,postgresql]

1. Projection: `--events` records (per message: request, result, sent, delivered, read) parsed by
   `project()` and written by `Backend.apply()` in batches of 2,000, one transaction each, as the
   subscriber does (Kafka's fetch is left out: it is FastStream's and the same for every stage).
   Baseline in the same run and database: a bare batched insert of the same rows into plain tables
   (no upsert, no index, no full-text index, no status refresh). Ratio = projection / baseline.
2. Reads: `--messages` outbound messages (10 per contact, a reply for every 10th, a status timeline
   for every 10th) bulk-loaded, then `--queries` sequential requests per route through the read API's
   ASGI app (auth, query checks, JSON included): p50 and p99 of each.
PostgreSQL is a throwaway server started here (`pipeline.local.postgres`). Targets (issue 14):
>= 10,000 events/s projected; status lookup p99 <= 5 ms; conversation page p99 <= 10 ms; text search
p99 <= 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pydantic import SecretStr  # noqa: E402

from pipeline.auth import ApiKeys  # noqa: E402
from pipeline.config import ApiKey  # noqa: E402
from pipeline.local.postgres import LocalPostgres  # noqa: E402
from pipeline.store.backend import Backend  # noqa: E402
from pipeline.store.crypto import Sealer  # noqa: E402
from pipeline.store.http import Reader, create_app  # noqa: E402
from pipeline.store.postgres import PostgresBackend  # noqa: E402
from pipeline.store.projection import Record, project  # noqa: E402
from pipeline.store.rows import Changes, InboundRow, OutboundRow, StatusRow  # noqa: E402
from pipeline.store.sqlite import SqliteBackend  # noqa: E402
from pipeline.store.telemetry import StoreTelemetry  # noqa: E402
from pipeline.topics import TopicName  # noqa: E402

NUMBER = "106540352242922"
BATCH = 2000
T0 = datetime.now(UTC) - timedelta(days=3)
WORDS = ("delivery", "invoice", "pickup", "reminder", "payment", "refund", "appointment", "ticket", "welcome",
         "update", "shipped", "confirmed", "cancelled", "voucher", "survey")
KEY = "bench-store-key"


def iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def projection_records(events: int) -> list[Record]:
    records = []
    for i in range(events // 5):
        request_id, wamid, to = f"req_bench_{i:08d}", f"wamid.bench.{i:08d}", f"+1650{i % 100_000:07d}"
        accepted = T0 + timedelta(milliseconds=i)
        records.append(Record(TopicName.SEND_REQUESTS, orjson.dumps({
            "request_id": request_id, "phone_number_id": NUMBER, "to": to, "accepted_at": iso(accepted),
            "message": {"type": "text", "text": {"body": f"Your order {i} {WORDS[i % len(WORDS)]}"}}})))
        records.append(Record(TopicName.SEND_RESULTS, orjson.dumps({
            "request_id": request_id, "phone_number_id": NUMBER, "to": to, "outcome": "sent", "wamid": wamid,
            "attempts": 1, "accepted_at": iso(accepted)})))
        for n, status in enumerate(("sent", "delivered", "read")):
            records.append(Record(TopicName.STATUS_EVENTS, orjson.dumps({
                "wamid": wamid, "status": status, "timestamp": iso(accepted + timedelta(seconds=1 + n)),
                "recipient_id": to[1:], "phone_number_id": NUMBER, "request_id": request_id,
                "accepted_at": iso(accepted), "pricing": {"category": "utility"}})))
    return records


async def projection_phase(backend: Backend, records: list[Record]) -> float:
    started = time.perf_counter()
    for start in range(0, len(records), BATCH):
        changes, rejects = project(records[start:start + BATCH])
        assert not rejects
        await backend.apply(changes)
    return len(records) / (time.perf_counter() - started)


async def baseline_phase(backend: Backend, records: list[Record]) -> float:
    """The same rows, inserted plainly: what the database costs without the projection's logic."""
    batches = [project(records[s:s + BATCH])[0] for s in range(0, len(records), BATCH)]
    if isinstance(backend, SqliteBackend):
        return await _sqlite_bare(backend, batches, len(records))
    assert isinstance(backend, PostgresBackend)
    return await _postgres_bare(backend, batches, len(records))


async def _sqlite_bare(backend: SqliteBackend, batches: list[Changes], events: int) -> float:
    import sqlite3

    conn = sqlite3.connect(backend.path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE IF NOT EXISTS bare_outbound (request_id, created_at, phone_number_id, wa_id, "
                 "message_type, text, accepted_at, outcome, wamid)")
    conn.execute("CREATE TABLE IF NOT EXISTS bare_status (wamid, status, occurred_at, request_id)")
    started = time.perf_counter()
    for changes in batches:
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO bare_outbound VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", [
            (r.request_id, r.created_at.timestamp(), r.phone_number_id, r.wa_id, r.message_type, r.text,
             r.accepted_at.timestamp() if r.accepted_at else None, r.outcome, r.wamid)
            for r in changes.outbound.values()])
        conn.executemany("INSERT INTO bare_status VALUES (?, ?, ?, ?)", [
            (s.wamid, s.status, s.occurred_at.timestamp(), s.request_id) for s in changes.statuses.values()])
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return events / elapsed


async def _postgres_bare(backend: PostgresBackend, batches: list[Changes], events: int) -> float:
    import asyncpg

    conn = await asyncpg.connect(backend._dsn)
    await conn.execute("CREATE TABLE IF NOT EXISTS bare_outbound (request_id text, created_at timestamptz, "
                       "phone_number_id text, wa_id text, message_type text, text text, accepted_at timestamptz, "
                       "outcome text, wamid text)")
    await conn.execute("CREATE TABLE IF NOT EXISTS bare_status (wamid text, status text, occurred_at timestamptz, "
                       "request_id text)")
    started = time.perf_counter()
    for changes in batches:
        async with conn.transaction():
            out = list(changes.outbound.values())
            await conn.execute(
                "INSERT INTO bare_outbound SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::text[], "
                "$4::text[], $5::text[], $6::text[], $7::timestamptz[], $8::text[], $9::text[])",
                *([getattr(r, c) for r in out] for c in ("request_id", "created_at", "phone_number_id", "wa_id",
                                                           "message_type", "text", "accepted_at", "outcome",
                                                           "wamid")))
            sts = list(changes.statuses.values())
            await conn.execute(
                "INSERT INTO bare_status SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[])",
                *([getattr(s, c) for s in sts] for c in ("wamid", "status", "occurred_at", "request_id")))
    elapsed = time.perf_counter() - started
    await conn.close()
    return events / elapsed


def contact(i: int) -> str:
    return f"44770{i % (MESSAGES_PER_CONTACT_DIV or 1):07d}"


MESSAGES_PER_CONTACT_DIV = 0  # set in main: messages / 10 contacts


async def bulk_load(backend: Backend, messages: int) -> float:
    started = time.perf_counter()
    rng = random.Random(1)
    for start in range(0, messages, 20_000):
        changes = Changes()
        for i in range(start, min(messages, start + 20_000)):
            at = T0 + timedelta(milliseconds=i * 200)
            wamid = f"wamid.load.{i:08d}"
            changes.outbound[f"req_load_{i:08d}"] = OutboundRow(
                request_id=f"req_load_{i:08d}", created_at=at, phone_number_id=NUMBER, wa_id=contact(i),
                message_type="text", text=f"Your order {i} {rng.choice(WORDS)} {rng.choice(WORDS)}", accepted_at=at,
                outcome="sent", wamid=wamid, attempts=1)
            if i % 10 == 0:
                for n, status in enumerate(("sent", "delivered", "read")):
                    changes.statuses[(wamid, status)] = StatusRow(
                        wamid=wamid, status=status, occurred_at=at + timedelta(seconds=1 + n), request_id=None,
                        phone_number_id=NUMBER, wa_id=contact(i), pricing_category="utility")
                changes.inbound[f"wamid.in.{i:08d}"] = InboundRow(
                    wamid=f"wamid.in.{i:08d}", wa_id=contact(i), occurred_at=at + timedelta(seconds=30),
                    phone_number_id=NUMBER, message_type="text", text="Thanks!", reply_to=wamid)
        await backend.apply(changes)
    return time.perf_counter() - started


async def analyse(backend: Backend) -> None:
    """What autovacuum (PostgreSQL) and the retention pass's `PRAGMA optimize` (SQLite) do in service."""
    if isinstance(backend, PostgresBackend):
        import asyncpg

        conn = await asyncpg.connect(backend._dsn)
        await conn.execute("VACUUM ANALYZE")  # autovacuum does both (and merges GIN's pending list)
        await conn.close()
    else:
        import sqlite3

        with sqlite3.connect(backend.path) as conn:
            conn.execute("ANALYZE")


async def latency(call: Callable[[int], Awaitable[httpx.Response]], queries: int) -> tuple[float, float]:
    for i in range(20):  # warm-up
        await call(i)
    samples = []
    for i in range(queries):
        started = time.perf_counter()
        response = await call(i)
        samples.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.text
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.99))]


async def read_phase(backend: Backend, messages: int, queries: int) -> dict[str, tuple[float, float]]:
    keys = ApiKeys([ApiKey(key=SecretStr(KEY), phone_number_ids=frozenset([NUMBER]))])

    async def ready() -> list[str]:
        return []

    app = create_app(Reader(backend, Sealer(None)), keys, StoreTelemetry(), ready)
    rng = random.Random(2)
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://store",
                                 headers=headers) as http:
        routes: dict[str, Callable[[int], Awaitable[httpx.Response]]] = {
            "status lookup  GET /v1/messages/{id}": lambda i: http.get(
                f"/v1/messages/req_load_{rng.randrange(messages) // 10 * 10:08d}"),
            "conversation   GET /v1/contacts/{wa_id}/messages": lambda i: http.get(
                f"/v1/contacts/{contact(rng.randrange(messages))}/messages", params={"limit": 50}),
            "search (rare)  GET /v1/messages?q=<order no>": lambda i: http.get(
                "/v1/messages", params={"q": str(rng.randrange(messages))}),
            "search (common word, newest 50) ?q=refund": lambda i: http.get(
                "/v1/messages", params={"q": rng.choice(WORDS), "limit": 50}),
            "search by recipient ?to=": lambda i: http.get(
                "/v1/messages", params={"to": f"+{contact(rng.randrange(messages))}"}),
            "contact analytics": lambda i: http.get(f"/v1/contacts/{contact(rng.randrange(messages))}/analytics",
                                                    params={"since": iso(T0 - timedelta(days=1)),
                                                            "until": iso(datetime.now(UTC) + timedelta(days=60))}),
        }
        return {name: await latency(call, queries) for name, call in routes.items()}


async def run_backend(name: str, backend: Backend, args: argparse.Namespace) -> dict[str, Any]:
    await backend.open()
    try:
        records = projection_records(args.events)
        projected = await projection_phase(backend, records)
        replay = await projection_phase(backend, records[: len(records) // 5])  # replays: upserts that change nothing
        bare = await baseline_phase(backend, records)
        load = await bulk_load(backend, args.messages)
        await analyse(backend)
        reads = await read_phase(backend, args.messages, args.queries)
        return {"backend": name, "projected": projected, "replayed": replay, "bare": bare, "load_s": load,
                "reads": reads}
    finally:
        await backend.close()


def report(result: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"\n== {result['backend']} ==")
    print(f"projection   {result['projected']:>10,.0f} events/s  (target >= 10,000)")
    print(f"replay       {result['replayed']:>10,.0f} events/s  (the same records again: no-op upserts)")
    print(f"bare insert  {result['bare']:>10,.0f} events/s  (baseline, same rows, same run)")
    print(f"ratio        {result['projected'] / result['bare']:>10.2f}  projection / bare insert")
    print(f"bulk load of {args.messages:,} messages: {result['load_s']:.0f} s")
    for route, (p50, p99) in result["reads"].items():
        print(f"  {route:<52} p50 {p50:6.2f} ms  p99 {p99:6.2f} ms")


async def main() -> None:
    global MESSAGES_PER_CONTACT_DIV
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args()
    MESSAGES_PER_CONTACT_DIV = max(1, args.messages // 10)
    print(f"store bench: {args.events:,} events projected, {args.messages:,} messages for reads, "
          f"{args.queries} queries per route")
    for name in args.backends.split(","):
        with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
            if name == "sqlite":
                report(await run_backend(name, SqliteBackend(Path(tmp) / "store.db"), args), args)
                continue
            server = LocalPostgres.create()
            server.start()
            try:
                backend = PostgresBackend(server.dsn(server.new_database()))
                report(await run_backend(name, backend, args), args)
            finally:
                server.stop()
                server.remove()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
