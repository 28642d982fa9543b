"""The answer index's layers in front of SQLite: exact answers on hits, misses and false positives,
and the memory of the recent-answers cache and the Bloom filters bounded whatever the traffic."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.api.answers import Answer, AnswerIndex

TOPIC = "api.idempotency"


def _answer(n: int, at_ms: int = 1_764_770_000_000) -> Answer:
    return Answer(f"req_{n:026d}", "2026-12-03T14:00:00.123456Z", f"{n:032x}", at_ms + n)


def _scope(n: int) -> str:
    return f"106540352242922:order-{n:012d}"


class Reads:
    """Counts the point reads that reach SQLite."""

    def __init__(self, index: AnswerIndex) -> None:
        self.count = 0
        index._db.set_trace_callback(self._seen)

    def _seen(self, statement: str) -> None:
        if statement.startswith("SELECT request_id"):
            self.count += 1


@pytest.fixture
def index(tmp_path: Path) -> Iterator[AnswerIndex]:
    answers = AnswerIndex(tmp_path / "answers.sqlite", TOPIC, cache_mb=1, expected_keys=10_000, recent_mb=1)
    yield answers
    answers.close()


def test_hits_are_exact_from_the_cache_and_from_sqlite(tmp_path: Path, index: AnswerIndex) -> None:
    index.apply(((_scope(n), _answer(n)) for n in range(500)), {0: 500})
    reads = Reads(index)
    assert all(index.get(_scope(n)) == _answer(n) for n in range(500))
    assert reads.count == 0  # all recent: answered from memory
    index.close()

    reopened = AnswerIndex(tmp_path / "answers.sqlite", TOPIC, expected_keys=10_000)
    reads = Reads(reopened)
    assert all(reopened.get(_scope(n)) == _answer(n) for n in range(500))  # exact while the filter loads
    assert reads.count == 500
    assert reopened.filter_ready.wait(30)
    absent = [f"106540352242922:absent-{n}" for n in range(2_000)]
    assert [reopened.get(scope) for scope in absent] == [None] * len(absent)
    assert reads.count < 500 + 20  # the keys on disk are in the filter: new ones do not read SQLite
    assert all(reopened.get(_scope(n)) == _answer(n) for n in range(500))
    assert reads.count == 500  # read once, then recent
    reopened.close()


def test_a_new_key_never_touches_sqlite(index: AnswerIndex) -> None:
    index.apply(((_scope(n), _answer(n)) for n in range(5_000)), {0: 5_000})
    index.prune(0)  # a second generation: a miss checks both
    index.apply(((_scope(n), _answer(n)) for n in range(5_000, 6_000)), {0: 6_000})
    reads = Reads(index)
    absent = [f"106540352242922:absent-{n}" for n in range(20_000)]
    assert [index.get(scope) for scope in absent] == [None] * len(absent)
    # 0.1 % false positives at the sized load: a few reads, nowhere near one per miss.
    assert reads.count < len(absent) * 0.005


def test_false_positives_fall_through_to_sqlite_and_answer_none(tmp_path: Path) -> None:
    # Sized for 100 keys, holding 5,000: the filter says "maybe" to most new keys.
    index = AnswerIndex(tmp_path / "answers.sqlite", TOPIC, expected_keys=100, recent_mb=1)
    index.recent_limit_bytes = 0  # every answer from the filter and SQLite
    index.apply(((_scope(n), _answer(n)) for n in range(5_000)), {0: 5_000})
    reads = Reads(index)
    absent = [f"106540352242922:absent-{n}" for n in range(2_000)]
    assert [index.get(scope) for scope in absent] == [None] * len(absent)
    assert reads.count > len(absent) // 2  # the false positives happened, and were answered exactly
    assert all(index.get(_scope(n)) == _answer(n) for n in range(0, 5_000, 7))
    index.close()


def test_deleted_and_pruned_answers_leave_memory_too(index: AnswerIndex) -> None:
    index.apply([(_scope(1), _answer(1)), (_scope(2), _answer(2, at_ms=0)), (_scope(3), _answer(3))], {0: 3})
    assert index.get(_scope(1)) == _answer(1)
    index.apply([(_scope(1), None)], {0: 4})
    assert index.get(_scope(1)) is None  # still in the filter: SQLite says it is gone
    assert index.get(_scope(2)) == _answer(2, at_ms=0)
    assert index.prune(1_000) == 1
    assert index.get(_scope(2)) is None
    assert index.get(_scope(3)) == _answer(3)
    replaced = Answer("req_other", "2026-12-03T15:00:00Z", "f" * 32, 1_764_780_000_000)
    index.apply([(_scope(3), replaced)], {0: 5})
    assert index.get(_scope(3)) == replaced


def test_filter_generations_keep_every_stored_key_findable(index: AnswerIndex) -> None:
    index.recent_limit_bytes = 0
    old, new, newer = _answer(1, at_ms=100), _answer(2, at_ms=200), _answer(3, at_ms=300)
    index.apply([(_scope(1), old)], {})
    index.prune(0)  # nothing deleted; the first generation becomes the previous one
    index.apply([(_scope(2), new)], {})
    index.prune(0)  # the previous one still holds a stored answer (at 101): kept
    assert (index.get(_scope(1)), index.get(_scope(2))) == (old, new)
    index.prune(150)  # deletes `old`; the previous generation held nothing newer: dropped, rotated
    index.apply([(_scope(3), newer)], {})
    assert (index.get(_scope(1)), index.get(_scope(2)), index.get(_scope(3))) == (None, new, newer)
    index.prune(250)  # `new` pruned with its generation
    assert (index.get(_scope(2)), index.get(_scope(3))) == (None, newer)
    assert index.filter_bytes <= 2 * 10_000 * 15 // 8 + 64  # two generations at ≈ 14.4 bits a key


def test_memory_stays_within_its_bounds_whatever_the_traffic(index: AnswerIndex) -> None:
    filter_bytes = index.filter_bytes
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for start in range(0, 20_000, 500):  # ~10 MB of answers through a 1 MB cache
        index.apply(((f"{_scope(n)}:{'é' * 40}", _answer(n)) for n in range(start, start + 500)), {0: start + 500})
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert 0 < index.recent_bytes <= index.recent_limit_bytes == 1024 * 1024
    assert held <= index.recent_limit_bytes  # the charge per entry covers what Python really holds
    assert held > index.recent_limit_bytes * 0.5  # and the cache is used, not empty
    assert index.filter_bytes == filter_bytes  # sized up front, not growing with keys
    newest, oldest = f"{_scope(19_999)}:{'é' * 40}", f"{_scope(0)}:{'é' * 40}"
    reads = Reads(index)
    assert index.get(newest) == _answer(19_999)
    assert reads.count == 0  # recent: from memory
    assert index.get(oldest) == _answer(0)
    assert reads.count == 1  # evicted, still exact from disk


def test_lookups_and_writes_while_the_filter_loads_stay_exact(tmp_path: Path) -> None:
    index = AnswerIndex(tmp_path / "answers.sqlite", TOPIC, expected_keys=200_000)
    for start in range(0, 100_000, 10_000):
        index.apply(((_scope(n), _answer(n)) for n in range(start, start + 10_000)), {0: start + 10_000})
    index.close()

    reopened = AnswerIndex(tmp_path / "answers.sqlite", TOPIC, expected_keys=200_000)
    reopened.recent_limit_bytes = 0
    n = 100_000
    while not reopened.filter_ready.is_set() and n < 200_000:  # the loader thread runs meanwhile
        reopened.apply([(_scope(n), _answer(n))], {0: n + 1})
        reopened.prune(0)  # prunes and rotations interleave with the loader too
        assert reopened.get(_scope(n)) == _answer(n)
        assert reopened.get(_scope(n % 100_000)) == _answer(n % 100_000)
        assert reopened.get(f"absent-{n}") is None
        n += 1
    assert reopened.filter_ready.wait(60)
    assert n > 100_000  # the loop ran while the filter was loading
    reopened.prune(0)  # now it rotates: everything stays findable through the previous generation
    assert all(reopened.get(_scope(k)) == _answer(k) for k in range(0, n, 97))
    reopened.close()
