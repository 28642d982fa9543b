"""The hand-written `faststream_*` metrics against FastStream's own middleware, and the hand-parsed
trace context against OpenTelemetry's propagator."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from faststream import AckPolicy
from faststream.exceptions import RejectMessage
from faststream.kafka import KafkaBroker
from faststream.kafka.prometheus import KafkaPrometheusMiddleware
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from pipeline.config import Settings
from pipeline.observability.kafka import KafkaObservabilityMiddleware, _consumer_span
from pipeline.observability.kafka_metrics import _Histogram
from pipeline.topics import TopicCatalog

Middleware = Callable[[CollectorRegistry], object]


async def _run(settings: Settings, topics: TopicCatalog, group: str, middleware: Middleware) -> CollectorRegistry:
    """Three messages through a subscriber that relays one, fails one and rejects one."""
    registry = CollectorRegistry()
    broker = KafkaBroker(settings.kafka.bootstrap_servers, middlewares=(middleware(registry),))
    handled = asyncio.Event()
    calls = 0

    @broker.subscriber(topics.send_requests, group_id=group, auto_offset_reset="earliest", ack_policy=AckPolicy.ACK)
    async def handle(body: str) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            handled.set()
        if body == "boom":
            raise ValueError("the handler failed")
        if body == "reject":
            raise RejectMessage()
        await broker.publish(body * 100, topics.send_results)

    await broker.start()
    try:
        await asyncio.wait_for(handled.wait(), 30)
        await asyncio.sleep(0.2)  # the processed counters are written after the handler returns
    finally:
        await broker.stop()
    return registry


def _samples(registry: CollectorRegistry) -> dict[tuple[str, str, str], list[Sample]]:
    families = text_string_to_metric_families(generate_latest(registry).decode())
    return {(f.name, f.type, f.documentation): sorted(f.samples, key=lambda s: (s.name, sorted(s.labels.items())))
            for f in families}


async def test_same_families_labels_and_counts_as_faststreams_middleware(
    settings: Settings, topics: TopicCatalog
) -> None:
    async def publish() -> None:
        broker = KafkaBroker(settings.kafka.bootstrap_servers)
        async with broker:
            for body in ("hello", "boom", "reject"):
                await broker.publish(body, topics.send_requests)

    await publish()
    theirs = await _run(settings, topics, "theirs",
                        lambda r: KafkaPrometheusMiddleware(registry=r, app_name="sender"))
    ours = await _run(settings, topics, "ours",
                      lambda r: KafkaObservabilityMiddleware(app_name="sender", registry=r))

    expected, actual = _samples(theirs), _samples(ours)
    assert actual.keys() == expected.keys()  # names, types and help texts
    for key, samples in expected.items():
        got = actual[key]
        assert [(s.name, s.labels) for s in got] == [(s.name, s.labels) for s in samples], key
        if "duration" in key[0]:  # timings differ; how many were timed may not
            assert [s.value for s in got if s.name.endswith("_count")] == \
                   [s.value for s in samples if s.name.endswith("_count")]
        else:
            assert [s.value for s in got] == [s.value for s in samples], key

    processed = {s.labels["status"]: s.value for s in actual[next(k for k in actual
                 if k[0] == "faststream_received_processed_messages")]}
    assert processed == {"acked": 1.0, "error": 1.0, "rejected": 1.0}


async def test_batch_subscribers_count_messages_and_bytes_like_faststreams_middleware(
    settings: Settings, topics: TopicCatalog
) -> None:
    bodies = [b"x" * n for n in (10, 200, 3000, 40, 5)]
    async with KafkaBroker(settings.kafka.bootstrap_servers) as broker:
        for body in bodies:
            await broker.publish(body, topics.status_updates)

    async def run(group: str, middleware: Middleware) -> dict[str, float]:
        registry = CollectorRegistry()
        broker = KafkaBroker(settings.kafka.bootstrap_servers, middlewares=(middleware(registry),))
        seen: list[bytes] = []
        done = asyncio.Event()

        @broker.subscriber(topics.status_updates, group_id=group, auto_offset_reset="earliest", batch=True)
        async def handle(batch: list[bytes]) -> None:
            seen.extend(batch)
            if len(seen) == len(bodies):
                done.set()

        async with broker:
            await broker.start()
            await asyncio.wait_for(done.wait(), 30)
            await asyncio.sleep(0.2)
        get = registry.get_sample_value
        labels = {"app_name": "ingest", "broker": "kafka", "handler": topics.status_updates}
        # How records group into batches depends on fetch timing: compare what does not.
        return {
            "received": get("faststream_received_messages_total", labels) or 0,
            "processed": get("faststream_received_processed_messages_total", labels | {"status": "acked"}) or 0,
            "bytes": get("faststream_received_messages_size_bytes_sum", labels) or 0,
            "in_process": get("faststream_received_messages_in_process", labels) or 0,
        }

    theirs = await run("batch-theirs", lambda r: KafkaPrometheusMiddleware(registry=r, app_name="ingest"))
    ours = await run("batch-ours", lambda r: KafkaObservabilityMiddleware(app_name="ingest", registry=r))
    assert ours == theirs == {"received": 5, "processed": 5, "bytes": sum(map(len, bodies)), "in_process": 0}


def test_histogram_buckets_are_inclusive_and_cumulative() -> None:
    histogram = _Histogram((1.0, 16.0))
    for value in (0.5, 1.0, 16.0, 17.0):
        histogram.observe(value)
    assert histogram.buckets() == [("1.0", 2), ("16.0", 3), ("+Inf", 4)]
    assert histogram.sum == 34.5


_W3C = TraceContextTextMapPropagator()
_TRACE = "0af7651916cd43dd8448eb211c80319c"


@pytest.mark.parametrize("headers", [
    {"traceparent": f"00-{_TRACE}-b7ad6b7169203331-01"},
    {"traceparent": f"00-{_TRACE}-b7ad6b7169203331-00"},
    {"traceparent": f"00-{_TRACE}-b7ad6b7169203331-01", "tracestate": "vendor=1"},
    {"traceparent": f"01-{_TRACE}-b7ad6b7169203331-01-future"},  # a later version, parsed by its prefix
    {"traceparent": f"00-{_TRACE.upper()}-b7ad6b7169203331-01"},  # not lowercase: invalid
    {"traceparent": f"00-{'0' * 32}-b7ad6b7169203331-01"},
    {"traceparent": f"00-{_TRACE}-{'0' * 16}-01"},
    {"traceparent": f"00-{_TRACE}-b7ad6b7169203331-01-extra"},
    {"traceparent": "garbage"},
    {},
], ids=["sampled", "unsampled", "tracestate", "version-01", "uppercase", "zero-trace", "zero-span",
        "00-with-extra", "garbage", "none"])
def test_the_consumer_span_continues_exactly_what_the_propagator_accepts(headers: dict[str, str]) -> None:
    remote = trace.get_current_span(_W3C.extract(headers)).get_span_context()
    span = _consumer_span(headers).get_span_context()

    assert span.is_valid
    assert not span.is_remote
    assert not span.trace_flags.sampled or remote.trace_flags.sampled
    if remote.is_valid:
        assert (span.trace_id, span.trace_flags, span.trace_state) == \
               (remote.trace_id, remote.trace_flags, remote.trace_state)
        assert span.span_id != remote.span_id  # a child, not the producer's span
    else:
        assert span.trace_id != int(_TRACE, 16)  # an invalid header starts a trace of its own
