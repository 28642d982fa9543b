"""FastStream's `faststream_*` Kafka metrics, counted in plain Python and turned into Prometheus
families only when `/metrics` is scraped.

    metrics = kafka_metrics(registry)   # what KafkaObservabilityMiddleware counts into

Same names, labels, help texts, buckets and status rules as FastStream's `KafkaPrometheusMiddleware`
(a dashboard cannot tell them apart; tests/observability/test_kafka_metrics.py compares the two).
Hand-written because FastStream's middleware makes about eleven prometheus_client calls per relayed
message, each validating its labels and taking a lock: with our trace context it cost a no-op Kafka
relay ~40 % of its throughput (bench/observability_overhead.py). Counting into dicts that only the
scrape reads is the buffered-metrics approach of Sentry's arroyo, at a few hundred ns per message.

Counts change on the event loop's thread only; a scrape from another thread copies a series table in
one C call before walking it, so it sees each series whole or not at all.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

from faststream.exceptions import AckMessage, IgnoredException, NackMessage, RejectMessage, SkipMessage
from faststream.message import AckStatus
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

_INF = float("inf")
# FastStream's defaults: prometheus_client's default buckets for durations, powers of 4 for sizes.
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
_SIZE_BUCKETS = tuple(2.0**n for n in range(4, 25, 2))

_STATUS_BY_ACK = {AckStatus.ACKED: "acked", AckStatus.NACKED: "nacked", AckStatus.REJECTED: "rejected"}
_STATUS_BY_EXCEPTION: dict[type[BaseException], str] = {
    AckMessage: "acked", NackMessage: "nacked", RejectMessage: "rejected", SkipMessage: "skipped",
}


class _Histogram:
    """Bucket counts (non-cumulative; the scrape accumulates) and a sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # `le` is inclusive, as bisect_left is
        self.sum += value

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip((*self.bounds, _INF), self.counts, strict=True):
            total += count
            out.append((floatToGoString(bound), total))  # type: ignore[no-untyped-call]
        return out


class _Received:
    __slots__ = ("duration", "exceptions", "in_process", "processed", "received", "size")

    def __init__(self) -> None:
        self.received = 0
        self.in_process = 0
        self.size = _Histogram(_SIZE_BUCKETS)
        self.duration = _Histogram(_DURATION_BUCKETS)
        self.processed: dict[str, int] = {}
        self.exceptions: dict[str, int] = {}


class _Published:
    __slots__ = ("duration", "exceptions", "published")

    def __init__(self) -> None:
        self.duration = _Histogram(_DURATION_BUCKETS)
        self.published: dict[str, int] = {}
        self.exceptions: dict[str, int] = {}


