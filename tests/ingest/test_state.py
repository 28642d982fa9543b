"""The forward-only rule: which status updates become events, and how a restart undoes uncommitted work."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pipeline.contracts import DeliveryStatus
from pipeline.ingest.state import MessageState, Outcome

SENT, DELIVERED, READ, PLAYED, FAILED = (
    DeliveryStatus.SENT, DeliveryStatus.DELIVERED, DeliveryStatus.READ, DeliveryStatus.PLAYED, DeliveryStatus.FAILED,
)


Decisions = list[tuple[Outcome, list[tuple[str, str | None]]]]


def run(*updates: tuple[DeliveryStatus, int]) -> tuple[MessageState, Decisions]:
    state = MessageState()
    decisions: Decisions = []
    for offset, (status, ts) in enumerate(updates):
        d = state.apply(status, ts, offset, now_ms=1000 + offset)
        decisions.append((d.outcome, [(s.value, by.value if by else None) for s, by in d.emit]))
    return state, decisions


def test_in_order_statuses_are_each_emitted_once() -> None:
    state, decisions = run((SENT, 100), (DELIVERED, 102), (READ, 130))
    assert decisions == [
        (Outcome.FORWARD, [("sent", None)]),
        (Outcome.FORWARD, [("delivered", None)]),
        (Outcome.FORWARD, [("read", None)]),
    ]
    assert state.current is READ


def test_a_repeated_status_is_a_duplicate_and_changes_nothing() -> None:
    state = MessageState()
    state.apply(DELIVERED, 102, 0, now_ms=1)
    before = state.to_json()
    decision = state.apply(DELIVERED, 102, 1, now_ms=2)
    assert decision.outcome is Outcome.DUPLICATE
    assert not decision.emit
    assert not decision.changed
    assert state.to_json() == before


def test_read_before_delivered_emits_the_implied_ones_first_and_the_late_one_never() -> None:
    state, decisions = run((READ, 130), (DELIVERED, 102), (SENT, 100), (DELIVERED, 102))
    assert decisions == [
        (Outcome.FORWARD, [("sent", "read"), ("delivered", "read"), ("read", None)]),
        (Outcome.OUT_OF_ORDER, []),
        (Outcome.OUT_OF_ORDER, []),
        (Outcome.DUPLICATE, []),  # the late real delivered was recorded: its repeat is a duplicate
    ]
    assert state.current is READ
    assert not state.statuses[DELIVERED].implied
    assert state.statuses[DELIVERED].timestamp == 102


def test_transitions_use_real_timestamps_whatever_the_arrival_order() -> None:
    state = MessageState()
    assert state.apply(READ, 130, 0, 1).transitions == []  # delivered only implied: no duration yet
    assert state.apply(SENT, 100, 1, 2).transitions == []
    assert state.apply(DELIVERED, 102, 2, 3).transitions == [("sent_to_delivered", 2.0), ("delivered_to_read", 28.0)]
    # inverted timestamps (one-second resolution, several devices) never give a negative duration
    other = MessageState()
    other.apply(SENT, 200, 0, 1)
    assert other.apply(DELIVERED, 199, 1, 2).transitions == [("sent_to_delivered", 0.0)]


def test_accepted_transitions_need_the_accepted_time_and_a_real_status() -> None:
    state = MessageState()
    accepted = 95.5  # epoch seconds with milliseconds, from the callback data
    assert state.apply(DELIVERED, 102, 0, 1, accepted).transitions == [("accepted_to_delivered", 6.5)]
    # sent was only implied by delivered; its real update arrives late and is timed then
    assert state.apply(SENT, 100, 1, 2, accepted).transitions == [
        ("accepted_to_sent", 4.5), ("sent_to_delivered", 2.0),
    ]
    assert state.apply(SENT, 100, 2, 3, accepted).transitions == []  # a duplicate times nothing
    assert state.apply(READ, 110, 3, 4, accepted).transitions == [("delivered_to_read", 8.0)]
    # without the accepted time (another tool's callback data) only Meta's own transitions exist
    assert MessageState().apply(SENT, 100, 0, 1).transitions == []
    # Meta's whole seconds against our milliseconds never give a negative duration
    assert MessageState().apply(SENT, 100, 0, 1, 100.7).transitions == [("accepted_to_sent", 0.0)]


def test_failed_is_terminal() -> None:
    state, decisions = run((SENT, 100), (FAILED, 105), (DELIVERED, 106), (READ, 107), (FAILED, 105))
    assert [d[0] for d in decisions] == [
        Outcome.FORWARD, Outcome.FORWARD, Outcome.OUT_OF_ORDER, Outcome.OUT_OF_ORDER, Outcome.DUPLICATE,
    ]
    assert decisions[1][1] == [("failed", None)]  # failed implies nothing
    assert state.current is FAILED


def test_failed_after_read_still_moves_forward() -> None:
    _, decisions = run((READ, 100), (FAILED, 105))
    assert decisions[1] == (Outcome.FORWARD, [("failed", None)])


def test_played_implies_the_whole_chain() -> None:
    _, decisions = run((PLAYED, 100),)
    assert decisions[0][1] == [("sent", "played"), ("delivered", "played"), ("read", "played"), ("played", None)]


def test_state_record_round_trips() -> None:
    state, _ = run((READ, 130), (DELIVERED, 102), (FAILED, 140))
    again = MessageState.from_json(state.to_json())
    assert again == state
    assert again.current is FAILED


def test_rollback_returns_the_state_before_an_offset() -> None:
    state, _ = run((READ, 130), (DELIVERED, 102), (PLAYED, 150))  # offsets 0, 1, 2
    assert state.rolled_back(3) is state
    back = state.rolled_back(1)
    assert back is not None
    # delivered became real at offset 1: back to implied (from offset 0), played gone
    assert {s.value: e.implied for s, e in back.statuses.items()} == {"sent": True, "delivered": True, "read": False}
    assert state.rolled_back(0) is None


statuses = st.sampled_from([SENT, DELIVERED, READ, PLAYED, FAILED])
updates = st.lists(st.tuples(statuses, st.integers(1764000000, 1764000100)), min_size=1, max_size=12)


@given(updates)
def test_whatever_the_order_and_repeats_each_status_is_emitted_once_and_only_forward(
    seq: list[tuple[DeliveryStatus, int]],
) -> None:
    _, decisions = run(*seq)
    emitted = [DeliveryStatus(s) for _, emits in decisions for s, _ in emits]
    assert len(emitted) == len(set(emitted))
    assert [s.rank for s in emitted] == sorted(s.rank for s in emitted)
    received = [s for s, _ in seq]
    # Everything received is emitted (itself or as implied) unless it came after failed or below
    # the state at the time; and a chain status is never emitted without the ones before it.
    if FAILED in received:
        assert FAILED in emitted
    chain = [SENT, DELIVERED, READ, PLAYED]
    for status in emitted:
        if status in chain:
            assert all(before in emitted for before in chain[: chain.index(status)])
    duplicates = sum(1 for outcome, _ in decisions if outcome is Outcome.DUPLICATE)
    assert duplicates == len(received) - len(set(received))


def _view(state: MessageState | None) -> dict[DeliveryStatus, tuple[bool, int]] | None:
    if state is None or not state.statuses:
        return None
    return {k: (e.implied, e.source_offset) for k, e in state.statuses.items()}


@given(updates, st.data())
def test_rollback_equals_replaying_only_the_committed_prefix(
    seq: list[tuple[DeliveryStatus, int]], data: st.DataObject
) -> None:
    cut = data.draw(st.integers(0, len(seq)))
    full, _ = run(*seq)
    prefix, _ = run(*seq[:cut])
    back = full.rolled_back(cut)
    assert _view(back) == _view(prefix)
    # …and replaying the rest from there decides exactly as the first run did.
    replay = back or MessageState()
    first_run = MessageState()
    for offset, (status, ts) in enumerate(seq):
        expected = first_run.apply(status, ts, offset, 1)
        if offset >= cut:
            got = replay.apply(status, ts, offset, 1)
            assert (got.outcome, got.emit) == (expected.outcome, expected.emit)


def test_kept_state_records_cost_their_size_not_orjsons_buffer() -> None:
    """The deduper keeps one encoded state per message: ~220 bytes each, not the 4 KiB orjson writes into."""
    from pathlib import Path

    def rss() -> int:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmRSS:"))
        return int(line.split()[1]) * 1024

    count = 20_000
    before = rss()
    kept = []
    for i in range(count):
        state = MessageState()
        state.apply(DeliveryStatus.READ, 1764000000, i, 1764000000000)
        kept.append(state.to_json())
    per_record = (rss() - before) / count
    assert len(kept[0]) < 400
    assert per_record < 1500, f"{per_record:.0f} bytes of RSS per kept record"
