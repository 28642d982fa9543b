"""Intake decides without I/O: decode, request id, content, number, home partition, expiry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson

from pipeline.contracts import ContentPolicy, DeadLetterReason
from pipeline.sender.intake import DeadLetter, Dispatch, Expired, Reroute, Rules, decide
from pipeline.topics import partition_for
from tests.sender.fakes import Record, request_bytes

NUMBER = "106540352242922"
PARTITIONS = 6
HOME = partition_for(NUMBER.encode(), PARTITIONS)
RULES = Rules(default_number=NUMBER)
NOW = 1_800_000_000.0


def record(value: bytes | None, partition: int = HOME, offset: int = 7) -> Record:
    return Record("send.requests", partition, offset, NUMBER.encode(), value)


def test_a_request_on_its_numbers_partition_is_dispatched_as_it_is() -> None:
    decision = decide(record(request_bytes("+16505551234", "req-1")), RULES, partitions=PARTITIONS, wall=NOW)
    assert isinstance(decision, Dispatch)
    assert (decision.request.request_id, decision.number, decision.ttl) == ("req-1", NUMBER, None)


def test_undecodable_records_are_dead_letters_with_no_request() -> None:
    for value, reason in ((b"{nope", DeadLetterReason.INVALID_JSON), (None, DeadLetterReason.INVALID_JSON),
                          (b'{"to": 5}', DeadLetterReason.SCHEMA_INVALID)):
        decision = decide(record(value), RULES, partitions=PARTITIONS, wall=NOW)
        assert isinstance(decision, DeadLetter)
        assert decision.rejected.reason is reason
        assert decision.request is None


def test_a_missing_request_id_comes_from_the_records_place_even_if_metadata_has_one() -> None:
    value = orjson.dumps({"to": "+16505551234", "message": {"type": "text", "text": {"body": "hi"}},
                          "metadata": {"request_id": "not-this"}})
    first = decide(record(value, offset=41), RULES, partitions=PARTITIONS, wall=NOW)
    again = decide(record(value, offset=41), RULES, partitions=PARTITIONS, wall=NOW)
    assert isinstance(first, Dispatch)
    assert isinstance(again, Dispatch)
    assert first.request.request_id == again.request.request_id == f"send.requests:{HOME}:41"


def test_no_number_and_no_default_is_a_dead_letter_keeping_the_request_id() -> None:
    decision = decide(record(request_bytes("+16505551234", "req-2")), Rules(), partitions=PARTITIONS, wall=NOW)
    assert isinstance(decision, DeadLetter)
    assert decision.rejected.reason is DeadLetterReason.SCHEMA_INVALID
    assert decision.rejected.request_id == "req-2"
    assert decision.request is not None


def test_forbidden_content_is_a_dead_letter() -> None:
    rules = Rules(default_number=NUMBER, content=ContentPolicy([r"(?i)\bspam\b"]))
    decision = decide(record(request_bytes("+16505551234", "req-3", body="spam")), rules, partitions=PARTITIONS,
                      wall=NOW)
    assert isinstance(decision, DeadLetter)
    assert "forbidden_content" in decision.rejected.error


def test_a_request_on_another_partition_is_rerouted_home_with_its_number_filled_in() -> None:
    elsewhere = (HOME + 1) % PARTITIONS
    decision = decide(record(request_bytes("+16505551234", "req-4"), partition=elsewhere), RULES,
                      partitions=PARTITIONS, wall=NOW)
    assert isinstance(decision, Reroute)
    assert (decision.number, decision.home, decision.request.phone_number_id) == (NUMBER, HOME, NUMBER)


def test_expiry_is_measured_against_the_wall_clock_given() -> None:
    expires = datetime.fromtimestamp(NOW, UTC) + timedelta(seconds=30)
    value = request_bytes("+16505551234", "req-5", expires_at=expires.isoformat())
    live = decide(record(value), RULES, partitions=PARTITIONS, wall=NOW)
    assert isinstance(live, Dispatch)
    assert live.ttl is not None
    assert abs(live.ttl - 30.0) < 1e-3
    assert isinstance(decide(record(value), RULES, partitions=PARTITIONS, wall=NOW + 30.0), Expired)
