"""Fuzzing the `send.requests` door: hostile bytes and sizes straight onto the topic (issue 13).

Hypothesis builds the records (fixed seed, bounded count): random bytes, invalid UTF-8, JSON that is
not an object, bodies nested hundreds deep, phone numbers in other scripts' digits, coerced types,
and records close to the topic's 1 MiB limit. The real sender (`pipeline.sender.serve`) must
dead-letter each one exactly once, with its reason and original offset, and send the good requests
produced behind them.
"""

from __future__ import annotations

from typing import Any

import hypothesis.strategies as st
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from hypothesis import HealthCheck, given, seed, settings

from pipeline.config import Settings
from pipeline.sandbox.testing import running_sandbox
from pipeline.topics import TopicCatalog
from tests.sender.kafka_helpers import NUMBER, Outcomes, running_sender, text_request, with_sender

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

EXAMPLES = 40
FOREIGN_ZEROS = (0x0660, 0x0966, 0xFF10, 0x09E6)  # Arabic-Indic, Devanagari, full-width, Bengali


def _request(**fields: Any) -> dict[str, Any]:
    return {"request_id": "fuzz", "phone_number_id": NUMBER, "to": "+16505551234",
            "message": {"type": "text", "text": {"body": "hi"}}, **fields}


def _deep_json(depth: int, inside: str) -> bytes:
    """A valid request except that `metadata` (or a template parameter) nests `depth` deep: built as
    text, since no JSON library will write what it refuses to nest."""
    nested = '{"a": ' * depth + '"\\u0001"' + "}" * depth
    if inside == "metadata":
        return b'{"request_id": "deep", "to": "+16505551234", "message": {"type": "text", "text": {"body": "x"}}, ' \
               b'"metadata": ' + nested.encode() + b"}"
    return (b'{"request_id": "deep", "to": "+16505551234", "message": {"type": "template", "template": {'
            b'"name": "t", "language": {"code": "en"}, "components": [{"type": "body", "parameters": '
            b'[{"type": "currency", "currency": ' + nested.encode() + b"}]}]}}}")


hostile = st.one_of(
    st.binary(min_size=0, max_size=2048).map(lambda b: b"\xff" + b),  # never valid UTF-8
    st.sampled_from([b"", b"null", b"[]", b"17", b'"text"', b"{", b'{"to": ']),
    st.tuples(st.integers(200, 900), st.sampled_from(["metadata", "template"])).map(lambda t: _deep_json(*t)),
    st.tuples(st.sampled_from(FOREIGN_ZEROS), st.sampled_from(["to", "phone_number_id"])).map(
        lambda t: orjson.dumps(_request(**{t[1]: ("+1" if t[1] == "to" else "1")
                                          + "".join(chr(t[0] + int(d)) for d in "6505551234")}))),
    st.sampled_from([
        orjson.dumps(_request(message={"type": "text", "text": {"body": "x", "preview_url": "yes"}})),
        orjson.dumps(_request(message={"type": "location", "location": {"latitude": True, "longitude": 1.0}})),
        orjson.dumps(_request(expires_at="2030-01-01T00:00:00")),
        orjson.dumps(_request(message={"type": "telepathy"})),
    ]),
    # Sizes up to just under the topic's 1 MiB: a too-long text, or bytes that are not JSON at all.
    st.integers(5_000, 1_000_000).map(lambda n: orjson.dumps(_request(message={
        "type": "text", "text": {"body": "x" * n}}))[:1_040_000]),
    st.integers(100_000, 1_040_000).map(lambda n: b"\x00" * n),
)


def _records() -> list[bytes]:
    drawn: list[bytes] = []

    @seed(20261203)
    @given(record=hostile)
    @settings(max_examples=EXAMPLES, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    def draw(record: bytes) -> None:
        drawn.append(record)

    draw()
    return drawn


async def test_hostile_records_are_each_dead_lettered_and_the_next_good_one_is_sent(
    settings: Settings, topics: TopicCatalog
) -> None:
    records = _records()
    assert len(records) >= EXAMPLES // 2
    assert max(len(r) for r in records) > 780_000  # the size that once could not be dead-lettered
    good = [text_request(f"+1650555{7000 + n:04d}", f"good-{n}") for n in range(5)]
    producer = AIOKafkaProducer(**settings.kafka.client_kwargs(), enable_idempotence=True,
                                max_request_size=1_100_000)
    await producer.start()
    try:
        offsets = {}
        for record in records:
            metadata = await (await producer.send(topics.send_requests, record, key=NUMBER.encode()))
            offsets[(metadata.partition, metadata.offset)] = record
        for request in good:
            await (await producer.send(topics.send_requests, request.model_dump_json().encode(),
                                       key=NUMBER.encode()))
    finally:
        await producer.stop()

    async with (
        running_sandbox(rate_per_second=0) as sandbox,
        Outcomes(settings) as outcomes,
        running_sender(with_sender(settings, sandbox.base_url)),
    ):
        await outcomes.wait_for(len(records) + len(good), timeout=120)
    dead = {(d["partition"], d["offset"]): d for d in outcomes.dead_letters}
    assert set(dead) == set(offsets), "each hostile record dead-lettered, and nothing else"
    assert len(outcomes.dead_letters) == len(records), "exactly once each"
    for place, letter in dead.items():
        assert letter["reason"] in {"invalid_json", "schema_invalid"}, letter["reason"]
        assert letter["value_size"] == len(offsets[place])
    assert sorted(r["request_id"] for r in outcomes.results) == sorted(r.request_id for r in good)
    assert {r["outcome"] for r in outcomes.results} == {"sent"}
