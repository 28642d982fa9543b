"""Throughput cap (130429) in a sliding one-second window, and the pair rate limit (131056), over HTTP."""

from __future__ import annotations

import asyncio
import time

from pipeline.sandbox.testing import running_sandbox
from tests.sandbox.conftest import NUMBER, USER, Graph, text_body

OTHER_NUMBER = "106540352200000"


async def _burst(graph: Graph, count: int, number: str = NUMBER) -> list[tuple[int, int | None]]:
    """`count` concurrent sends to distinct recipients; (HTTP status, error code or None) each."""
    results = await asyncio.gather(*(graph.send(text_body(to=f"1650556{i:04d}"), number=number) for i in range(count)))
    return [(status, body.get("error", {}).get("code")) for status, body in results]


async def test_throughput_cap_rejects_past_the_rate_with_130429(graph: Graph) -> None:
    await graph.sandbox.control.set_rate(20)
    results = await _burst(graph, 30)
    assert results.count((200, None)) == 20
    assert results.count((400, 130429)) == 10
    stats = await graph.sandbox.control.stats()
    number = stats["numbers"][NUMBER]
    assert number["max_accepted_per_second"] == 20
    assert number["max_requests_per_second"] == 30
    assert stats["received"]["messages"] == {"accepted": 20, "throttled": 10}


async def test_the_window_slides_rather_than_resetting_each_second(graph: Graph) -> None:
    await graph.sandbox.control.set_rate(10)
    started = time.monotonic()
    assert (await _burst(graph, 10)).count((200, None)) == 10
    first_done = time.monotonic()
    await asyncio.sleep(max(0.0, 0.6 - (first_done - started)))
    # 0.6 s later the first ten are still inside the last second, whatever the wall-clock second is.
    assert (await _burst(graph, 5)).count((400, 130429)) == 5
    await asyncio.sleep(max(0.0, first_done + 1.05 - time.monotonic()))
    assert (await _burst(graph, 10)).count((200, None)) == 10
    stats = await graph.sandbox.control.stats()
    assert stats["numbers"][NUMBER]["max_accepted_per_second"] == 10


async def test_throughput_http_status_is_configurable(graph: Graph) -> None:
    await graph.sandbox.control.configure(rate_per_second=1, throughput_http_status=429)
    results = await _burst(graph, 3)
    assert sorted(results, key=str) == sorted([(200, None), (429, 130429), (429, 130429)], key=str)


async def test_cap_is_per_number_and_can_be_set_for_one(graph: Graph) -> None:
    await graph.sandbox.control.set_rate(1000)
    await graph.sandbox.control.set_rate(5, phone_number_id=OTHER_NUMBER)
    assert (await _burst(graph, 12, number=OTHER_NUMBER)).count((200, None)) == 5
    assert (await _burst(graph, 12, number=NUMBER)).count((200, None)) == 12
    stats = await graph.sandbox.control.stats()
    assert stats["numbers"][OTHER_NUMBER]["max_accepted_per_second"] == 5
    assert stats["numbers"][OTHER_NUMBER]["rate_per_second"] == 5
    assert stats["numbers"][NUMBER]["max_accepted_per_second"] == 12


async def test_rate_from_settings_and_zero_means_no_cap(graph: Graph) -> None:
    async with running_sandbox(rate_per_second=3) as sandbox:
        assert (await _burst(Graph(sandbox, graph.http), 6)).count((200, None)) == 3
    async with running_sandbox(rate_per_second=0) as sandbox:
        assert (await _burst(Graph(sandbox, graph.http), 200)).count((200, None)) == 200


async def test_pair_limit_allows_a_burst_then_one_per_interval_per_recipient(graph: Graph) -> None:
    # An interval long enough that the five sends before the sleep fit inside it on a loaded machine.
    await graph.sandbox.control.set_pair_limit(burst=2, interval_seconds=1.0)
    codes = [(await graph.send(text_body()))[1].get("error", {}).get("code") for _ in range(3)]
    assert codes == [None, None, 131056]
    status, body = await graph.send(text_body())
    assert (status, body["error"]["code"]) == (400, 131056)
    # Other recipients are not held back.
    assert (await graph.send(text_body(to="16505550077")))[0] == 200
    await asyncio.sleep(1.05)
    assert (await graph.send(text_body()))[0] == 200
    assert (await graph.send(text_body()))[1]["error"]["code"] == 131056
    stats = await graph.sandbox.control.stats()
    assert stats["received"]["messages"]["pair_limited"] == 3
    assert [s["to"] for s in await graph.sandbox.control.sends()] == [USER, USER, "16505550077", USER]


async def test_pair_limit_off_by_default(graph: Graph) -> None:
    statuses = [(await graph.send(text_body()))[0] for _ in range(10)]
    assert statuses == [200] * 10


async def test_send_log_keeps_request_ids_in_accept_order(graph: Graph) -> None:
    await graph.sandbox.control.set_rate(1000)
    for i in range(25):
        await graph.send(text_body(request_id=f"req-{i}"))
    sends = await graph.sandbox.control.sends(phone_number_id=NUMBER)
    assert [s["request_id"] for s in sends] == [f"req-{i}" for i in range(25)]
    assert [s["at"] for s in sends] == sorted(s["at"] for s in sends)
    assert [s["request_id"] for s in await graph.sandbox.control.sends(after=20)] == [f"req-{i}" for i in range(20, 25)]
