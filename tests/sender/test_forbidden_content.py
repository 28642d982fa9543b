"""The Kafka door applies the API's forbidden-content rule: a record published straight to `send.requests`
whose text matches (also through look-alike characters) is dead-lettered, not sent."""

from __future__ import annotations

import asyncio

from pipeline.config import load_settings
from pipeline.contracts import Stage
from pipeline.observability import setup
from pipeline.sender.engine import Engine
from pipeline.topics import partition_for
from tests.sender.fakes import FakeMeta, MemorySink, Record, request_bytes

NUMBER = "106540352242922"


async def test_forbidden_text_from_kafka_is_dead_lettered_and_the_rest_sent() -> None:
    settings = load_settings(
        kafka={"partitions": 1},
        whatsapp={"api_base_url": "http://127.0.0.1:9", "access_token": "t", "phone_number_id": NUMBER},
        api={"forbidden_patterns": [r"(?i)\bspam\b"]},
        sender={"group_id": "g", "rate_per_second": 1000.0},
    )
    telemetry = setup(Stage.SENDER, settings)
    meta, sink = FakeMeta(), MemorySink()
    engine = Engine(settings, meta, sink, results_topic="r", dead_letters_topic="dlq", partitions=1,
                    tracer=telemetry.tracer("test"))
    engine.assign(partition_for(NUMBER.encode(), 1), 0, None)
    engine.intake(Record("send.requests", 0, 0, NUMBER.encode(), request_bytes("+16505551234", "req-bad",
                                                                              body="S\u200bPAM offer"), ()))
    engine.intake(Record("send.requests", 0, 1, NUMBER.encode(), request_bytes("+16505551235", "req-ok",
                                                                              body="your parcel"), ()))
    for _ in range(500):
        if sink.on("dlq") and sink.on("r"):
            break
        await asyncio.sleep(0.01)
    [letter] = [r.json() for r in sink.on("dlq")]
    assert letter["request_id"] == "req-bad"
    assert letter["reason"] == "schema_invalid"
    assert "forbidden_content" in letter["error"]
    assert [c.request_id for c in meta.calls] == ["req-ok"]
