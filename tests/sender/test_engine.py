"""The engine without Kafka: records in, calls to a fake Meta, outcomes to a memory sink, offsets done."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from pipeline.config import Settings, load_settings
from pipeline.contracts import CallbackData, ErrorClass, MessageOutcome, Stage
from pipeline.observability import metrics, setup
from pipeline.sender.ambiguous import StatusWatch
from pipeline.sender.engine import Engine
from pipeline.sender.offsets import OffsetTracker
from pipeline.topics import partition_for
from pipeline.whatsapp import GraphApiError
from tests.sender.fakes import FakeMeta, MemorySink, Record, request_bytes

NUMBER = "106540352242922"
PARTITIONS = 3
HOME = partition_for(NUMBER.encode(), PARTITIONS)
REQUESTS, RESULTS, DLQ = "x.send.requests", "x.send.results", "x.dead-letters"


def make_settings(**sender: object) -> Settings:
    return load_settings(
        kafka={"partitions": PARTITIONS},
        whatsapp={"api_base_url": "http://127.0.0.1:9", "access_token": "t", "phone_number_id": NUMBER},
        sender={"group_id": "g", "rate_per_second": 1000.0, "breaker_reset_seconds": 0.3,
                "blocked_probe_seconds": 0.3, "retry_base_delay_seconds": 0.01, **sender},
    )


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    setup(Stage.SENDER, make_settings(), span_exporter=exporter)
    return exporter


class Harness:
    def __init__(self, meta: FakeMeta, sink: MemorySink | None = None, **sender: object) -> None:
        self.meta = meta
        self.sink = sink or MemorySink()
        self.settings = make_settings(**sender)
        self.watch = StatusWatch()
        exporter = _exporter[0] if _exporter else InMemorySpanExporter()  # used from other modules too
        telemetry = setup(Stage.SENDER, self.settings, span_exporter=exporter)
        self.engine = Engine(self.settings, meta, self.sink, results_topic=RESULTS, dead_letters_topic=DLQ,
                             partitions=PARTITIONS, tracer=telemetry.tracer("pipeline.sender"), watch=self.watch)
        for p in range(PARTITIONS):
            self.engine.assign(p, 0, None)
        self.offsets = dict.fromkeys(range(PARTITIONS), 0)

    def feed(self, value: bytes | None, *, partition: int = HOME, key: bytes | None = NUMBER.encode(),
             headers: tuple[tuple[str, bytes], ...] = ()) -> int:
        offset = self.offsets[partition]
        self.offsets[partition] += 1
        self.engine.intake(Record(REQUESTS, partition, offset, key, value, headers))
        return offset

    async def until(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; published: {[r.topic for r in self.sink.records]}")
            await asyncio.sleep(0.01)

    def results(self) -> list[dict[str, object]]:
        return [r.json() for r in self.sink.on(RESULTS)]


_exporter: list[InMemorySpanExporter] = []


@pytest.fixture(autouse=True)
def _spans(spans: InMemorySpanExporter) -> None:
    _exporter[:] = [spans]
    spans.clear()


async def test_a_request_is_sent_its_result_published_and_its_offset_done() -> None:
    h = Harness(FakeMeta())
    h.feed(request_bytes("+16505551234", "req-1", accepted_at="2026-01-01T00:00:00Z"))
    await h.until(lambda: len(h.results()) == 1)
    [result] = h.results()
    assert result["outcome"] == "sent"
    assert result["request_id"] == "req-1"
    assert result["phone_number_id"] == NUMBER
    assert str(result["wamid"]).startswith("wamid.")
    assert result["attempts"] == 1
    assert h.sink.on(RESULTS)[0].key == NUMBER.encode()
    call = h.meta.calls[0]
    callback = CallbackData.decode(call.callback_data)
    assert callback is not None
    assert callback.request_id == "req-1"
    assert callback.traceparent == result["traceparent"]
    assert callback.accepted_at == datetime(2026, 1, 1, tzinfo=UTC)  # times accepted_to_* at the ingest
    assert h.engine.owned.offsets_to_commit() == {HOME: (1, "")}


async def test_every_outcome_series_exists_from_a_numbers_first_message() -> None:
    """A series born at N hides those N from rate(): the first burst of failures must be visible."""
    fresh = f"1065403{time.time_ns() % 10**8:08d}"  # a number no other test has touched
    h = Harness(FakeMeta())

    def sample(outcome: str) -> float | None:
        labels = {"phone_number_id": fresh, "outcome": outcome}
        return metrics.registry.get_sample_value("delivery_messages_total", labels)

    assert sample("failed") is None
    h.feed(request_bytes("+16505551234", "req-fresh", phone_number_id=fresh),
           partition=partition_for(fresh.encode(), PARTITIONS), key=fresh.encode())
    await h.until(lambda: len(h.results()) == 1)
    assert {o.value: sample(o.value) for o in MessageOutcome} == {
        "sent": 1.0, "failed": 0.0, "dead_lettered": 0.0, "expired": 0.0,
    }


async def test_poison_messages_are_dead_lettered_with_reasons_and_later_ones_are_sent() -> None:
    h = Harness(FakeMeta())
    h.feed(b"{not json")
    h.feed(request_bytes("+1", "req-bad"))
    h.feed(request_bytes("+16505551234", "req-ok"))
    await h.until(lambda: len(h.sink.records) == 3)
    letters = [r.json() for r in h.sink.on(DLQ)]
    assert [d["reason"] for d in letters] == ["invalid_json", "schema_invalid"]
    assert base64.b64decode(letters[0]["value_b64"]) == b"{not json"
    assert letters[1]["request_id"] == "req-bad"
    assert "to:" in letters[1]["error"]
    assert [d["offset"] for d in letters] == [0, 1]
    assert [r["request_id"] for r in h.results()] == ["req-ok"]
    assert h.engine.owned.offsets_to_commit()[HOME][0] == 3


async def test_a_request_on_the_wrong_partition_is_rerouted_with_the_right_key() -> None:
    h = Harness(FakeMeta())
    wrong = (HOME + 1) % PARTITIONS
    h.feed(request_bytes("+16505551234", "req-moved"), partition=wrong, key=None,
           headers=(("request-id", b"req-moved"),))
    await h.until(lambda: len(h.sink.records) == 1)
    [moved] = h.sink.records
    assert moved.topic == REQUESTS
    assert moved.key == NUMBER.encode()
    assert moved.json()["phone_number_id"] == NUMBER  # the default made explicit
    assert moved.header("request-id") == "req-moved"
    assert h.meta.calls == []
    assert h.engine.owned.offsets_to_commit()[wrong][0] == 1


async def test_expired_requests_are_not_sent() -> None:
    h = Harness(FakeMeta())
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    h.feed(request_bytes("+16505551234", "req-late", expires_at=past))
    await h.until(lambda: len(h.results()) == 1)
    assert h.results()[0]["outcome"] == "expired"
    assert h.meta.calls == []


async def test_retries_end_in_expired_when_the_deadline_comes_first() -> None:
    h = Harness(FakeMeta(lambda r, n: GraphApiError("down", code=131000)), retry_base_delay_seconds=0.2)
    soon = (datetime.now(UTC) + timedelta(seconds=0.5)).isoformat()
    h.feed(request_bytes("+16505551234", "req-x", expires_at=soon))
    await h.until(lambda: len(h.results()) == 1)
    [result] = h.results()
    assert result["outcome"] == "expired"
    assert result["error"]["code"] == 131000
    assert 1 <= result["attempts"] <= 3


async def test_terminal_errors_fail_and_invalid_payloads_are_dead_lettered() -> None:
    def script(request, n):  # type: ignore[no-untyped-def]
        return {"+16505559999": GraphApiError("undeliverable", code=131026),
                "+16505559100": GraphApiError("bad param", code=100)}.get(request.to)

    h = Harness(FakeMeta(script))
    h.feed(request_bytes("+16505559999", "req-u"))
    h.feed(request_bytes("+16505559100", "req-i"))
    await h.until(lambda: len(h.sink.records) == 2)
    [failed] = h.results()
    assert failed["outcome"] == "failed"
    assert failed["error"]["error_class"] == "undeliverable"
    [letter] = [r.json() for r in h.sink.on(DLQ)]
    assert letter["reason"] == "payload_rejected"
    assert letter["request_id"] == "req-i"
    assert "100" in letter["error"]


async def test_auth_errors_block_the_number_without_burning_the_backlog() -> None:
    broken = {"on": True}
    def expired() -> GraphApiError | None:
        return GraphApiError("token expired", code=190) if broken["on"] else None

    h = Harness(FakeMeta(lambda r, n: expired(), health=expired))
    for i in range(20):
        h.feed(request_bytes(f"+1650555{i:04d}", f"req-{i}"))
    blocked = metrics.NUMBER_BLOCKED.labels(phone_number_id=NUMBER, error_class=ErrorClass.AUTH.value)
    await h.until(lambda: blocked._value.get() == 1)
    await h.until(lambda: h.meta.in_flight == 0)
    before = len(h.meta.calls)  # the calls already out when the first 190 came back
    await asyncio.sleep(0.7)  # two probe intervals
    assert len(h.meta.calls) - before == 0  # the probes are health calls, not messages...
    assert 1 <= len(h.meta.health_checks) <= 3  # ...one per 0.3 s
    assert h.sink.records == []  # nothing failed
    broken["on"] = False
    await h.until(lambda: len(h.results()) == 20)
    assert {r["outcome"] for r in h.results()} == {"sent"}
    assert blocked._value.get() == 0


async def test_an_unexpected_client_error_is_dead_lettered_not_retried_forever() -> None:
    def script(request, n):  # type: ignore[no-untyped-def]
        raise RuntimeError("bug in the client")

    h = Harness(FakeMeta(script))
    h.feed(request_bytes("+16505551234", "req-bug"))
    await h.until(lambda: len(h.sink.records) == 1)
    letter = h.sink.on(DLQ)[0].json()
    assert letter["reason"] == "unexpected_error"
    assert "RuntimeError" in letter["error"]


async def test_outcomes_are_published_before_the_offset_is_done_even_when_kafka_hiccups() -> None:
    h = Harness(FakeMeta(), MemorySink(fail_next=2))
    h.feed(request_bytes("+16505551234", "req-1"))
    await asyncio.sleep(0.1)
    assert h.engine.owned.offsets_to_commit() == {}  # not published yet: nothing to commit
    await h.until(lambda: len(h.results()) == 1, timeout=3)
    assert h.engine.owned.offsets_to_commit() == {HOME: (1, "")}


async def test_done_offsets_above_an_unfinished_one_go_into_the_metadata_and_are_skipped_after_restart() -> None:
    slow = "+16505550001"
    h = Harness(FakeMeta(lambda r, n: GraphApiError("pair", code=131056) if r.to == slow else None),
                pair_interval_seconds=30.0)
    h.feed(request_bytes(slow, "req-slow"))
    for i in range(5):
        h.feed(request_bytes(f"+1650555{i + 10:04d}", f"req-{i}"))
    await h.until(lambda: len(h.results()) == 5)
    offsets = h.engine.owned.offsets_to_commit()
    position, metadata = offsets[HOME]
    assert position == 0  # the pair-limited request pins it...
    restored = OffsetTracker.restore(position, metadata)
    assert [o for o in range(6) if not restored.already_done(o)] == [0]  # ...but nothing else is redone


async def test_revoke_finishes_in_flight_calls_drops_the_queue_and_reports_the_final_position() -> None:
    h = Harness(FakeMeta(latency=0.2))
    same = "+16505551234"
    for i in range(3):
        h.feed(request_bytes(same, f"req-{i}"))  # one in flight, two queued behind it
    await asyncio.sleep(0.05)
    final = await h.engine.revoke([HOME], grace=2.0)
    assert final == {HOME: (1, "")}
    assert [r["request_id"] for r in h.results()] == ["req-0"]
    assert h.engine.scheduler.buffered == 0
    assert h.meta.sent_ids() == ["req-0"]


async def test_revoke_abandons_calls_that_outlive_the_grace() -> None:
    h = Harness(FakeMeta(latency=0.5))
    h.feed(request_bytes("+16505551234", "req-0"))
    await asyncio.sleep(0.05)
    final = await h.engine.revoke([HOME], grace=0.1)
    assert final == {HOME: (0, "")}
    await asyncio.sleep(0.6)
    assert h.sink.records == []  # its answer came too late to publish: the next owner redoes it
    assert h.engine.scheduler.buffered == 0


async def test_one_trace_per_request_from_producer_to_results(spans: InMemorySpanExporter) -> None:
    h = Harness(FakeMeta())
    producer_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    traceparent = f"00-{producer_trace}-00f067aa0ba902b7-01"
    h.feed(request_bytes("+16505551234", "req-t"), headers=(("traceparent", traceparent.encode()),))
    await h.until(lambda: len(h.results()) == 1)
    await asyncio.sleep(0.01)
    process = [s for s in spans.get_finished_spans() if s.name == f"process {REQUESTS}"]
    assert len(process) == 1
    span = process[0]
    assert span.kind is SpanKind.CONSUMER
    assert format(span.context.trace_id, "032x") == producer_trace
    assert span.parent is not None
    assert format(span.parent.span_id, "016x") == "00f067aa0ba902b7"
    assert span.attributes["messaging.kafka.offset"] == 0
    assert h.meta.calls[0].trace_id == producer_trace  # the Graph API call is in the same trace
    published = h.sink.on(RESULTS)[0]
    assert published.header("traceparent").split("-")[1] == producer_trace
    assert h.results()[0]["traceparent"].split("-")[1] == producer_trace


async def test_in_flight_is_bounded() -> None:
    h = Harness(FakeMeta(latency=0.05), max_in_flight=7)
    for i in range(60):
        h.feed(request_bytes(f"+1650555{i:04d}", f"req-{i}"))
    await h.until(lambda: len(h.results()) == 60)
    assert h.meta.max_in_flight == 7


async def test_an_ambiguous_send_is_concluded_by_its_status_or_retried_after_the_window() -> None:
    """Finding 7: a call that may have sent is parked; Meta's status (by request id) decides."""
    def script(request, n):  # type: ignore[no-untyped-def]
        if n == 1 and request.request_id in ("req-sent-really", "req-not-sent"):
            return GraphApiError("RemoteProtocolError after the request was sent", error_class=ErrorClass.TRANSIENT,
                                 ambiguous=True)
        return None

    h = Harness(FakeMeta(script), ambiguous_window_seconds=0.5)
    h.feed(request_bytes("+16505550030", "req-sent-really"))  # Meta has it: a status will say so
    h.feed(request_bytes("+16505550030", "req-behind"))  # same recipient: must wait behind it (order)
    h.feed(request_bytes("+16505550031", "req-not-sent"))  # no status: it was not sent
    await h.until(lambda: h.watch.parked == 2)
    assert [c.request_id for c in h.meta.calls].count("req-behind") == 0
    h.watch.seen("req-sent-really", "wamid.FROM-THE-STATUS")
    await h.until(lambda: len(h.results()) == 3)
    by_id = {r["request_id"]: r for r in h.results()}
    assert by_id["req-sent-really"]["outcome"] == "sent"
    assert by_id["req-sent-really"]["wamid"] == "wamid.FROM-THE-STATUS"
    assert by_id["req-sent-really"]["ambiguous_attempts"] == 1
    assert by_id["req-not-sent"]["outcome"] == "sent"
    assert by_id["req-not-sent"]["attempts"] == 2  # retried once its window passed without a status
    calls = [c.request_id for c in h.meta.calls]
    assert calls.count("req-sent-really") == 1  # never sent twice
    assert calls.index("req-behind") > calls.index("req-sent-really")
    assert by_id["req-behind"]["outcome"] == "sent"


