"""The conclusion step without Kafka: one record through the sink, then the offset done, or nothing."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka.errors import ProducerFenced
from opentelemetry import trace

from pipeline.contracts import DeadLetterReason, ErrorClass, ErrorInfo, MessageOutcome, SendRequest
from pipeline.sender.conclusion import Concluder
from pipeline.sender.decode import Rejected
from pipeline.sender.intake import Reroute
from pipeline.sender.offsets import OffsetTracker
from pipeline.sender.retry import Terminal
from pipeline.sender.telemetry import SenderTelemetry
from pipeline.sender.work import Origin, Work
from tests.sender.fakes import MemorySink

NUMBER = "106540352242922"
RESULTS, DLQ = "send.results", "dead-letters"


def setup(sink: MemorySink, *, owned: bool = True) -> tuple[Concluder, OffsetTracker, Origin]:
    tracker = OffsetTracker(0)
    assert not tracker.already_done(0)
    conclude = Concluder(sink, SenderTelemetry(trace.get_tracer("tests"), "g"), results_topic=RESULTS,
                         dead_letters_topic=DLQ, holds=lambda partition, t: owned and t is tracker,
                         clock=time.monotonic)
    return conclude, tracker, Origin("send.requests", 0, 0, b"origin-key", (), b"{}")


def work(origin: Origin, tracker: OffsetTracker) -> Work:
    request = SendRequest(request_id="req-1", to="+16505551234", message={"type": "text", "text": {"body": "hi"}})
    return Work(request, NUMBER, origin, received=time.monotonic(), tracker=tracker)


async def test_a_sent_outcome_is_published_keyed_by_the_number_then_its_offset_is_done() -> None:
    sink = MemorySink(fail_next=1)  # the first publish times out: retried until acknowledged
    conclude, tracker, origin = setup(sink)
    await conclude.outcome(work(origin, tracker), Terminal(MessageOutcome.SENT), wamid="wamid.1")
    [record] = sink.on(RESULTS)
    assert (record.key, record.json()["outcome"], record.json()["wamid"]) == (NUMBER.encode(), "sent", "wamid.1")
    assert record.header("request-id") == "req-1"
    assert tracker.position == 1


async def test_a_dead_lettered_outcome_goes_to_the_dead_letters_keyed_like_its_origin() -> None:
    sink = MemorySink()
    conclude, tracker, origin = setup(sink)
    error = ErrorInfo(error_class=ErrorClass.INVALID, code=100, message="bad parameter")
    await conclude.outcome(work(origin, tracker), Terminal(MessageOutcome.DEAD_LETTERED, error,
                                                           DeadLetterReason.PAYLOAD_REJECTED))
    [letter] = sink.on(DLQ)
    assert letter.key == b"origin-key"
    assert letter.json()["reason"] == "payload_rejected"
    assert "Graph API code 100" in letter.json()["error"]
    assert tracker.position == 1


async def test_a_lost_partition_publishes_and_marks_nothing() -> None:
    sink = MemorySink()
    conclude, tracker, origin = setup(sink, owned=False)
    await conclude.outcome(work(origin, tracker), Terminal(MessageOutcome.SENT), wamid="wamid.1")
    assert sink.records == []
    assert tracker.position == 0


async def test_a_fenced_producer_is_fatal_and_not_retried() -> None:
    class Fenced(MemorySink):
        async def publish(self, *args: object, **kwargs: object) -> None:
            raise ProducerFenced()

    conclude, tracker, origin = setup(Fenced())
    with pytest.raises(ProducerFenced):
        await conclude.outcome(work(origin, tracker), Terminal(MessageOutcome.SENT), wamid="wamid.1")
    assert isinstance(conclude.fatal, ProducerFenced)
    assert tracker.position == 0


async def test_once_fatal_the_other_outcomes_in_flight_mark_nothing_and_report_nothing() -> None:
    failures: list[str] = []

    class Reporting(SenderTelemetry):
        def publish_failed(self, topic: str, origin: Origin, error: BaseException, retry_in: float) -> None:
            failures.append(type(error).__name__)

    class Fenced(MemorySink):
        async def publish(self, *args: object, **kwargs: object) -> None:
            raise ProducerFenced()

    tracker = OffsetTracker(0)
    conclude = Concluder(Fenced(), Reporting(trace.get_tracer("tests"), "g"), results_topic=RESULTS,
                         dead_letters_topic=DLQ, holds=lambda partition, t: True, clock=time.monotonic)
    origins = [Origin("send.requests", 0, offset, b"k", (), b"{}") for offset in range(3)]
    outcomes = [conclude.outcome(work(o, tracker), Terminal(MessageOutcome.SENT), wamid="wamid.1") for o in origins]
    ends = await asyncio.gather(*outcomes, return_exceptions=True)
    # One raises (the process stops); the others hand their work back.
    assert [type(e).__name__ for e in ends] == ["ProducerFenced", "NoneType", "NoneType"]
    assert failures == ["ProducerFenced"]
    assert tracker.position == 0


async def test_dead_letters_and_reroutes_complete_their_offset_once_published() -> None:
    tracer = trace.get_tracer("tests")
    sink = MemorySink()
    conclude, tracker, origin = setup(sink)
    rejected = Rejected(DeadLetterReason.INVALID_JSON, "not JSON")
    await conclude.dead_letter(tracker, origin, rejected, tracer.start_span("p"), trace.set_span_in_context(
        tracer.start_span("p")))
    assert [r.json()["reason"] for r in sink.on(DLQ)] == ["invalid_json"]
    assert tracker.position == 1

    tracker2 = OffsetTracker(0)
    assert not tracker2.already_done(0)
    request = SendRequest(request_id="req-2", to="+16505551234", phone_number_id=NUMBER,
                          message={"type": "text", "text": {"body": "hi"}})
    conclude2 = Concluder(sink, SenderTelemetry(tracer, "g"), results_topic=RESULTS, dead_letters_topic=DLQ,
                          holds=lambda partition, t: True, clock=time.monotonic)
    span = tracer.start_span("p")
    await conclude2.reroute(tracker2, origin, Reroute(request, NUMBER, 3), span, trace.set_span_in_context(span))
    [moved] = sink.on("send.requests")
    assert (moved.key, moved.json()["request_id"]) == (NUMBER.encode(), "req-2")
    assert tracker2.position == 1
