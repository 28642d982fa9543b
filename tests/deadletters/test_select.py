"""Selecting and showing dead letters: filters, `--since`, ids, decoding."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pipeline.contracts import DeadLetter, DeadLetterReason, Stage
from pipeline.deadletters import Entry, Selection, parse_since
from pipeline.deadletters.replay import REPLAYED_FROM, replay_record
from pipeline.deadletters.select import describe, parse_id

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def entry(stage: Stage = Stage.SENDER, reason: DeadLetterReason = DeadLetterReason.PAYLOAD_REJECTED,
          age: timedelta = timedelta(0), value: bytes = b'{"a": 1}') -> Entry:
    letter = DeadLetter(stage=stage, reason=reason, error="x", topic="send.requests", partition=2, offset=7,
                        key_b64=DeadLetter.encode(b"123"), value_b64=DeadLetter.encode(value) or "",
                        headers={"traceparent": "00-ab-cd-01", REPLAYED_FROM: "old"}, failed_at=NOW - age)
    return Entry(1, 42, letter)


def test_selection_filters_by_stage_reason_and_time() -> None:
    since = parse_since("2h", now=NOW)
    assert Selection(stage=Stage.SENDER, since=since).matches(entry(age=timedelta(hours=1)))
    assert not Selection(since=since).matches(entry(age=timedelta(hours=3)))
    assert not Selection(stage=Stage.INGEST).matches(entry())
    assert not Selection(reason=DeadLetterReason.INVALID_JSON).matches(entry())


def test_since_takes_durations_and_instants_and_names_the_option() -> None:
    assert parse_since("30m", now=NOW) == NOW - timedelta(minutes=30)
    assert parse_since("7d", now=NOW) == NOW - timedelta(days=7)
    assert parse_since("2026-12-01T00:00:00Z") == datetime(2026, 12, 1, tzinfo=UTC)
    for bad in ("yesterday", "2026-12-01T00:00:00"):
        with pytest.raises(ValueError, match="--since"):
            parse_since(bad)


def test_ids_and_decoding() -> None:
    assert parse_id("3:1200") == (3, 1200)
    with pytest.raises(ValueError, match="PARTITION:OFFSET"):
        parse_id("12")
    shown = describe(entry(value=b"\xff\x00"))
    assert shown["id"] == "1:42"
    assert shown["key"] == "123"
    assert shown["value"] == {"base64": "/wA="}
    assert describe(entry())["value"] == {"a": 1}


def test_replayed_record_keeps_key_value_headers_and_says_where_from() -> None:
    topic, key, value, headers = replay_record(entry(), "dead-letters")
    assert (topic, key, value) == ("send.requests", b"123", b'{"a": 1}')
    assert headers == [("traceparent", b"00-ab-cd-01"), (REPLAYED_FROM, b"dead-letters:1:42")]