async def test_a_status_that_arrives_before_the_ambiguous_answer_still_counts() -> None:
    h = Harness(FakeMeta(lambda r, n: GraphApiError("ReadTimeout", error_class=ErrorClass.TRANSIENT, ambiguous=True)
                         if n == 1 else None,
                         latency=0.2), ambiguous_window_seconds=5.0)
    h.feed(request_bytes("+16505550032", "req-early"))
    await h.until(lambda: len(h.meta.calls) == 1)
    h.watch.seen("req-early", "wamid.EARLY")  # the webhook beat the timeout
    await h.until(lambda: len(h.results()) == 1, timeout=2.0)
    assert h.results()[0]["wamid"] == "wamid.EARLY"
    assert len(h.meta.calls) == 1


async def test_logs_carry_a_wamid_ref_never_the_wamid(capsys: pytest.CaptureFixture[str]) -> None:
    """Finding 8: a wamid is base64 of a record holding the recipient's number."""
    import orjson

    from pipeline.observability.redaction import wamid_ref

    h = Harness(FakeMeta())
    h.feed(request_bytes("+16505551234", "req-pii"))
    await h.until(lambda: len(h.results()) == 1)
    wamid = str(h.results()[0]["wamid"])  # the outcome record keeps it: consumers join on it
    out = capsys.readouterr().out
    assert wamid not in out
    lines = [orjson.loads(line) for line in out.splitlines() if '"message_sent"' in line]
    assert [line["wamid_ref"] for line in lines] == [wamid_ref(wamid)]


