"""Outcome records and the partitioner the outcome producer uses."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner

from pipeline.contracts import (
    DeadLetter,
    DeadLetterReason,
    ErrorClass,
    ErrorInfo,
    MessageOutcome,
    SendRequest,
    SendResult,
)
from pipeline.sender.outcomes import dead_letter_record, result_record
from pipeline.sender.work import Origin, Work
from pipeline.topics import kafka_partitioner, partition_for


def test_result_records_validate_against_the_contract() -> None:
    request = SendRequest(request_id="r-1", to="+16505551234", message={"type": "text", "text": {"body": "x"}},
                          metadata={"order": "A-17"}, accepted_at="2026-01-01T00:00:00Z")
    work = Work(request, "106540352242922", Origin("t", 0, 7, None, (), b""), received=0.0,
                traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    work.attempts = 2
    sent = SendResult.model_validate_json(result_record(work, MessageOutcome.SENT, wamid="wamid.X"))
    assert sent.outcome is MessageOutcome.SENT
    assert sent.wamid == "wamid.X"
    assert sent.attempts == 2
    assert sent.metadata == {"order": "A-17"}
    assert sent.traceparent == work.traceparent
    assert sent.error is None
    work.last_error = ErrorInfo(code=131026, error_class=ErrorClass.UNDELIVERABLE)
    failed = SendResult.model_validate_json(result_record(work, MessageOutcome.FAILED))
    assert failed.error == work.last_error


def test_dead_letters_keep_the_raw_bytes_key_and_headers_for_replay() -> None:
    origin = Origin("x.send.requests", 2, 41, b"106540352242922", (("traceparent", b"00-abc"),), b"\x00\xffraw")
    letter = DeadLetter.model_validate_json(dead_letter_record(origin, DeadLetterReason.INVALID_JSON, "not JSON", None))
    assert letter.raw_value() == b"\x00\xffraw"
    assert (letter.topic, letter.partition, letter.offset) == ("x.send.requests", 2, 41)
    assert letter.headers == {"traceparent": "00-abc"}
    assert letter.reason is DeadLetterReason.INVALID_JSON


def test_the_project_partitioner_agrees_with_kafkas_default() -> None:
    default = DefaultPartitioner()
    for n in range(50):
        key = str(106540352242922 + n).encode()
        for partitions in ([0, 1, 2], list(range(12))):
            assert kafka_partitioner(key, partitions, partitions) == default(key, partitions, partitions)
            assert kafka_partitioner(key, partitions, partitions) == partition_for(key, len(partitions))
    assert kafka_partitioner(None, [0, 1, 2], [1]) == 1  # no key: any available partition
