"""The ingest's dedupe state on disk against the in-memory dict, and the engines it was chosen from.

    .venv/bin/python bench/state.py --engines dict,store     # 1,000,000 tracked messages: the store as built
    .venv/bin/python bench/state.py --messages 10000000 --engines dict,store
    .venv/bin/python bench/state.py --messages 200000 --engines dict,sqlite,lmdb,rocksdict

`store` is `pipeline.ingest.store.StateStore`, what the ingest runs; `sqlite`, `lmdb` and `rocksdict`
are the bare engines measured before it was built. Each engine runs in a process of its own (so RSS is
its own), on one partition's worth of state:

1. load: `--messages` status.state values (the real `MessageState.to_json` of a read message, three
   statuses, ~200 bytes) written in batches of 500, as a rebuild from the changelog would: msgs/s;
2. memory and disk: the process's RSS after the load (minus the RSS before it) and the store's files;
3. decisions/s: `--decisions` dedupe decisions on random tracked wamids (read the state, decode,
   `apply` a duplicate or a late `played`, encode, write back), the deduper's per-status work, with a
   warm cache; against the in-memory dict in the same run;
4. reopen: closing and opening the store again, then answering one lookup (a restart on the same disk,
   before any changelog tail).

lmdb and rocksdict are not project dependencies (nothing in `pipeline/` uses them yet): install them
into the venv to run this (`pip install lmdb rocksdict`); an engine that is missing is reported so.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.contracts import DeliveryStatus  # noqa: E402
from pipeline.ingest.state import MessageState  # noqa: E402
from pipeline.ingest.store import StateStore  # noqa: E402

BATCH = 500
CACHE_BYTES = 64 * 1024 * 1024  # the cache each on-disk engine gets


class Store(Protocol):
    def get(self, key: bytes) -> bytes | None: ...
    def put_many(self, items: list[tuple[bytes, bytes]]) -> None: ...
    def close(self) -> None: ...


class DictStore:
    def __init__(self, path: Path) -> None:
        self.data: dict[bytes, bytes] = {}

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def put_many(self, items: list[tuple[bytes, bytes]]) -> None:
        self.data.update(items)

    def close(self) -> None:
        pass


class SqliteStore:
    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path / "state.sqlite", isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(f"PRAGMA cache_size=-{CACHE_BYTES // 1024}")
        self.db.execute("CREATE TABLE IF NOT EXISTS state (k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID")

    def get(self, key: bytes) -> bytes | None:
        row = self.db.execute("SELECT v FROM state WHERE k = ?", (key,)).fetchone()
        return row[0] if row else None

    def put_many(self, items: list[tuple[bytes, bytes]]) -> None:
        self.db.execute("BEGIN")
        self.db.executemany("INSERT OR REPLACE INTO state VALUES (?, ?)", items)
        self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()


class LmdbStore:
    def __init__(self, path: Path) -> None:
        import lmdb

        self.env = lmdb.open(str(path / "state.lmdb"), map_size=64 * 1024**3, sync=False, readahead=False)

    def get(self, key: bytes) -> bytes | None:
        with self.env.begin() as txn:
            value: bytes | None = txn.get(key)
            return value

    def put_many(self, items: list[tuple[bytes, bytes]]) -> None:
        with self.env.begin(write=True) as txn:
            for key, value in items:
                txn.put(key, value)

    def close(self) -> None:
        self.env.close()


class RocksStore:
    def __init__(self, path: Path) -> None:
        from rocksdict import BlockBasedOptions, Cache, Options, Rdict, WriteBatch

        options = Options(raw_mode=True)
        table = BlockBasedOptions()
        table.set_block_cache(Cache(CACHE_BYTES))
        options.set_block_based_table_factory(table)
        options.set_write_buffer_size(16 * 1024 * 1024)
        self._batch = WriteBatch
        self.db = Rdict(str(path / "state.rocks"), options)

    def get(self, key: bytes) -> bytes | None:
        value: bytes | None = self.db.get(key)
        return value

    def put_many(self, items: list[tuple[bytes, bytes]]) -> None:
        batch = self._batch(raw_mode=True)
        for key, value in items:
            batch.put(key, value)
        self.db.write(batch)

    def close(self) -> None:
        self.db.close()


class IngestStore:
    """The store the ingest runs (`pipeline.ingest.store.StateStore`): SQLite with its indexes on age and
    source offset, the checkpoint in each transaction, and its byte-bounded cache of recent values."""

    def __init__(self, path: Path) -> None:
        self.store = StateStore(path / "state.sqlite", cache_bytes=CACHE_BYTES)
        self.offset = 0

    def get(self, key: bytes) -> bytes | None:
        return self.store.get(key.decode())

    def put_many(self, items: list[tuple[bytes, bytes]]) -> None:
        self.offset += len(items)
        now_ms = int(time.time() * 1000)  # as the deduper stamps a change: its processing time
        self.store.write([(k.decode(), v, now_ms, self.offset) for k, v in items], checkpoint=self.offset)

    def close(self) -> None:
        self.store.close()


ENGINES: dict[str, type[Any]] = {"dict": DictStore, "store": IngestStore, "sqlite": SqliteStore, "lmdb": LmdbStore,
                                 "rocksdict": RocksStore}


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def states(count: int) -> Iterator[tuple[bytes, bytes]]:
    for i in range(count):
        state = MessageState()
        for n, status in enumerate((DeliveryStatus.SENT, DeliveryStatus.DELIVERED, DeliveryStatus.READ)):
            state.apply(status, 1764000000 + n, 3 * i + n, 1764000000000)
        yield f"wamid.HBgLMTY1MDU1NTEyMzQVAgARGBI{i:012d}".encode(), state.to_json()


def decide(store: Store, name: str, keys: list[bytes]) -> float:
    """The deduper's per-status work on each key; seconds taken."""
    started = time.perf_counter()
    pending: list[tuple[bytes, bytes]] = []
    for i, key in enumerate(keys):
        raw = store.get(key)
        if raw is None:
            raise RuntimeError(f"{name}: lost {key!r}")
        state = MessageState.from_json(raw)
        decision = state.apply(DeliveryStatus.PLAYED if i % 2 else DeliveryStatus.READ, 1764000100, i, 1)
        if decision.changed:
            pending.append((key, state.to_json()))
        if len(pending) == BATCH:  # one write per batch, as the deduper writes status.state
            store.put_many(pending)
            pending = []
    store.put_many(pending)
    return time.perf_counter() - started