async def test_a_record_without_request_id_gets_one_from_its_place_even_if_metadata_has_that_key() -> None:
    h = Harness(FakeMeta())
    value = orjson.dumps({"to": "+16505551234", "message": {"type": "text", "text": {"body": "hi"}},
                          "metadata": {"request_id": "not-mine"}})
    offset = h.feed(value)
    await h.until(lambda: len(h.results()) == 1)
    assert h.results()[0]["request_id"] == f"{REQUESTS}:{HOME}:{offset}"  # the same after any re-read


async def test_a_revoked_numbers_lane_and_its_gauges_are_dropped() -> None:
    """Issue 20: a replica must not keep publishing rate gauges (or keep breakers) for numbers it lost."""
    other = next(f"10654035224{n:04d}" for n in range(10_000)
                 if partition_for(f"10654035224{n:04d}".encode(), PARTITIONS) != HOME)
    h = Harness(FakeMeta())
    h.feed(request_bytes("+16505551234", "req-home"))
    h.feed(request_bytes("+16505551235", "req-other", phone_number_id=other),
           partition=partition_for(other.encode(), PARTITIONS), key=other.encode())
    await h.until(lambda: len(h.results()) == 2)

    def gauge(number: str) -> float | None:
        return metrics.registry.get_sample_value("delivery_rate_limit_per_second", {"phone_number_id": number})

    assert gauge(other) is not None
    await h.engine.revoke([partition_for(other.encode(), PARTITIONS)], grace=1.0)
    assert set(h.engine.scheduler.lanes) == {NUMBER}
    assert gauge(other) is None
    assert gauge(NUMBER) is not None


