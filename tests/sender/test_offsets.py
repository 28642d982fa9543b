"""The offset tracker: commit the highest contiguous done position; remember done offsets above it."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.sender.offsets import OffsetTracker, decode_done, encode_done


def test_position_is_the_lowest_offset_not_done() -> None:
    tracker = OffsetTracker(100)
    for offset in range(100, 105):
        assert tracker.already_done(offset) is False
    tracker.done(102)
    tracker.done(101)
    assert tracker.position == 100
    tracker.done(100)
    assert tracker.position == 103
    tracker.done(103)
    tracker.done(104)
    assert tracker.position == 105
    assert tracker.outstanding == 0
    assert tracker.metadata() == ""


def test_gaps_in_offsets_do_not_pin_the_position() -> None:
    tracker = OffsetTracker(0)
    tracker.already_done(0)
    tracker.already_done(7)  # 1..6 were transaction markers or compacted away
    tracker.done(0)
    tracker.done(7)
    assert tracker.position == 8


def test_metadata_survives_a_restart_and_the_done_offsets_are_skipped() -> None:
    tracker = OffsetTracker(10)
    for offset in range(10, 20):
        tracker.already_done(offset)
    for offset in (11, 12, 15, 19):
        tracker.done(offset)
    committed, metadata = tracker.position, tracker.metadata()
    assert committed == 10

    restarted = OffsetTracker.restore(committed, metadata)
    to_process = [o for o in range(10, 22) if not restarted.already_done(o)]
    assert to_process == [10, 13, 14, 16, 17, 18, 20, 21]
    for offset in to_process:
        restarted.done(offset)
    assert restarted.position == 22


def test_a_plain_commit_by_someone_else_invalidates_the_map() -> None:
    metadata = encode_done(10, [12, 13])
    assert decode_done(10, metadata) == {12, 13}
    assert decode_done(11, metadata) == frozenset()  # the map described another start
    assert decode_done(10, "some other tool's metadata") == frozenset()
    assert decode_done(10, "o1:10:!!notbase64") == frozenset()


def test_long_runs_compress_well_and_an_overflowing_map_is_cut_and_flagged() -> None:
    tracker = OffsetTracker(0, limit=200)
    for offset in range(100_001):
        tracker.already_done(offset)
    for offset in range(1, 100_001):
        tracker.done(offset)  # offset 0 pins the position
    assert len(tracker.metadata()) < 200
    assert not tracker.overflowing

    scattered = OffsetTracker(0, limit=200)
    rng = random.Random(7)
    for offset in range(20_000):
        scattered.already_done(offset)
    for offset in rng.sample(range(1, 20_000), 5_000):
        scattered.done(offset)
    metadata = scattered.metadata()
    assert scattered.overflowing
    assert len(metadata) <= 200
    kept = decode_done(0, metadata)
    assert kept
    assert min(kept) > 0


@settings(max_examples=80, deadline=None)
@given(st.integers(min_value=1, max_value=300), st.randoms(use_true_random=False), st.data())
def test_any_completion_order_commits_only_below_unfinished_work(
    count: int, rng: random.Random, data: st.DataObject
) -> None:
    tracker = OffsetTracker(0)
    for offset in range(count):
        tracker.already_done(offset)
    order = list(range(count))
    rng.shuffle(order)
    finished = data.draw(st.integers(min_value=0, max_value=count))
    done = set(order[:finished])
    for offset in order[:finished]:
        tracker.done(offset)
    position = tracker.position
    assert all(o in done for o in range(position))
    assert position == count or position not in done
    # after a "crash" at this point, exactly the unfinished offsets are processed again
    restarted = OffsetTracker.restore(position, tracker.metadata())
    redo = [o for o in range(position, count) if not restarted.already_done(o)]
    assert redo == sorted(set(range(count)) - done)
