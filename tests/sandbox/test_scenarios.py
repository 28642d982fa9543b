"""Test recipients, latency and outages, over real HTTP."""

from __future__ import annotations

import time

import aiohttp
import pytest

from pipeline.sandbox.scenarios import SCENARIOS, Answer, Scenario, scenario_for
from pipeline.sandbox.testing import running_sandbox
from tests.sandbox.conftest import NUMBER, Graph, text_body

HTTP_STATUS = {2: 503, 100: 400, 190: 401, 368: 400, 130429: 400, 131000: 500, 131056: 400}
ERRORS = [s for s in SCENARIOS if s.answer is Answer.ERROR]


def test_every_scenario_suffix_is_reserved_and_unique() -> None:
    suffixes = [s.suffix for s in SCENARIOS]
    assert len(set(suffixes)) == len(suffixes)
    assert all(len(s) == 4 and s.startswith("9") for s in suffixes)
    assert scenario_for("16505551234").name == "ok"
    assert scenario_for("16505598765").name == "ok"  # other 9xxx numbers are ordinary


@pytest.mark.parametrize("scenario", ERRORS, ids=[s.name for s in ERRORS])
async def test_error_numbers_answer_their_code_and_http_status(graph: Graph, scenario: Scenario) -> None:
    status, body = await graph.send(text_body(to=f"1650555{scenario.suffix}"))
    code = scenario.error_code
    assert code is not None
    assert (status, body["error"]["code"]) == (HTTP_STATUS[code], code)
    assert body["error"]["error_data"]["details"]
    assert await graph.sandbox.control.sends() == []


@pytest.mark.parametrize("to", ["16505559999", "16505559047", "16505559005", "16505559201"])
async def test_accepting_numbers_answer_200_and_are_logged(graph: Graph, to: str) -> None:
    await graph.sandbox.control.configure(slow_seconds=0)
    status, _body = await graph.send(text_body(to=to))
    assert status == 200
    assert (await graph.sandbox.control.sends())[0]["scenario"] == scenario_for(to).name


async def test_slow_number_answers_after_slow_seconds(graph: Graph) -> None:
    await graph.sandbox.control.configure(slow_seconds=0.3)
    started = time.monotonic()
    status, _ = await graph.send(text_body(to="16505559005"))
    assert status == 200
    assert time.monotonic() - started >= 0.3


async def test_timeout_number_holds_the_answer_but_the_message_went_out(graph: Graph) -> None:
    # The ambiguous case a client must count: it sees a timeout, yet Meta accepted the message.
    with pytest.raises(TimeoutError):
        await graph.send(text_body(to="16505559030", request_id="ambiguous"), timeout=aiohttp.ClientTimeout(total=0.3))
    sends = await graph.sandbox.control.sends()
    assert [(s["request_id"], s["scenario"]) for s in sends] == [("ambiguous", "timeout")]
    assert (await graph.sandbox.control.stats())["received"]["messages"] == {"accepted_held": 1}


async def test_latency_applies_to_every_answer(graph: Graph) -> None:
    await graph.sandbox.control.set_latency(median_seconds=0.15, sigma=0)
    for body in (text_body(), text_body(body="")):
        started = time.monotonic()
        await graph.send(body)
        assert time.monotonic() - started >= 0.15
    await graph.sandbox.control.set_latency(median_seconds=0)
    started = time.monotonic()
    await graph.send(text_body())
    assert time.monotonic() - started < 0.15


async def test_lognormal_latency_has_a_tail_around_the_median(graph: Graph) -> None:
    """One call at a time, against a run without added latency in the same test: the machine's own load
    then adds to both alike instead of queueing the calls behind each other."""

    async def durations(count: int) -> list[float]:
        taken: list[float] = []
        for i in range(count):
            started = time.monotonic()
            await graph.send(text_body(to=f"16505557{i:03d}"))
            taken.append(time.monotonic() - started)
        return sorted(taken)

    await graph.sandbox.control.set_rate(0)
    await graph.sandbox.control.set_latency(median_seconds=0, sigma=0)
    baseline = (await durations(40))[20]
    await graph.sandbox.control.set_latency(median_seconds=0.04, sigma=0.8)
    measured = await durations(60)
    median = measured[30]
    assert 0.015 < median - baseline < 0.2
    assert measured[-1] > 1.5 * median
    assert measured[0] < median


async def test_outage_error_mode_answers_503_code_2_until_switched_off(graph: Graph) -> None:
    await graph.sandbox.control.outage("error")
    status, body = await graph.send(text_body())
    assert (status, body["error"]["code"]) == (503, 2)
    async with graph.http.get(f"{graph.sandbox.base_url}/v23.0/{NUMBER}", headers=graph.headers) as r:
        assert r.status == 503
    assert (await graph.sandbox.control.stats())["outages"] == {"*": "error"}
    await graph.sandbox.control.end_outage()
    assert (await graph.send(text_body()))[0] == 200
    assert (await graph.sandbox.control.stats())["received"]["messages"] == {"outage_error": 1, "accepted": 1}


async def test_outage_timeout_mode_never_answers_in_time(graph: Graph) -> None:
    await graph.sandbox.control.outage("timeout")
    with pytest.raises(TimeoutError):
        await graph.send(text_body(), timeout=aiohttp.ClientTimeout(total=0.3))
    await graph.sandbox.control.end_outage()
    assert (await graph.send(text_body()))[0] == 200
    assert len(await graph.sandbox.control.sends()) == 1  # nothing was accepted during the outage


async def test_outage_disconnect_mode_drops_the_connection(graph: Graph) -> None:
    await graph.sandbox.control.outage("disconnect")
    with pytest.raises(aiohttp.ClientConnectionError):
        await graph.send(text_body())
    await graph.sandbox.control.end_outage()
    assert (await graph.send(text_body()))[0] == 200


async def test_outage_of_one_number_leaves_others_working(graph: Graph) -> None:
    await graph.sandbox.control.outage("error", phone_number_id=NUMBER)
    assert (await graph.send(text_body()))[0] == 503
    assert (await graph.send(text_body(), number="106540352200000"))[0] == 200
    await graph.sandbox.control.end_outage(NUMBER)
    assert (await graph.send(text_body()))[0] == 200


async def test_outage_and_limits_from_a_separate_process(http: aiohttp.ClientSession) -> None:
    # The benchmark's way: its own process (own CPU), steered over HTTP just the same.
    async with running_sandbox(in_subprocess=True, rate_per_second=2) as sandbox:
        assert sandbox.pid is not None
        graph = Graph(sandbox, http)
        results = [await graph.send(text_body(to=f"165055500{i}")) for i in range(3)]
        assert [status for status, _ in results] == [200, 200, 400]
        await sandbox.control.outage("error")
        assert (await graph.send(text_body()))[0] == 503
