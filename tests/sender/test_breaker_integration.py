"""Issue 19 against the real broker and the sandbox: failing recipients never stop a number; outages still do.

Each test prints its figures (delay after a restart, calls to open, probes, throughput ratio).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from datetime import datetime
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from pipeline.config import Settings
from pipeline.contracts import CircuitReason, SendRequest
from pipeline.observability import metrics
from pipeline.sandbox.testing import SandboxHandle, running_sandbox
from pipeline.topics import TopicCatalog, create_topics
from tests.sender.kafka_helpers import (
    NUMBER,
    Outcomes,
    callback_request_id,
    produce,
    running_sender,
    text_request,
    with_sender,
)

# serial: it compares throughputs, which the other suites' load would skew (make test runs it alone).
pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.serial]


def failing(n: int, request_id: str) -> SendRequest:
    return text_request(f"+1650{n:03d}9000", request_id)  # the sandbox answers HTTP 500, code 131000


def trips(reason: CircuitReason) -> float:
    value = metrics.registry.get_sample_value(
        "delivery_circuit_trips_total", {"phone_number_id": NUMBER, "reason": reason.value})
    return value or 0.0


def probes_made() -> float:
    return sum(metrics.registry.get_sample_value(
        "delivery_circuit_probes_total", {"phone_number_id": NUMBER, "result": result}) or 0.0
        for result in ("ok", "failed"))


def circuit() -> float:
    return float(metrics.CIRCUIT_STATE.labels(phone_number_id=NUMBER)._value.get())


async def received(sandbox: SandboxHandle, endpoint: str, outcome: str) -> int:
    stats: dict[str, Any] = await sandbox.control.stats()
    return int(stats["received"].get(endpoint, {}).get(outcome, 0))


async def until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


async def test_after_a_restart_failing_recipients_back_off_and_ordinary_messages_go_within_5_s(
    settings: Settings, topics: TopicCatalog
) -> None:
    """The issue's reproduction, with the default breaker (5 failures, 60 s reset)."""
    bad = [failing(n, f"bad-{n:02d}") for n in range(40)]
    early = [text_request(f"+1650555{n:04d}", f"early-{n:03d}") for n in range(60)]
    mixed = [r for pair in zip(early[:40], bad, strict=True) for r in pair] + early[40:]  # 40 failing, 60 not
    late = [text_request(f"+1650666{n:04d}", f"late-{n:03d}") for n in range(300)]
    run = with_sender(settings, None, rate_per_second=500)
    trips_before = {reason: trips(reason) for reason in CircuitReason}
    async with running_sandbox(rate_per_second=0, latency_median_seconds=0.02) as sandbox, \
            Outcomes(settings) as outcomes:
        run = with_sender(run, sandbox.base_url)
        await produce(settings, mixed)
        async with running_sender(run):
            await outcomes.wait_for(60, timeout=30)

            async def backing_off() -> bool:
                return await received(sandbox, "messages", "transient") >= 80  # each failed at least twice

            await until(backing_off, 30, "the failing recipients to be retried")
        # Stopped while they wait in retry backoff: they stay uncommitted, as designed.
        assert {r["request_id"] for r in outcomes.results} == {r.request_id for r in early}
        failures_before = await received(sandbox, "messages", "transient")
        async with running_sender(run):
            async def retrying_the_backlog() -> bool:
                return await received(sandbox, "messages", "transient") >= failures_before + 40

            await until(retrying_the_backlog, 30, "the restarted sender to retry the backlog")
            # Accepted = written to send.requests (what the API's 202 means); the producer connects first,
            # so that its start-up is not counted as the sender's delay.
            producer = AIOKafkaProducer(**settings.kafka.client_kwargs(), enable_idempotence=True, linger_ms=5)
            await producer.start()
            try:
                await producer.partitions_for(topics.send_requests)
                accepted = time.time()
                futures = [await producer.send(topics.send_requests, r.model_dump_json().encode(),
                                               key=NUMBER.encode()) for r in late]
                await asyncio.gather(*futures)
                produced = time.time() - accepted
            finally:
                await producer.stop()
            await outcomes.wait_for(360, timeout=60)
            retried = await received(sandbox, "messages", "transient") - failures_before
            state = circuit()
    completed = [datetime.fromisoformat(r["completed_at"]).timestamp() for r in outcomes.results
                 if r["request_id"].startswith("late-")]
    delays = sorted(t - accepted for t in completed)
    opened = {reason.value: trips(reason) - trips_before[reason] for reason in CircuitReason
              if trips(reason) - trips_before[reason]}
    print(f"\nrestart: 300 ordinary messages sent {delays[0]:.2f}-{delays[-1]:.2f} s after being accepted "
          f"(median {statistics.median(delays):.2f} s; producing them took {produced:.2f} s); "
          f"failing recipients retried {retried} times meanwhile; "
          f"circuit trips {opened or 'none'}")
    assert len(delays) == 300
    assert delays[-1] <= 5.0
    assert {r["outcome"] for r in outcomes.results} == {"sent"}
    assert not any(r["request_id"].startswith("bad-") for r in outcomes.results)  # still backing off
    assert 40 <= retried <= 40 * 5  # each went again after the restart, at its own growing pace
    assert trips(CircuitReason.SERVICE_FAILURES) == trips_before[CircuitReason.SERVICE_FAILURES]
    assert state == 0  # closed


