"""The one dead-letter builder: bounded whatever the record, with the original's size and digest."""

from __future__ import annotations

import base64
import hashlib

from pipeline.contracts import DeadLetter, DeadLetterReason, Stage
from pipeline.contracts.dead_letters import DEAD_LETTER_VALUE_LIMIT, build_dead_letter


def _letter(value: bytes, **extra: object) -> DeadLetter:
    return build_dead_letter(
        Stage.SENDER, DeadLetterReason.SCHEMA_INVALID, "to: must be digits",
        topic="t.send.requests", partition=2, offset=7, key=b"106540352242922", value=value, **extra,  # type: ignore[arg-type]
    )


def test_a_small_record_is_kept_whole_with_its_size_and_digest() -> None:
    raw = b'{"to": "x"}'
    letter = _letter(raw)
    assert letter.raw_value() == raw
    assert letter.value_size == len(raw)
    assert letter.value_sha256 == hashlib.sha256(raw).hexdigest()
    assert letter.value_truncated is False


def test_a_huge_record_is_cut_to_the_limit_and_its_dead_letter_fits_a_default_kafka_request() -> None:
    raw = b"x" * (3 * 1024 * 1024)
    letter = _letter(raw, headers={"h" * 5000: "v" * 5000}, request_id="r" * 5000)
    encoded = letter.model_dump_json().encode()
    assert len(encoded) < 1024 * 1024  # aiokafka's default max_request_size
    assert letter.raw_value() == raw[:DEAD_LETTER_VALUE_LIMIT]
    assert letter.value_size == len(raw)
    assert letter.value_sha256 == hashlib.sha256(raw).hexdigest()
    assert letter.value_truncated is True
    assert DeadLetter.model_validate_json(encoded) == letter


def test_a_long_error_is_cut_with_an_ellipsis_and_a_tombstone_has_an_empty_value() -> None:
    letter = build_dead_letter(
        Stage.INGEST, DeadLetterReason.INVALID_JSON, "e" * 10_000,
        topic="t", partition=0, offset=0, key=None, value=None,
    )
    assert len(letter.error) == 4096
    assert letter.error.endswith("…")
    assert letter.value_b64 == ""
    assert letter.value_size == 0
    assert letter.key_b64 is None
    assert base64.b64decode(letter.value_b64) == b""
