"""One behaviour on both engines: every test here runs on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import random
from datetime import timedelta

from pipeline.store.backend import ALL, Backend, Cursor, Scope, Search
from pipeline.store.projection import project
from pipeline.store.rows import STATUS_RANK
from tests.store.records import (
    CONTACT,
    NUMBER_A,
    NUMBER_B,
    T0,
    at,
    delivered_chain,
    inbound,
    request,
    result,
    status,
)


async def _apply(backend: Backend, records: list) -> None:  # type: ignore[type-arg]
    changes, rejects = project(records)
    assert rejects == []
    await backend.apply(changes)


async def test_a_delivered_message_has_its_outcome_and_timeline(backend: Backend) -> None:
    await _apply(backend, delivered_chain("req_a", "wamid.A"))
    found = await backend.message("req_a", ALL)
    assert found is not None
    view, timeline = found
    assert (view.outcome, view.wamid, view.status, view.wa_id) == ("sent", "wamid.A", "read", CONTACT)
    assert view.text == "Your order 12345 shipped"
    assert [(s.status, s.occurred_at) for s in timeline] == [("sent", at(1)), ("delivered", at(3)), ("read", at(5))]
    assert timeline[0].pricing_category == "utility"


async def test_the_send_s_trace_id_is_kept_for_the_trace_link(backend: Backend) -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    await _apply(backend, [request("req_t"), result("req_t", "wamid.T", traceparent=f"00-{trace}-00f067aa0ba902b7-01"),
                           result("req_u", "wamid.U", traceparent="00-" + "0" * 32 + "-00f067aa0ba902b7-01")])
    traced, untraced = await backend.message("req_t", ALL), await backend.message("req_u", ALL)
    assert traced is not None
    assert untraced is not None
    assert traced[0].trace_id == trace
    assert untraced[0].trace_id is None  # an all-zero trace id is invalid (W3C): no link to nowhere


async def test_any_order_and_any_replay_end_in_the_same_row(backend: Backend) -> None:
    records = delivered_chain("req_b", "wamid.B")
    shuffled = records * 3
    random.Random(7).shuffle(shuffled)
    for start in range(0, len(shuffled), 4):  # several batches, statuses before results included
        await _apply(backend, shuffled[start:start + 4])
    view, timeline = await backend.message("req_b", ALL) or (None, [])
    assert view is not None
    assert (view.outcome, view.status, view.text) == ("sent", "read", "Your order 12345 shipped")
    assert [s.status for s in timeline] == ["sent", "delivered", "read"]
    page = await backend.search(Search(), ALL)
    assert [v.request_id for v in page] == ["req_b"]  # one row, however many replays


async def test_a_status_before_its_send_result_lands_on_the_request(backend: Backend) -> None:
    await _apply(backend, [status("wamid.C", "delivered", at(3), request_id="req_c")])
    early = await backend.message("req_c", ALL)
    assert early is not None
    assert early[0].status == "delivered"
    await _apply(backend, [request("req_c"), result("req_c", "wamid.C")])
    view, _ = await backend.message("req_c", ALL) or (None, [])
    assert view is not None
    assert (view.status, view.outcome, view.text) == ("delivered", "sent", "Your order 12345 shipped")


async def test_a_status_without_request_id_joins_through_the_wamid(backend: Backend) -> None:
    await _apply(backend, [status("wamid.D", "read", at(5), request_id=None)])
    await _apply(backend, [request("req_d"), result("req_d", "wamid.D")])
    view, _ = await backend.message("req_d", ALL) or (None, [])
    assert view is not None
    assert view.status == "read"


async def test_status_never_moves_backwards(backend: Backend) -> None:
    await _apply(backend, [request("req_e"), result("req_e", "wamid.E"),
                           status("wamid.E", "read", at(5), request_id="req_e")])
    await _apply(backend, [status("wamid.E", "sent", at(1), request_id="req_e")])
    view, _ = await backend.message("req_e", ALL) or (None, [])
    assert view is not None
    assert view.status == "read"
    await _apply(backend, [status("wamid.E", "failed", at(9), request_id="req_e",
                                  errors=[{"code": 131026, "title": "Message undeliverable",
                                           "error_class": "undeliverable"}])])
    view, timeline = await backend.message("req_e", ALL) or (None, [])
    assert view is not None
    assert view.status == "failed"
    assert timeline[-1].error_code == 131026


async def test_a_key_never_sees_another_numbers_data(backend: Backend) -> None:
    await _apply(backend, delivered_chain("req_f", "wamid.F", number=NUMBER_B))
    await _apply(backend, [inbound("wamid.in.F", at(30), number=NUMBER_B)])
    only_a = Scope(frozenset([NUMBER_A]))
    assert await backend.message("req_f", only_a) is None
    assert await backend.conversation(CONTACT, only_a, 50, None) == []
    assert not await backend.has_contact(CONTACT, only_a)
    assert await backend.search(Search(words=("order",)), only_a) == []
    assert await backend.analytics_facts(only_a, T0 - timedelta(days=1), T0 + timedelta(days=1), None) == []
    assert await backend.message("req_f", Scope(frozenset([NUMBER_B]))) is not None


async def test_conversation_is_both_directions_newest_first_and_cursor_paged(backend: Backend) -> None:
    records = []
    for n in range(5):
        records += delivered_chain(f"req_g{n}", f"wamid.G{n}", accepted=at(n * 100))
        records.append(inbound(f"wamid.in.G{n}", at(n * 100 + 50), reply_to=f"wamid.G{n}"))
    await _apply(backend, records)
    first = await backend.conversation(CONTACT, ALL, 4, None)
    assert [(i.direction, i.id) for i in first] == [
        ("inbound", "wamid.in.G4"), ("outbound", "req_g4"), ("inbound", "wamid.in.G3"), ("outbound", "req_g3")]
    assert first[0].reply_to == "wamid.G4"
    assert first[1].status == "read"
    rest = await backend.conversation(CONTACT, ALL, 50, Cursor(first[-1].at, first[-1].id))
    assert [i.id for i in rest] == ["wamid.in.G2", "req_g2", "wamid.in.G1", "req_g1", "wamid.in.G0", "req_g0"]


async def test_search_by_words_prefix_recipient_status_and_time(backend: Backend) -> None:
    await _apply(backend, [
        request("req_h1", text="Order 12345 is on its way", accepted=at(10)),
        request("req_h2", text="Your invoice for order 777", accepted=at(20), to="447700900123"),
        request("req_h3", text="Nothing to see", accepted=at(30)),
        result("req_h2", "wamid.H2", to="447700900123", accepted=at(20)),
        status("wamid.H2", "delivered", at(25), request_id="req_h2", to="447700900123", accepted=at(20)),
    ])

    async def ids(**kwargs: object) -> list[str]:
        return [v.request_id for v in await backend.search(Search(**kwargs), ALL)]  # type: ignore[arg-type]

    assert await ids(words=("order",)) == ["req_h2", "req_h1"]
    assert await ids(words=("order", "12345")) == ["req_h1"]
    assert await ids(words=("invo*",)) == ["req_h2"]
    assert await ids(wa_id="447700900123") == ["req_h2"]
    assert await ids(status_rank=STATUS_RANK["delivered"]) == ["req_h2"]
    assert await ids(status_rank=STATUS_RANK["accepted"]) == ["req_h3", "req_h1"]
    assert await ids(since=at(15), until=at(30)) == ["req_h2"]
    page = await backend.search(Search(limit=2), ALL)
    assert await ids(cursor=Cursor(page[-1].created_at, page[-1].request_id)) == ["req_h1"]


async def test_analytics_facts_carry_times_and_the_first_reply_within_a_day(backend: Backend) -> None:
    await _apply(backend, delivered_chain("req_i1", "wamid.I1", accepted=at(0)))
    await _apply(backend, delivered_chain("req_i2", "wamid.I2", accepted=at(1000), upto="sent"))
    await _apply(backend, [inbound("wamid.in.I", at(60)), inbound("wamid.in.late", at(1000 + 90_000))])
    facts = sorted(await backend.analytics_facts(ALL, T0, T0 + timedelta(days=1), None), key=lambda f: f.accepted_at)
    assert [(f.delivered_at, f.read_at, f.replied_at) for f in facts] == [(at(3), at(5), at(60)), (None, None, None)]
    assert all(f.sent for f in facts)


async def test_a_reply_stamped_in_the_accepts_second_counts_though_its_whole_second_is_earlier(
    backend: Backend,
) -> None:
    """Meta's inbound timestamps are whole seconds: a reply 0.3 s after the send can read 0.7 s before it."""
    await _apply(backend, delivered_chain("req_j1", "wamid.J1", accepted=at(10.7)))
    await _apply(backend, [inbound("wamid.in.J", at(10))])  # replied at 11.0, stamped 10
    [fact] = await backend.analytics_facts(ALL, T0, T0 + timedelta(days=1), None)
    assert fact.replied_at == at(10)
    await _apply(backend, delivered_chain("req_j2", "wamid.J2", accepted=at(100.5), to="447700900555"))
    await _apply(backend, [inbound("wamid.in.K", at(99), sender="447700900555")])  # a second before: no reply
    facts = await backend.analytics_facts(ALL, T0, T0 + timedelta(days=1), "447700900555")
    assert [f.replied_at for f in facts] == [None]