@pytest.mark.parametrize("mode", ["error", "timeout", "disconnect"])
async def test_a_real_outage_opens_fast_probes_once_per_reset_interval_and_fails_nothing(
    settings: Settings, topics: TopicCatalog, mode: str
) -> None:
    reset, outage, rate, client_timeout = 2.0, 8.0, 80.0, 1.0
    requests = [text_request(f"+1650555{5000 + n:04d}", f"out-{n:04d}") for n in range(200)]
    run = with_sender(settings, None, rate_per_second=rate, breaker_failure_threshold=5,
                      breaker_reset_seconds=reset, ambiguous_window_seconds=3.0)
    run = run.model_copy(update={"whatsapp": run.whatsapp.model_copy(update={"timeout_seconds": client_timeout})})
    async with running_sandbox(rate_per_second=0, latency_median_seconds=0.005, hang_seconds=3.0) as sandbox, \
            Outcomes(settings) as outcomes:
        await sandbox.control.outage(mode)
        async with running_sender(with_sender(run, sandbox.base_url)):
            await produce(settings, requests)

            async def is_open() -> bool:
                return circuit() == 2

            await until(is_open, 30, "the circuit to open")
            calls_to_open = await received(sandbox, "messages", f"outage_{mode}")
            probes_before, gets_before = probes_made(), await received(sandbox, "object", f"outage_{mode}")
            await asyncio.sleep(outage)
            calls_during = await received(sandbox, "messages", f"outage_{mode}") - calls_to_open
            probes = probes_made() - probes_before
            # aiohttp repeats an idempotent GET once when a kept-alive connection drops: count ours.
            gets = await received(sandbox, "object", f"outage_{mode}") - gets_before
            assert outcomes.count == 0  # nothing failed or dead-lettered because Meta was down
            await sandbox.control.end_outage()
            await outcomes.wait_for(200, timeout=60)
            await asyncio.sleep(0.5)
        sends = await sandbox.control.sends()
    calls = Counter(callback_request_id(s) for s in sends)
    duplicates = sum(n - 1 for n in calls.values())
    outcome_counts = Counter(r["outcome"] for r in outcomes.results)
    print(f"\noutage ({mode}): circuit open after {calls_to_open} failed calls; {calls_during} messages and "
          f"{probes} health probes ({gets} GETs at the sandbox) during {outage:.0f} s open (reset {reset:.0f} s); "
          f"outcomes {dict(outcome_counts)}; "
          f"duplicates at the sandbox: {duplicates}")
    if mode == "timeout":
        # Calls already dispatched before the first timeout came back (the same as before issue 19),
        # with half a second of slack for a loaded event loop handling the timeouts late.
        assert calls_to_open <= rate * (client_timeout + 0.5) + 5
    else:
        assert calls_to_open <= 5
    assert calls_during <= 1  # messages wait while open (at most a late one from before it opened)
    assert 1 <= probes <= outage / reset + 1
    # One GET per probe: the transport never repeats a request by itself. (+1: a probe in flight when a
    # count was read.)
    assert probes <= gets <= probes + 1
    assert outcome_counts == {"sent": 200}
    assert set(outcomes.per_request().values()) == {1}
    assert set(calls) == {r.request_id for r in requests}
    assert duplicates == 0


async def _run_mix(settings: Settings, requests: list[SendRequest], ordinary: set[str], number: str,
                   ) -> tuple[float, float]:
    """Sent/s of the `ordinary` requests (first to last send at the sandbox) and the circuit's worst state."""
    async with running_sandbox(rate_per_second=0, latency_median_seconds=0.02) as sandbox, \
            Outcomes(settings) as outcomes:
        await produce(settings, requests, key=number.encode())
        worst = 0.0
        gauge = metrics.CIRCUIT_STATE.labels(phone_number_id=number)
        # The two runs share this machine alike; at 200/s an unloaded run is bound by the rate. What the
        # failing 30 % cost the others is their retries' calls, about log2(run time / base delay) each:
        # a 2 s base keeps them below the baseline's 300 calls however long the machine's load makes
        # the run (with the default 0.5 s an unloaded run measured 1.08-1.13).
        async with running_sender(with_sender(settings, sandbox.base_url, rate_per_second=200,
                                              retry_base_delay_seconds=2.0)):
            deadline = time.monotonic() + 90
            while sum(r["request_id"] in ordinary for r in outcomes.results) < len(ordinary):
                worst = max(worst, float(gauge._value.get()))
                assert time.monotonic() < deadline, "the ordinary requests were not all sent in 90 s"
                await asyncio.sleep(0.02)
        sends = await sandbox.control.sends()
        stats = await sandbox.control.stats()
    at = sorted(s["at"] for s in sends if callback_request_id(s) in ordinary)
    print(f"\n  {number}: {len(at)} ordinary sent in {at[-1] - at[0]:.2f} s; calls answered: "
          f"{stats['received']['messages']}")
    return (len(at) - 1) / (at[-1] - at[0]), worst