def run_engine(name: str, messages: int, decisions: int, recent: int) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix=f"bench-state-{name}-"))
    try:
        store = ENGINES[name](work)
        before = rss_bytes()
        started = time.perf_counter()
        batch: list[tuple[bytes, bytes]] = []
        for item in states(messages):
            batch.append(item)
            if len(batch) == BATCH:
                store.put_many(batch)
                batch = []
        if batch:
            store.put_many(batch)
        load_s = time.perf_counter() - started
        rss = rss_bytes() - before
        rng = random.Random(1)
        key = "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBI{:012d}".format
        # Warm: statuses of recently sent messages (delivered and read come seconds to minutes after
        # sent), drawn from the newest `recent` messages, which the store's cache holds. Cold: any
        # tracked message, uniformly (a late status of an old message; mostly past the cache).
        warm_keys = [key(messages - 1 - rng.randrange(min(recent, messages))).encode() for _ in range(decisions)]
        cold_keys = [key(rng.randrange(messages)).encode() for _ in range(decisions)]
        for k in warm_keys[:10_000]:
            store.get(k)
        warm_s = decide(store, name, warm_keys)
        cold_s = decide(store, name, cold_keys)
        keys = cold_keys
        disk = sum(f.stat().st_size for f in work.rglob("*") if f.is_file())
        store.close()
        started = time.perf_counter()
        reopened = ENGINES[name](work)
        answered = reopened.get(keys[0]) is not None or name == "dict"
        reopen_s = time.perf_counter() - started
        reopened.close()
        return {"load_per_s": messages / load_s, "rss_mb": rss / 1e6, "disk_mb": disk / 1e6,
                "decisions_per_s": decisions / warm_s, "cold_decisions_per_s": decisions / cold_s,
                "reopen_s": reopen_s, "answered": float(answered)}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--decisions", type=int, default=200_000)
    parser.add_argument("--engines", default="dict,sqlite,lmdb,rocksdict")
    parser.add_argument("--recent", type=int, default=50_000, help="warm decisions: among the newest N messages")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_engine(args.one, args.messages, args.decisions, args.recent)))
        return
    results: dict[str, dict[str, float]] = {}
    for name in args.engines.split(","):
        done = subprocess.run(
            [sys.executable, __file__, "--one", name, "--messages", str(args.messages),
             "--decisions", str(args.decisions), "--recent", str(args.recent)],
            capture_output=True, text=True, env=os.environ, check=False)
        if done.returncode != 0:
            print(f"{name}: failed ({done.stderr.strip().splitlines()[-1] if done.stderr else done.returncode})")
            continue
        results[name] = json.loads(done.stdout)
        print(f"{name}: {results[name]}", flush=True)
    base = results.get("dict")
    print(f"\n{args.messages:,} tracked messages in one partition; {args.decisions:,} decisions each, warm"
          f" (among the newest {args.recent:,}) and cold (any)\n")
    print("| engine | load msgs/s | RSS MB | RSS MB per 1 M | disk MB per 1 M | warm decisions/s | vs dict |"
          " cold decisions/s | vs dict | reopen s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    per_million = 1_000_000 / args.messages
    for name, r in results.items():
        ratio = f"{r['decisions_per_s'] / base['decisions_per_s']:.2f}" if base else "—"
        cold = f"{r['cold_decisions_per_s'] / base['cold_decisions_per_s']:.2f}" if base else "—"
        print(f"| {name} | {r['load_per_s']:,.0f} | {r['rss_mb']:,.0f} | {r['rss_mb'] * per_million:,.0f} | "
              f"{r['disk_mb'] * per_million:,.0f} | {r['decisions_per_s']:,.0f} | {ratio} | "
              f"{r['cold_decisions_per_s']:,.0f} | {cold} | {r['reopen_s']:.3f} |")


if __name__ == "__main__":
    main()
