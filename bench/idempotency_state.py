"""Idempotency answers on disk (`pipeline.api.answers.AnswerIndex`, SQLite) against an in-memory dict.

    .venv/bin/python bench/idempotency_state.py [--keys 1000000] [--lookups 200000]

The in-memory dict is what every API replica held before (one entry per key in the window). Phases,
each measured in this run, in its own child process (so RSS is its own):
1. fill: `--keys` answers, written as the store's tail writes them (one transaction per 500 records);
2. lookups: `--lookups` random point reads of existing keys, warm cache, then of absent keys;
3. restart: reopen the file and answer one lookup (what a replica restarting on its disk pays);
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


def _run(kind: str, keys: int, lookups: int, directory: str, out: Any) -> None:
    rng = random.Random(7)
    rss0 = _rss_mb()
    started = time.perf_counter()
    if kind == "dict":
        table: dict[str, Answer] = {}
        for n in range(keys):
            table[_scope(n)] = _answer(n)
        get = table.get
    else:
        index = AnswerIndex(Path(directory) / "answers.sqlite", TOPIC, cache_mb=64)
        for start in range(0, keys, 500):
            index.apply(((_scope(n), _answer(n)) for n in range(start, min(start + 500, keys))), {0: start + 500})
        get = index.get  # type: ignore[assignment]
    fill = time.perf_counter() - started
    rss = _rss_mb() - rss0
    probes = [_scope(rng.randrange(keys)) for _ in range(lookups)]
    for scope in probes[:1000]:
        get(scope)  # warm
    started = time.perf_counter()
    hits = sum(get(scope) is not None for scope in probes)
    hit_rate = lookups / (time.perf_counter() - started)
    absent = [f"106540352242922:absent-{n}" for n in range(lookups)]
    started = time.perf_counter()
    misses = sum(get(scope) is None for scope in absent)
    miss_rate = lookups / (time.perf_counter() - started)
    result = {"kind": kind, "fill_per_s": keys / fill, "rss_mb": rss, "hits_per_s": hit_rate,
              "misses_per_s": miss_rate, "hits": hits, "misses": misses}
    if kind == "sqlite":
        index.close()
        files = list(Path(directory).glob("answers.sqlite*"))
        result["disk_mb"] = sum(f.stat().st_size for f in files) / 1e6
        started = time.perf_counter()
        reopened = AnswerIndex(Path(directory) / "answers.sqlite", TOPIC, cache_mb=64)
        assert reopened.get(_scope(keys - 1)) == _answer(keys - 1)
        result["restart_s"] = time.perf_counter() - started
        result["saved_offsets"] = reopened.positions()
        reopened.close()
    out.send(result)


def measure(kind: str, keys: int, lookups: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-answers-") as directory:
        receiving, sending = multiprocessing.Pipe(duplex=False)
        child = multiprocessing.Process(target=_run, args=(kind, keys, lookups, directory, sending))
        child.start()
        result: dict[str, Any] = receiving.recv()
        child.join()
        return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--lookups", type=int, default=200_000)
    args = parser.parse_args()
    sqlite, table = measure("sqlite", args.keys, args.lookups), measure("dict", args.keys, args.lookups)
    per_million = 1_000_000 / args.keys
    print(f"\nbench/idempotency_state.py — {args.keys:,} keys, {args.lookups:,} lookups; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n")
    print("| store | fill keys/s | hits/s (warm) | misses/s | RSS growth MB per 1 M keys | disk MB per 1 M keys |")
    print("|---|---|---|---|---|---|")
    for r in (table, sqlite):
        disk = f"{r['disk_mb'] * per_million:,.0f}" if "disk_mb" in r else "—"
        print(f"| {r['kind']} | {r['fill_per_s']:,.0f} | {r['hits_per_s']:,.0f} | {r['misses_per_s']:,.0f} | "
              f"{r['rss_mb'] * per_million:,.0f} | {disk} |")
    print(f"\nsqlite / dict: hits {sqlite['hits_per_s'] / table['hits_per_s']:.2f}x, "
          f"misses {sqlite['misses_per_s'] / table['misses_per_s']:.2f}x, "
          f"RSS {sqlite['rss_mb'] / max(table['rss_mb'], 0.001):.3f}x")
    print(f"restart with the file present: {sqlite['restart_s'] * 1000:.1f} ms to reopen and answer; "
          f"saved offsets {sqlite['saved_offsets']} (the tail starts there)")
    assert sqlite["hits"] == table["hits"] == args.lookups
    assert sqlite["misses"] == args.lookups


if __name__ == "__main__":
    main()