async def test_a_fenced_producer_is_fatal_not_retried_forever() -> None:
    """A fenced transactional producer can never publish again: the engine says so instead of looping."""
    from aiokafka.errors import ProducerFenced

    class FencedSink(MemorySink):
        calls = 0

        async def publish(self, *args: object, **kwargs: object) -> None:
            FencedSink.calls += 1
            raise ProducerFenced()

    h = Harness(FakeMeta(), FencedSink())
    h.feed(request_bytes("+16505551234", "req-fenced"))
    await h.until(lambda: h.engine.fatal is not None)
    await asyncio.sleep(0.3)
    assert FencedSink.calls == 1
    assert h.engine.owned.offsets_to_commit() == {}  # nothing marked done


async def test_a_publish_still_awaiting_its_ack_when_the_grace_ends_is_in_the_final_offsets() -> None:
    """It lands in the transaction of the revocation's commit, so the offsets committed with it cover it."""

    class SlowSink(MemorySink):
        started = 0

        async def publish(self, *args: object, **kwargs: object) -> None:
            SlowSink.started += 1
            await asyncio.sleep(0.3)  # the broker is slow to acknowledge
            await super().publish(*args, **kwargs)  # type: ignore[arg-type]

    h = Harness(FakeMeta(), SlowSink())
    h.feed(request_bytes("+16505551234", "req-slow-ack"))
    await h.until(lambda: SlowSink.started == 1)
    final = await h.engine.revoke([HOME], grace=0.1)
    assert final == {HOME: (0, "")}  # as the grace ended
    await h.until(lambda: len(h.results()) == 1)  # what the commit's drain waits for
    assert h.engine.owned.final_offsets([HOME]) == {HOME: (1, "")}
    assert h.engine.owned.final_offsets([HOME]) == {}  # asked once