async def test_erasure_removes_every_row_of_the_contact_and_nothing_else(backend: Backend) -> None:
    await _apply(backend, delivered_chain("req_j1", "wamid.J1"))
    await _apply(backend, delivered_chain("req_j2", "wamid.J2", to="447700900123"))
    await _apply(backend, [inbound("wamid.in.J", at(60))])
    erased = await backend.erase(CONTACT, ALL)
    assert (erased.outbound, erased.inbound, erased.statuses) == (1, 1, 3)
    assert await backend.message("req_j1", ALL) is None
    assert not await backend.has_contact(CONTACT, ALL)
    assert await backend.search(Search(words=("12345",)), ALL) != []  # the other contact's message stays
    again = await backend.erase(CONTACT, ALL)
    assert (again.outbound, again.inbound, again.statuses) == (0, 0, 0)


async def test_erasure_is_limited_to_the_callers_numbers(backend: Backend) -> None:
    await _apply(backend, delivered_chain("req_k", "wamid.K", number=NUMBER_B))
    erased = await backend.erase(CONTACT, Scope(frozenset([NUMBER_A])))
    assert (erased.outbound, erased.statuses) == (0, 0)
    assert await backend.message("req_k", ALL) is not None


async def test_retention_removes_what_is_older_and_keeps_the_rest(backend: Backend) -> None:
    old, new = T0 - timedelta(days=100), T0
    await _apply(backend, [*delivered_chain("req_old", "wamid.old", accepted=old),
                           inbound("wamid.in.old", old + timedelta(minutes=1))])
    await _apply(backend, [*delivered_chain("req_new", "wamid.new", accepted=new),
                           inbound("wamid.in.new", new + timedelta(minutes=1))])
    removed = await backend.expire(T0 - timedelta(days=90))
    assert removed == {"outbound_messages": 1, "status_events": 3, "inbound_messages": 1}
    assert await backend.message("req_old", ALL) is None
    kept = await backend.message("req_new", ALL)
    assert kept is not None
    assert len(kept[1]) == 3
    assert [i.id for i in await backend.conversation(CONTACT, ALL, 10, None)] == ["wamid.in.new", "req_new"]
