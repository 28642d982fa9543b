"""Hostile `send.requests` records: each is dead-lettered with its reason and never stops the next one.

Issue 13, finding 2: a bad record over ~780 KB used to produce a dead letter larger than the producer's
request size, retried forever. Fixed seed, bounded count; runs without Kafka (the engine and a sink that
refuses records over aiokafka's default 1 MiB request size, as the producer does), plus one record of
1 MB through the real broker.
"""

from __future__ import annotations

import asyncio
import random

import orjson
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from pipeline.config import Settings
from pipeline.sandbox.testing import running_sandbox
from pipeline.topics import TopicCatalog
from tests.sender.fakes import FakeMeta, MemorySink
from tests.sender.kafka_helpers import Outcomes, produce, running_sender, text_request, with_sender
from tests.sender.test_engine import DLQ, HOME, Harness, request_bytes

ONE_MIB = 1024 * 1024


def nested(depth: int) -> bytes:
    return b'{"request_id": "deep", "to": "+16505551234", "message": ' + b'{"a": ' * depth + b"1" + b"}" * depth + b"}"


HOSTILE = st.one_of(
    st.binary(max_size=2048),
    st.builds(lambda n: b"\xff" * n, st.integers(1, 1_000_000)),  # not UTF-8, up to ~1 MB
    st.builds(lambda n: b'{"to": "' + b"9" * n + b'"}', st.integers(10, 1_000_000)),  # a huge field
    st.builds(nested, st.integers(50, 5000)),  # deep
    st.builds(lambda n: orjson.dumps({"request_id": "x" * n, "to": "+16505551234"}), st.integers(65, 900_000)),
    st.builds(lambda n: orjson.dumps([{"to": "+1"}] * n), st.integers(0, 20_000)),
    st.just(b"null"), st.just(b'"a string"'), st.just(b"{}"),
)


@seed(13)
@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow,
                                                                                  HealthCheck.data_too_large])
@given(HOSTILE)
def test_a_hostile_record_is_dead_lettered_within_the_request_size_and_the_next_one_is_sent(value: bytes) -> None:
    async def scenario() -> None:
        h = Harness(FakeMeta(), MemorySink(max_bytes=ONE_MIB))
        h.feed(value)
        h.feed(request_bytes("+16505551234", "after-the-poison"))
        await h.until(lambda: len(h.sink.records) == 2, timeout=20)
        [letter] = [r.json() for r in h.sink.on(DLQ)]
        assert letter["reason"] in ("invalid_json", "schema_invalid")
        assert letter["value_size"] == len(value)
        assert [r["request_id"] for r in h.results()] == ["after-the-poison"]
        assert h.engine.owned.offsets_to_commit()[HOME][0] == 2
        await h.engine.close(0.5)

    asyncio.run(scenario())


@pytest.mark.kafka
@pytest.mark.slow
async def test_a_1_mb_poison_record_on_the_real_broker_is_dead_lettered_and_the_rest_sent(
    settings: Settings, topics: TopicCatalog
) -> None:
    rng = random.Random(2)
    poison = b'{"to": "' + bytes(rng.choice(b"0123456789") for _ in range(1_000_000)) + b'"}'
    good = [text_request(f"+1650555{7000 + n:04d}", f"behind-{n}") for n in range(5)]
    async with running_sandbox(rate_per_second=0) as sandbox, Outcomes(settings) as outcomes:
        await produce(settings, [poison, *good])
        async with running_sender(with_sender(settings, sandbox.base_url)):
            await outcomes.wait_for(6, timeout=30)
    [letter] = outcomes.dead_letters
    print(f"\n1 MB poison: dead letter keeps {len(letter['value_b64'])} base64 chars of {letter['value_size']} bytes, "
          f"truncated={letter['value_truncated']}")
    assert letter["reason"] == "schema_invalid"
    assert letter["value_size"] == len(poison)
    assert letter["value_truncated"] is True
    assert sorted(r["request_id"] for r in outcomes.results) == [f"behind-{n}" for n in range(5)]
