"""Idempotency answers on disk (`pipeline.api.answers.AnswerIndex`: SQLite behind a Bloom filter and a
cache of recent answers) against an in-memory dict.

    .venv/bin/python bench/idempotency_state.py [--keys 1000000] [--lookups 200000] [--recent 20000]

The in-memory dict is what every API replica held before (one entry per key in the window). Phases,
each measured in this run, in its own child process (so RSS is its own):
1. fill: `--keys` answers, written as the store's tail writes them (one transaction per 500 records);
2. lookups (`--lookups` each, the cache warm): retries, i.e. random keys among the `--recent` last
   settled (a retry comes soon after the first request); random keys of the whole window; absent
   keys (a new key: the common case). Before them `prune(0)` deletes nothing but starts a second
   filter generation, so a miss checks two filters as it does in steady state;
3. restart: reopen the file and answer one lookup (what a replica restarting on its disk pays:
   lookups are exact at once, the filter is refilled in the background from one scan of the keys);
RSS growth of the process and bytes on disk per million keys are printed with the ratios.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.api.answers import Answer, AnswerIndex

TOPIC = "api.idempotency"


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _scope(n: int) -> str:
    return f"106540352242922:order-{n:012d}"


def _answer(n: int) -> Answer:
    return Answer(f"req_01JD3Q8Z0M7W4K2B{n:010d}", "2026-12-03T14:00:00.123456Z", f"{n:032x}", 1_764_770_000_000 + n)


def _open(directory: str, keys: int) -> AnswerIndex:
    return AnswerIndex(Path(directory) / "answers.sqlite", TOPIC, cache_mb=64, expected_keys=keys, recent_mb=32)


def _rate(get: Any, probes: list[str]) -> tuple[float, int]:
    started = time.perf_counter()
    found = sum(get(scope) is not None for scope in probes)
    return len(probes) / (time.perf_counter() - started), found


def _run(kind: str, keys: int, lookups: int, recent: int, directory: str, out: Any) -> None:
    rng = random.Random(7)
    rss0 = _rss_mb()
    started = time.perf_counter()
    if kind == "dict":
        table: dict[str, Answer] = {}
        for n in range(keys):
            table[_scope(n)] = _answer(n)
        get = table.get
    else:
        index = _open(directory, keys)
        for start in range(0, keys, 500):
            index.apply(((_scope(n), _answer(n)) for n in range(start, min(start + 500, keys))), {0: start + 500})
        index.prune(0)
        get = index.get  # type: ignore[assignment]
    fill = time.perf_counter() - started
    rss = _rss_mb() - rss0
    retries = [_scope(keys - 1 - rng.randrange(recent)) for _ in range(lookups)]
    window = [_scope(rng.randrange(keys)) for _ in range(lookups)]
    absent = [f"106540352242922:absent-{n}" for n in range(lookups)]
    for scope in window[:1000]:
        get(scope)  # warm
    retry_rate, retry_hits = _rate(get, retries)
    hit_rate, hits = _rate(get, window)
    miss_rate, found = _rate(get, absent)
    result = {"kind": kind, "fill_per_s": keys / fill, "rss_mb": rss, "retries_per_s": retry_rate,
              "hits_per_s": hit_rate, "misses_per_s": miss_rate, "hits": hits + retry_hits,
              "misses": lookups - found}
    if kind == "sqlite":
        result["filter_mb"] = index.filter_bytes / 1e6
        result["recent_mb"] = index.recent_bytes / 1e6
        index.close()
        files = list(Path(directory).glob("answers.sqlite*"))
        result["disk_mb"] = sum(f.stat().st_size for f in files) / 1e6
        started = time.perf_counter()
        reopened = _open(directory, keys)
        assert reopened.get(_scope(keys - 1)) == _answer(keys - 1)
        result["restart_s"] = time.perf_counter() - started
        assert reopened.filter_ready.wait(3600)
        result["filter_s"] = time.perf_counter() - started
        result["saved_offsets"] = reopened.positions()
        reopened.close()
    out.send(result)


def measure(kind: str, keys: int, lookups: int, recent: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-answers-") as directory:
        receiving, sending = multiprocessing.Pipe(duplex=False)
        child = multiprocessing.Process(target=_run, args=(kind, keys, lookups, recent, directory, sending))
        child.start()
        result: dict[str, Any] = receiving.recv()
        child.join()
        return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--lookups", type=int, default=200_000)
    parser.add_argument("--recent", type=int, default=20_000, help="retries hit the last this many keys")
    args = parser.parse_args()
    sqlite = measure("sqlite", args.keys, args.lookups, args.recent)
    table = measure("dict", args.keys, args.lookups, args.recent)
    per_million = 1_000_000 / args.keys
    print(f"\nbench/idempotency_state.py — {args.keys:,} keys, {args.lookups:,} lookups; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n")
    print("| store | fill keys/s | retries/s (recent hits) | window hits/s | misses/s (new keys) "
          "| RSS growth MB | disk MB per 1 M keys |")
    print("|---|---|---|---|---|---|---|")
    for r in (table, sqlite):
        disk = f"{r['disk_mb'] * per_million:,.0f}" if "disk_mb" in r else "—"
        print(f"| {r['kind']} | {r['fill_per_s']:,.0f} | {r['retries_per_s']:,.0f} | {r['hits_per_s']:,.0f} | "
              f"{r['misses_per_s']:,.0f} | {r['rss_mb']:,.0f} | {disk} |")
    print(f"\nsqlite / dict: retries {sqlite['retries_per_s'] / table['retries_per_s']:.2f}x, "
          f"window hits {sqlite['hits_per_s'] / table['hits_per_s']:.2f}x, "
          f"misses {sqlite['misses_per_s'] / table['misses_per_s']:.2f}x, "
          f"RSS {sqlite['rss_mb'] / max(table['rss_mb'], 0.001):.3f}x")
    print(f"in front of SQLite: Bloom filters {sqlite['filter_mb']:.1f} MB (two generations), "
          f"recent answers {sqlite['recent_mb']:.1f} MB")
    print(f"restart with the file present: {sqlite['restart_s'] * 1000:.1f} ms to reopen and answer "
          f"(exact from SQLite), {sqlite['filter_s']:.1f} s until the filter holds the keys on disk; "
          f"saved offsets {sqlite['saved_offsets']} (the tail starts there)")
    assert sqlite["hits"] == table["hits"] == 2 * args.lookups
    assert sqlite["misses"] == args.lookups


if __name__ == "__main__":
    main()