class KafkaMetrics(Collector):
    """The series of every broker in the process, keyed by (app_name, topic); one per registry.

        with metrics.processing("sender", msg):   # around a handler
            ...
        with metrics.publishing("sender", cmd):   # around a publish
            ...
    """

    def __init__(self, prefix: str = "faststream") -> None:
        self._prefix = prefix
        self.received: dict[tuple[str, str], _Received] = {}
        self.published: dict[tuple[str, str], _Published] = {}

    def processing(self, app_name: str, msg: Any) -> _Processing:
        raw = msg.raw_message
        if type(raw) is tuple:  # a batch subscriber: a tuple of records, a list of bodies
            topic, count, size = raw[0].topic, len(raw), sum(len(body) for body in msg.body)
        else:
            topic, count, size = raw.topic, 1, len(msg.body)
        series = self.received.get((app_name, topic))
        if series is None:
            series = self.received[(app_name, topic)] = _Received()
        return _Processing(series, msg, count, size)

    def publishing(self, app_name: str, cmd: Any) -> _Publishing:
        series = self.published.get((app_name, cmd.destination))
        if series is None:
            series = self.published[(app_name, cmd.destination)] = _Published()
        return _Publishing(series, len(cmd.batch_bodies))

    def collect(self) -> Iterator[Metric]:
        p, consumer, producer = self._prefix, ["app_name", "broker", "handler"], ["app_name", "broker", "destination"]
        received = CounterMetricFamily(
            f"{p}_received_messages", "Count of received messages by broker and handler", labels=consumer)
        size = HistogramMetricFamily(
            f"{p}_received_messages_size_bytes",
            "Histogram of received messages size in bytes by broker and handler", labels=consumer)
        in_process = GaugeMetricFamily(
            f"{p}_received_messages_in_process",
            "Gauge of received messages in process by broker and handler", labels=consumer)
        processed = CounterMetricFamily(
            f"{p}_received_processed_messages",
            "Count of received processed messages by broker, handler and status", labels=[*consumer, "status"])
        duration = HistogramMetricFamily(
            f"{p}_received_processed_messages_duration_seconds",
            "Histogram of received processed messages duration in seconds by broker and handler", labels=consumer)
        exceptions = CounterMetricFamily(
            f"{p}_received_processed_messages_exceptions",
            "Count of received processed messages exceptions by broker, handler and exception_type",
            labels=[*consumer, "exception_type"])
        for (app, topic), r in list(self.received.items()):
            labels = [app, "kafka", topic]
            received.add_metric(labels, r.received)
            size.add_metric(labels, r.size.buckets(), r.size.sum)
            in_process.add_metric(labels, r.in_process)
            duration.add_metric(labels, r.duration.buckets(), r.duration.sum)
            _add_each(processed, labels, r.processed)
            _add_each(exceptions, labels, r.exceptions)
        yield from (received, size, in_process, processed, duration, exceptions)

        published = CounterMetricFamily(
            f"{p}_published_messages", "Count of published messages by destination and status",
            labels=[*producer, "status"])
        publish_duration = HistogramMetricFamily(
            f"{p}_published_messages_duration_seconds",
            "Histogram of published messages duration in seconds by broker and destination", labels=producer)
        publish_exceptions = CounterMetricFamily(
            f"{p}_published_messages_exceptions",
            "Count of published messages exceptions by broker, destination and exception_type",
            labels=[*producer, "exception_type"])
        for (app, topic), s in list(self.published.items()):
            labels = [app, "kafka", topic]
            publish_duration.add_metric(labels, s.duration.buckets(), s.duration.sum)
            _add_each(published, labels, s.published)
            _add_each(publish_exceptions, labels, s.exceptions)
        yield from (published, publish_duration, publish_exceptions)


def _add_each(family: CounterMetricFamily, labels: list[str], counts: dict[str, int]) -> None:
    """One sample per key of `counts` (a status, an exception type), the key as the last label."""
    for key, count in list(counts.items()):
        family.add_metric([*labels, key], count)


_collectors: dict[int, KafkaMetrics] = {}


def kafka_metrics(registry: CollectorRegistry) -> KafkaMetrics:
    """The registry's collector, registered on first use."""
    collector = _collectors.get(id(registry))
    if collector is None:
        collector = _collectors[id(registry)] = KafkaMetrics()
        registry.register(collector)
    return collector


class _Processing:
    """FastStream's consume accounting: received, size and in-process on entry; duration, status and
    exception type on exit."""

    __slots__ = ("_count", "_msg", "_series", "_started")

    def __init__(self, series: _Received, msg: Any, count: int, size: int) -> None:
        self._series, self._msg, self._count = series, msg, count
        series.received += count
        series.size.observe(size)
        series.in_process += count
        self._started = 0.0

    def __enter__(self) -> None:
        self._started = time.perf_counter()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: object) -> None:
        series = self._series
        series.duration.observe(time.perf_counter() - self._started)
        series.in_process -= self._count
        failed = isinstance(error, Exception)  # as FastStream: a cancellation is no failure
        if failed and not isinstance(error, IgnoredException):
            name = type(error).__name__
            series.exceptions[name] = series.exceptions.get(name, 0) + 1
        status = "acked"
        committed = self._msg.committed
        if committed or failed:
            status = _STATUS_BY_ACK.get(committed) or _STATUS_BY_EXCEPTION.get(kind or BaseException) or "error"
        series.processed[status] = series.processed.get(status, 0) + self._count


class _Publishing:
    __slots__ = ("_count", "_series", "_started")

    def __init__(self, series: _Published, count: int) -> None:
        self._series, self._count, self._started = series, count, 0.0

    def __enter__(self) -> None:
        self._started = time.perf_counter()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: object) -> None:
        series = self._series
        series.duration.observe(time.perf_counter() - self._started)
        failed = isinstance(error, Exception)
        if failed:
            name = type(error).__name__
            series.exceptions[name] = series.exceptions.get(name, 0) + 1
        status = "error" if failed else "success"
        series.published[status] = series.published.get(status, 0) + self._count
