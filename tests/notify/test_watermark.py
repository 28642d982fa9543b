"""The commit watermark: one past a contiguous run of finished records, whatever order they finish in."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.notify.watermark import Watermark


def test_nothing_tracked_nothing_to_commit() -> None:
    assert Watermark().position() is None


def test_the_oldest_open_record_bounds_the_commit() -> None:
    mark = Watermark()
    for offset in (10, 11, 12):
        mark.track(offset)
    mark.finish(12)
    mark.finish(11)
    assert mark.position() == 10
    mark.finish(10)
    assert mark.position() == 13
    assert mark.open_count == 0


def test_gaps_between_offsets_do_not_matter() -> None:
    mark = Watermark()
    for offset in (3, 7, 20):  # transaction markers and compaction leave gaps
        mark.track(offset)
    mark.finish(3)
    assert mark.position() == 7
    mark.finish(20)
    mark.finish(7)
    assert mark.position() == 21


def test_offsets_must_increase() -> None:
    mark = Watermark()
    mark.track(5)
    with pytest.raises(ValueError, match="must increase"):
        mark.track(5)


@given(st.lists(st.integers(min_value=1, max_value=3), min_size=1, max_size=200), st.randoms())
def test_never_past_an_open_record_and_never_backwards(gaps: list[int], rng: random.Random) -> None:
    offsets = []
    offset = 0
    for gap in gaps:
        offset += gap
        offsets.append(offset)
    mark = Watermark()
    for o in offsets:
        mark.track(o)
    order = offsets[:]
    rng.shuffle(order)
    finished: set[int] = set()
    last = mark.position()
    for o in order:
        mark.finish(o)
        finished.add(o)
        position = mark.position()
        assert position is not None
        assert last is not None
        assert position >= last
        # Everything below the position is finished; the position itself is open (or past the end).
        assert all(x in finished for x in offsets if x < position)
        assert position > offsets[-1] or position not in finished
        last = position
    assert mark.position() == offsets[-1] + 1
