"""The whole sender against the real broker and the sandbox: order, limits, outage, poison."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict

import pytest

from pipeline.config import Settings
from pipeline.sandbox.testing import running_sandbox
from pipeline.topics import TopicCatalog
from tests.sender.kafka_helpers import (
    NUMBER,
    Outcomes,
    callback_request_id,
    produce,
    running_sender,
    text_request,
    with_sender,
)

# serial: it counts calls to open the breaker and times drains, which the other suites' load would skew.
pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.serial]


async def test_per_recipient_order_across_50_interleaved_recipients(settings: Settings, topics: TopicCatalog) -> None:
    rng = random.Random(11)
    recipients = [f"+1650555{1000 + i:04d}" for i in range(50)]
    requests, expected = [], defaultdict(list)
    for n in range(600):
        to = rng.choice(recipients)
        request = text_request(to, f"ord-{n:04d}")
        requests.append(request)
        expected[to].append(request.request_id)
    # Latencies spread widely (lognormal sigma 1): answers come back in a different order than sent.
    async with running_sandbox(rate_per_second=0, latency_median_seconds=0.02, latency_sigma=1.0) as sandbox, \
            Outcomes(settings) as outcomes:
        await produce(settings, requests)
        async with running_sender(with_sender(settings, sandbox.base_url, rate_per_second=1000, max_in_flight=100)):
            await outcomes.wait_for(600, timeout=60)
        sends = await sandbox.control.sends()
    got = defaultdict(list)
    by_id = {r.request_id: r.to for r in requests}
    for send in sends:
        rid = callback_request_id(send)
        got[by_id[rid]].append(rid)
    assert got == expected
    assert {r["outcome"] for r in outcomes.results} == {"sent"}
    assert set(outcomes.per_request().values()) == {1}


async def test_at_80_per_second_the_sandbox_never_sees_more_nor_answers_130429(
    settings: Settings, topics: TopicCatalog
) -> None:
    requests = [text_request(f"+1650555{2000 + n:04d}", f"lim-{n:04d}") for n in range(400)]
    async with running_sandbox(rate_per_second=80, latency_median_seconds=0.05) as sandbox, \
            Outcomes(settings) as outcomes:
        await produce(settings, requests)
        started = asyncio.get_running_loop().time()
        async with running_sender(with_sender(settings, sandbox.base_url, rate_per_second=80)):
            await outcomes.wait_for(400, timeout=30)
        elapsed = asyncio.get_running_loop().time() - started
        stats = await sandbox.control.stats()
    number = stats["numbers"][NUMBER]
    print(f"\n80/s: {number['accepted']} accepted in {elapsed:.1f} s; max in any 1 s window: "
          f"{number['max_requests_per_second']} requests")
    assert number["max_requests_per_second"] <= 80
    assert "throttled" not in stats["received"]["messages"]
    assert {r["outcome"] for r in outcomes.results} == {"sent"}
    assert number["accepted"] == 400


async def test_an_injected_130429_backs_the_rate_off(settings: Settings, topics: TopicCatalog) -> None:
    from pipeline.observability import metrics

    requests = [text_request(f"+1650555{3000 + n:04d}", f"thr-{n:04d}") for n in range(600)]
    # The sender believes 200/s; Meta (the sandbox) allows 100/s for this number.
    async with running_sandbox(rate_per_second=100, latency_median_seconds=0.02) as sandbox, \
            Outcomes(settings) as outcomes:
        await produce(settings, requests)
        async with running_sender(with_sender(settings, sandbox.base_url, rate_per_second=200,
                                              retry_base_delay_seconds=0.2)):
            await outcomes.wait_for(600, timeout=60)
            effective = metrics.RATE_LIMIT.labels(phone_number_id=NUMBER)._value.get()
        stats = await sandbox.control.stats()
    throttled = stats["received"]["messages"].get("throttled", 0)
    print(f"\n130429 answers: {throttled}; effective rate after: {effective:.0f}/s (configured 200)")
    assert throttled > 0
    assert effective < 150  # backed off towards Meta's 100/s...
    assert throttled < 150  # ...instead of hammering at twice the cap for the whole run (~300 would)
    assert {r["outcome"] for r in outcomes.results} == {"sent"}


async def test_a_pair_limited_recipient_does_not_delay_the_others(settings: Settings, topics: TopicCatalog) -> None:
    busy = "+16505554000"
    requests = [text_request(busy, f"pair-{n}") for n in range(3)]
    requests += [text_request(f"+1650555{4100 + n:04d}", f"free-{n:03d}") for n in range(150)]
    async with running_sandbox(rate_per_second=0, latency_median_seconds=0.01, pair_burst=1,
                               pair_interval_seconds=1.5) as sandbox, Outcomes(settings) as outcomes:
        await produce(settings, requests)
        async with running_sender(with_sender(settings, sandbox.base_url, rate_per_second=500,
                                              pair_interval_seconds=1.0)):
            await outcomes.wait_for(153, timeout=60)
        sends = await sandbox.control.sends()
        stats = await sandbox.control.stats()
    at = {callback_request_id(s): s["at"] for s in sends}
    pair_limited = stats["received"]["messages"].get("pair_limited", 0)
    last_free = max(at[f"free-{n:03d}"] for n in range(150))
    print(f"\n131056 answers: {pair_limited}; others done {last_free - at['pair-0']:.2f} s after the first, "
          f"busy recipient's last {at['pair-2'] - at['pair-0']:.2f} s after")
    assert pair_limited >= 2
    assert at["pair-0"] < at["pair-1"] < at["pair-2"]  # order kept through the waits
    assert at["pair-2"] - at["pair-0"] >= 3.0  # its own pace: ≥ 1.5 s per message
    assert last_free < at["pair-1"]  # everyone else went while it waited
    assert {r["outcome"] for r in outcomes.results} == {"sent"}


async def test_an_outage_opens_the_breaker_pauses_and_drains_after(settings: Settings, topics: TopicCatalog) -> None:
    from pipeline.observability import metrics

    requests = [text_request(f"+1650555{5000 + n:04d}", f"out-{n:04d}") for n in range(200)]
    reset = 2.0
    async with running_sandbox(rate_per_second=0, latency_median_seconds=0.005) as sandbox, \
            Outcomes(settings) as outcomes:
        await sandbox.control.outage("error")
        async with running_sender(with_sender(settings, sandbox.base_url, rate_per_second=80,
                                              breaker_failure_threshold=5, breaker_reset_seconds=reset)):
            await produce(settings, requests)
            circuit = metrics.CIRCUIT_STATE.labels(phone_number_id=NUMBER)
            for _ in range(200):
                if circuit._value.get() == 2:
                    break
                await asyncio.sleep(0.05)
            failures_to_open = (await sandbox.control.stats())["received"]["messages"]["outage_error"]
            outage = 10.0
            await asyncio.sleep(outage)
            during = (await sandbox.control.stats())["received"]["messages"]["outage_error"]
            assert outcomes.count == 0  # nothing failed or dead-lettered because Meta was down
            await sandbox.control.end_outage()
            await outcomes.wait_for(200, timeout=30)
    probes = during - failures_to_open
    # Since issue 19 the probes are health calls (GETs), so `probes` counts messages sent while open: 0.
    print(f"\noutage: breaker open after {failures_to_open} failed calls; {probes} messages while open in "
          f"{outage:.0f} s (reset {reset:.0f} s; the probes are GETs of the number)")
    assert failures_to_open <= 5
    assert probes <= outage / reset + 1
    assert {r["outcome"] for r in outcomes.results} == {"sent"}
    assert len(outcomes.results) == 200


async def test_poison_messages_are_dead_lettered_and_later_ones_sent(settings: Settings, topics: TopicCatalog) -> None:
    good = [text_request(f"+1650555{6000 + n:04d}", f"after-{n}") for n in range(5)]
    schema_invalid = b'{"request_id": "bad-1", "to": "12", "message": {"type": "text", "text": {}}}'
    async with running_sandbox(rate_per_second=0) as sandbox, Outcomes(settings) as outcomes:
        await produce(settings, [b"\x00not json at all", schema_invalid, *good])
        async with running_sender(with_sender(settings, sandbox.base_url)):
            await outcomes.wait_for(7, timeout=30)
    reasons = {d["reason"]: d for d in outcomes.dead_letters}
    assert set(reasons) == {"invalid_json", "schema_invalid"}
    assert "to:" in reasons["schema_invalid"]["error"]
    assert "message.text.body" in reasons["schema_invalid"]["error"]
    assert reasons["schema_invalid"]["request_id"] == "bad-1"
    assert reasons["invalid_json"]["value_b64"]
    assert sorted(r["request_id"] for r in outcomes.results) == [f"after-{n}" for n in range(5)]


async def test_a_rebalance_moves_partitions_without_losing_or_repeating_outcomes(
    settings: Settings, topics: TopicCatalog
) -> None:
    from pipeline.topics import partition_for

    numbers = [str(106540352242922 + i) for i in range(40)]
    homes = {partition_for(n.encode(), settings.kafka.partitions) for n in numbers}
    assert len(homes) > 1  # the traffic spans partitions, so the second sender gets some
    rng = random.Random(5)
    requests = []
    for n in range(1200):
        request = text_request(f"+1650557{rng.randrange(300):04d}", f"reb-{n:04d}")
        requests.append(request.model_copy(update={"phone_number_id": rng.choice(numbers)}))
    async with running_sandbox(rate_per_second=0, latency_median_seconds=0.03) as sandbox, \
            Outcomes(settings) as outcomes:
        for number in numbers:
            await produce(settings, [r for r in requests if r.phone_number_id == number], key=number.encode())
        first = with_sender(settings, sandbox.base_url, rate_per_second=150)
        second = with_sender(settings, sandbox.base_url, rate_per_second=150)
        async with running_sender(first):
            await outcomes.wait_for(200, timeout=30)
            async with running_sender(second):  # joins: the group rebalances under load
                await outcomes.wait_for(700, timeout=60)
            # the second leaves again: another rebalance
            await outcomes.wait_for(1200, timeout=60)
        sends = await sandbox.control.sends()
    per_request = outcomes.per_request()
    assert len(per_request) == 1200
    assert set(per_request.values()) == {1}
    order: dict[tuple[str, str], list[str]] = defaultdict(list)
    for request in requests:
        order[(str(request.phone_number_id), request.to)].append(request.request_id)
    first_send: dict[str, int] = {}
    for index, send in enumerate(sends):
        first_send.setdefault(callback_request_id(send), index)
    for key, ids in order.items():
        assert sorted(ids, key=first_send.__getitem__) == ids, key
    print(f"\nrebalance: {len(sends) - 1200} repeated calls across two rebalances")