async def test_30_percent_of_recipients_failing_keep_the_circuit_closed_and_the_rest_at_full_speed(
    settings: Settings, topics: TopicCatalog
) -> None:
    """Both runs at once, each with its own topics, number, sender and sandbox: whatever else loads this
    machine loads both alike, so the ratio measures the failures, not the neighbours."""
    def mix(failing_recipients: bool, tag: str, number: str) -> tuple[list[SendRequest], set[str]]:
        requests, ordinary = [], set()
        for n in range(1000):
            recipient = n % 200
            rid = f"{tag}-{n:04d}"
            if recipient % 10 in (2, 5, 8):  # 30 % of the recipients
                to = f"+1650{recipient:03d}9000" if failing_recipients else f"+1650{recipient:03d}1000"
            else:
                to = f"+1650777{recipient:04d}"
                ordinary.add(rid)
            requests.append(text_request(to, rid).model_copy(update={"phone_number_id": number}))
        return requests, ordinary

    def apart(tag: str) -> Settings:
        return settings.model_copy(update={
            "kafka": settings.kafka.model_copy(update={"topic_prefix": f"{settings.kafka.topic_prefix}{tag}."}),
            "sender": settings.sender.model_copy(update={"group_id": f"{settings.sender.group_id}-{tag}"}),
        })

    base_settings, mixed_settings = apart("base"), apart("mix")
    await create_topics(base_settings.kafka)
    await create_topics(mixed_settings.kafka)
    baseline_number = "106540352242999"
    trips_before = sum(trips(reason) for reason in CircuitReason)
    (baseline, _), (mixed, worst) = await asyncio.gather(
        _run_mix(base_settings, *mix(False, "base", baseline_number), baseline_number),
        _run_mix(mixed_settings, *mix(True, "mix", NUMBER), NUMBER),
    )
    ratio = mixed / baseline
    print(f"\n30 % failing recipients: the other 70 % at {mixed:.0f} sent/s against {baseline:.0f} sent/s "
          f"without failures, in the same run (ratio {ratio:.2f}); worst circuit state {worst:.0f}")
    assert worst == 0  # never left closed
    assert sum(trips(reason) for reason in CircuitReason) == trips_before
    assert ratio >= 0.9


async def test_a_send_that_timed_out_after_meta_took_it_is_concluded_sent_by_its_status_not_sent_twice(
    settings: Settings, topics: TopicCatalog
) -> None:
    """Finding 7 with the real ingest: the sandbox's `9030` recipients are accepted, their statuses are
    posted, but the answer is held past the client's timeout: ambiguous. The status decides."""
    from pipeline.contracts import Stage
    from pipeline.ingest import Ingest
    from pipeline.observability import setup

    held = [text_request(f"+1650{n:03d}9030", f"held-{n}") for n in range(5)]
    ordinary = [text_request(f"+1650555{8000 + n:04d}", f"plain-{n}") for n in range(20)]
    run = with_sender(settings, None, ambiguous_window_seconds=20.0)
    run = run.model_copy(update={"whatsapp": run.whatsapp.model_copy(update={"timeout_seconds": 1.0})})
    async with Ingest(settings, setup(Stage.INGEST, settings)) as ingest:
        webhook_url = f"http://127.0.0.1:{ingest.port}/webhooks/whatsapp"
        async with running_sandbox(rate_per_second=0, latency_median_seconds=0.01, hang_seconds=3.0,
                                   sent_after_seconds=0.2,
                                   webhook_url=webhook_url) as sandbox, Outcomes(settings) as outcomes:
            async with running_sender(with_sender(run, sandbox.base_url)):
                await asyncio.sleep(1.0)  # the status feed reads from the end: let it start first
                await produce(settings, [*held, *ordinary])
                await outcomes.wait_for(25, timeout=60)
                resolved = metrics.registry.get_sample_value(
                    "delivery_ambiguous_resolved_total", {"phone_number_id": NUMBER, "resolution": "sent"})
            sends = await sandbox.control.sends()
    by_id = {r["request_id"]: r for r in outcomes.results}
    wamids = {callback_request_id(s): s["wamid"] for s in sends}
    calls = Counter(callback_request_id(s) for s in sends)
    duplicates = sum(n - 1 for n in calls.values())
    print(f"\nambiguous: {len(held)} held sends concluded by their statuses "
          f"(delivery_ambiguous_resolved_total{{resolution=sent}} = {resolved}); "
          f"duplicates at the sandbox: {duplicates}")
    for request in held:
        result = by_id[request.request_id]
        assert result["outcome"] == "sent"
        assert result["ambiguous_attempts"] == 1
        assert result["wamid"] == wamids[request.request_id]  # Meta's wamid, from the status
    assert {r["outcome"] for r in outcomes.results} == {"sent"}
    assert duplicates == 0
