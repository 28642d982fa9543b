"""The sender's processing chain for the partitions this process owns, without the Kafka consumer.

    engine = Engine(settings, client, sink, partitions=12)
    engine.assign(0, committed=1200, metadata="o1:1200:…")   # on assignment
    engine.intake(record)                 # each fetched record: decode, route, schedule (never blocks)
    engine.commit_offsets()               # {partition: (offset, metadata)} that changed since last time
    await engine.revoke({0}, grace=3.0)   # lost partition: finish what is in flight, hand back the rest
    engine.room                           # requests it can still take (backpressure for the fetcher)

One record's way (docs/sender.md has the picture):

    intake ─▶ decode ─▶ route ─▶ Scheduler (per-recipient FIFO, limiter, breaker) ─▶ attempt (client)
       │          │        └─▶ re-publish with the right key ─┐         │ Retry/Hold: back to its queue
       │          └─▶ dead letter ─────────────────────────────┼─────────┴─▶ conclude: publish outcome
       └─ done before a restart: skipped                        └───────────────▶ OffsetTracker.done

Every path ends in `OffsetTracker.done` after its record is acknowledged by Kafka, or in nothing
when the partition was revoked meanwhile (the new owner redoes it). The `process` span starts at
intake, parented on the record's `traceparent`, and ends with the outcome; the Graph API call and
the outcome's publish are its children, so each request is one trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Collection, Coroutine
from functools import partial
from typing import Any, Protocol

from aiokafka.errors import KafkaError
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Tracer
from prometheus_client import Counter

from pipeline.config import Settings
from pipeline.contracts import (
    CallbackData,
    CircuitState,
    DeadLetterReason,
    ErrorClass,
    ErrorInfo,
    MessageOutcome,
    SendRequest,
)
from pipeline.observability import get_logger
from pipeline.observability import metrics as m
from pipeline.observability.context import context_from_traceparent
from pipeline.sender.breaker import CircuitBreaker
from pipeline.sender.decode import Rejected, decode, owner_partition
from pipeline.sender.limits import RateLimiter
from pipeline.sender.offsets import OffsetTracker
from pipeline.sender.outcomes import Sink, dead_letter_record, result_record, traceparent_of
from pipeline.sender.retry import Hold, Retry, RetryPolicy, Terminal, Verdict
from pipeline.sender.scheduler import Lane, Scheduler
from pipeline.sender.work import Origin, Work
from pipeline.whatsapp import KNOWN_ERROR_CODES, GraphApiError, MessageSender

log = get_logger(__name__)

_JSON_HEADERS = (("content-type", b"application/json"),)
_SENT = Terminal(MessageOutcome.SENT)
_EXPIRED = Terminal(MessageOutcome.EXPIRED)
_PUBLISH_RETRY_MAX = 5.0


class ConsumedRecord(Protocol):
    """What the engine reads from a fetched record (aiokafka's ConsumerRecord has it)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Any


class Engine:
    def __init__(
        self,
        settings: Settings,
        client: MessageSender,
        sink: Sink,
        *,
        results_topic: str,
        dead_letters_topic: str,
        partitions: int,
        tracer: Tracer | None = None,
        policy: RetryPolicy | None = None,
        clock: Callable[[], float] | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings.sender
        self._default_number = settings.whatsapp.phone_number_id
        self._group = settings.sender.group_id
        self._client = client
        self._sink = sink
        self._results_topic = results_topic
        self._dead_letters_topic = dead_letters_topic
        self.partitions = partitions
        self._tracer = tracer or trace.get_tracer("pipeline.sender")
        self._policy = policy or RetryPolicy.from_settings(settings.sender)
        self._clock_override = clock
        self._wall = wall
        self.scheduler = Scheduler(
            self._new_lane, max_in_flight=settings.sender.max_in_flight, max_buffered=settings.sender.max_buffered
        )
        self.trackers: dict[int, OffsetTracker] = {}
        self._last_commit: dict[int, tuple[int, str]] = {}
        self._revoking: set[int] = set()
        self._active: dict[int, int] = {}  # partition -> coroutines working on its records
        self._tasks: set[asyncio.Task[None]] = set()
        self._quiet = asyncio.Event()  # set whenever some partition's last coroutine ends
        self._loop: asyncio.AbstractEventLoop | None = None
        self._poll_pending = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._blocked_class: dict[str, ErrorClass] = {}
        self._counters: dict[tuple[Any, ...], Any] = {}
        # A bound logger once, after `setup()`: the module proxy re-binds on every call.
        self._log = log.bind()

    # --- time -------------------------------------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def _now(self) -> float:
        # Not loop.time(): uvloop caches it per loop iteration, and one iteration under load can take
        # tens of milliseconds; the limiter must see the time at which it actually lets a send go.
        return self._clock_override() if self._clock_override is not None else time.monotonic()

    # --- ownership --------------------------------------------------------------------------------

    def assign(self, partition: int, committed: int | None, metadata: str | None) -> None:
        """Take `partition` from `committed` on; offsets done above it (in `metadata`) are skipped."""
        self.trackers[partition] = OffsetTracker.restore(committed or 0, metadata)
        self._last_commit[partition] = (committed or 0, metadata or "")
        self._revoking.discard(partition)

    async def revoke(self, partitions: Collection[int], grace: float) -> dict[int, tuple[int, str]]:
        """Stop `partitions`: drop queued work, let in-flight work finish for up to `grace` seconds.

        Returns the final `(offset, metadata)` to commit for each. Work still running afterwards is
        abandoned: its result is dropped and the partition's next owner sends it again (these are
        the duplicates a rebalance can cause, at most what was in flight).
        """
        lost = set(partitions) & self.trackers.keys()
        self._revoking |= lost
        for work in self.scheduler.revoke(lost):
            self._close_span(work, "revoked")
        deadline = self._now() + grace
        while any(self._active.get(p) for p in lost) and (remaining := deadline - self._now()) > 0:
            self._quiet.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._quiet.wait(), remaining)
        final: dict[int, tuple[int, str]] = {}
        for partition in lost:
            tracker = self.trackers.pop(partition)
            final[partition] = (tracker.position, tracker.metadata())
            self._last_commit.pop(partition, None)
        self._revoking -= lost
        return final

    async def close(self, grace: float) -> dict[int, tuple[int, str]]:
        """Shutdown: revoke everything (see `revoke`) and cancel what is left."""
        final = await self.revoke(list(self.trackers), grace)
        if self._timer is not None:
            self._timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        return final

    # --- backpressure and commits -----------------------------------------------------------------

    @property
    def room(self) -> int:
        return max(0, self.scheduler.max_buffered - self.scheduler.buffered)

    def outstanding(self, partition: int) -> int:
        tracker = self.trackers.get(partition)
        return tracker.outstanding if tracker is not None else 0

    def overflowing(self, partition: int) -> bool:
        tracker = self.trackers.get(partition)
        return tracker is not None and tracker.overflowing

    def commit_offsets(self) -> dict[int, tuple[int, str]]:
        """Positions (and done-above metadata) that changed since the last call."""
        changed: dict[int, tuple[int, str]] = {}
        for partition, tracker in self.trackers.items():
            if partition in self._revoking:
                continue
            entry = (tracker.position, tracker.metadata())
            if entry != self._last_commit.get(partition):
                changed[partition] = entry
        return changed

    def committed(self, offsets: dict[int, tuple[int, str]]) -> None:
        self._last_commit.update(offsets)

    # --- intake -----------------------------------------------------------------------------------

    def intake(self, record: ConsumedRecord) -> None:
        """Take one fetched record. Never blocks: everything after decoding happens in tasks/timers."""
        tracker = self.trackers.get(record.partition)
        if tracker is None or tracker.fetched(record.offset):
            return
        headers = tuple(record.headers or ())
        value = record.value or b""
        origin = Origin(record.topic, record.partition, record.offset, record.key, headers, value)
        parent = None
        for name, raw in headers:
            if name == "traceparent":
                parent = context_from_traceparent(raw.decode("ascii", "replace"))
                break
        span = self._tracer.start_span(
            f"process {record.topic}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "process",
                "messaging.destination.name": record.topic,
                "messaging.destination.partition.id": str(record.partition),
                "messaging.kafka.offset": record.offset,
                "messaging.consumer.group.name": self._group,
            },
        )
        context = trace.set_span_in_context(span)
        decoded = decode(record.value)
        if isinstance(decoded, Rejected):
            self._spawn(record.partition, self._dead_letter(tracker, origin, decoded, span, context))
            return
        request = decoded
        if b'"request_id"' not in value:
            # The default would be a new random id at every decode: after a restart the same record
            # would become another request. Derive it from where the record sits instead.
            derived = f"{record.topic}:{record.partition}:{record.offset}"[-64:]
            request = request.model_copy(update={"request_id": derived})
        span.set_attribute("messaging.message.id", request.request_id)
        number = request.phone_number_id or self._default_number
        if number is None:
            rejected = Rejected(
                DeadLetterReason.SCHEMA_INVALID,
                "phone_number_id: missing, and no default (WHATSAPP_PHONE_NUMBER_ID) is configured",
                request.request_id,
            )
            self._spawn(record.partition, self._dead_letter(tracker, origin, rejected, span, context))
            return
        if owner_partition(number, self.partitions) != record.partition:
            self._spawn(record.partition, self._reroute(tracker, origin, request, number, span, context))
            return
        now = self._now()
        traceparent = traceparent_of(span)
        work = Work(
            request,
            number,
            origin,
            received=now,
            span=span,
            context=context,
            traceparent=traceparent,
            callback_data=CallbackData(
                request_id=request.request_id, traceparent=traceparent, accepted_at=request.accepted_at
            ).encode(),
            tracker=tracker,
        )
        if request.expires_at is not None:
            work.deadline = now + (request.expires_at.timestamp() - self._wall())
            if work.deadline <= now:
                self._spawn(record.partition, self._conclude(work, _EXPIRED))
                return
        self.scheduler.submit(work, now)  # MessageRejected here is a fetcher bug: it must respect `room`
        self._kick()

    # --- scheduling -------------------------------------------------------------------------------

    def _kick(self) -> None:
        """Poll the scheduler once the current burst of callbacks is over (coalesced)."""
        if not self._poll_pending:
            self._poll_pending = True
            self.loop.call_soon(self._poll)

    def _poll(self) -> None:
        self._poll_pending = False
        now = self._now()
        batch = self.scheduler.poll(now)
        for work in batch.dispatch:
            self._spawn(work.origin.partition, self._attempt(work))
        for work in batch.expired:
            self._spawn(work.origin.partition, self._conclude(work, _EXPIRED))
        wake = self.scheduler.next_wake
        if wake is None:
            return
        if self._timer is not None:
            if self._timer_at <= wake:
                return  # an earlier wake-up is set; it will re-arm for this one
            self._timer.cancel()
        self._timer_at = wake
        self._timer = self.loop.call_later(max(0.0, wake - now), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._poll()

    def sweep(self) -> None:
        """Expire requests waiting behind others; refresh the rate gauges (call every second)."""
        for work in self.scheduler.sweep(self._now()):
            self._spawn(work.origin.partition, self._conclude(work, _EXPIRED))
        for number, lane in self.scheduler.lanes.items():
            m.RATE_LIMIT.labels(phone_number_id=number).set(round(lane.limiter.rate, 3))

    async def run_sweeper(self, interval: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval)
            self.sweep()

    def _new_lane(self, number: str) -> Lane:
        s = self._settings
        breaker = CircuitBreaker(
            s.breaker_failure_threshold,
            s.breaker_reset_seconds,
            blocked_probe_seconds=s.blocked_probe_seconds,
            on_change=partial(self._on_circuit, number),
        )
        limiter = RateLimiter(s.rate_per_second, guard=s.rate_window_guard_seconds)
        m.RATE_LIMIT_CONFIGURED.labels(phone_number_id=number).set(s.rate_per_second)
        m.RATE_LIMIT.labels(phone_number_id=number).set(s.rate_per_second)
        m.CIRCUIT_STATE.labels(phone_number_id=number).set(CircuitState.CLOSED.gauge_value)
        # Every outcome's series exists at 0 from the number's first message: rate() cannot see the
        # increase that gives birth to a series, so a first burst of failures between two scrapes
        # would move neither the send error ratio nor its alert.
        for outcome in MessageOutcome:
            self._counter(m.MESSAGES, number, outcome.value)
        return Lane(number, limiter, breaker)

    def _on_circuit(self, number: str, state: CircuitState, blocked: ErrorClass | None) -> None:
        m.CIRCUIT_STATE.labels(phone_number_id=number).set(state.gauge_value)
        previous = self._blocked_class.get(number)
        if blocked is not None and previous is None:
            self._blocked_class[number] = blocked
            m.NUMBER_BLOCKED.labels(phone_number_id=number, error_class=blocked.value).set(1)
            log.error("number_blocked", phone_number_id=number, error_class=blocked.value,
                      hint="fix the token or the account; the sender probes again and resumes by itself")
        elif blocked is None and previous is not None:
            del self._blocked_class[number]
            m.NUMBER_BLOCKED.labels(phone_number_id=number, error_class=previous.value).set(0)
            log.warning("number_unblocked", phone_number_id=number, error_class=previous.value)
        if state is not CircuitState.HALF_OPEN:
            log.warning("circuit_" + state.value, phone_number_id=number)

    # --- the Graph API call -----------------------------------------------------------------------

    async def _attempt(self, work: Work) -> None:
        lane = self.scheduler.lanes[work.number]
        number = work.number
        work.attempts += 1
        started = self._now()
        if work.attempts == 1:
            self._observe(m.RATE_LIMIT_WAIT, number, started - work.received)
        # The scheduler reserved a slot; the window is checked again now, as the request is written.
        limiter = lane.limiter
        try:
            while (pause := limiter.send(self._now())) > 0.0:  # noqa: ASYNC110 — waiting for time, not an event
                await asyncio.sleep(pause)
        except BaseException:
            limiter.release()
            raise
        m.INFLIGHT.inc()
        sent = None
        error: GraphApiError | None = None
        unexpected: BaseException | None = None
        token = otel_context.attach(work.context) if work.context is not None else None
        try:
            sent = await self._client.send_message(
                work.request, phone_number_id=number, callback_data=work.callback_data
            )
        except GraphApiError as exc:
            error = exc
        except Exception as exc:
            unexpected = exc
        finally:
            if token is not None:
                otel_context.detach(token)
            m.INFLIGHT.dec()
        now = self._now()
        self._observe(m.SEND_DURATION, number, now - started)
        verdict: Verdict
        wamid = None
        if sent is not None:
            lane.breaker.record_success(work.probe)
            verdict, wamid = _SENT, sent.wamid
            self._count(m.SEND_ATTEMPTS, number, "sent", ErrorClass.NONE.value, "none")
        elif error is not None:
            if error.ambiguous:
                work.ambiguous_attempts += 1
                self._count(m.AMBIGUOUS_ATTEMPTS, number)
            rate_before = lane.limiter.rate
            verdict = self._policy.judge(work, error, now, limiter=lane.limiter, breaker=lane.breaker)
            if lane.limiter.rate != rate_before:
                m.RATE_LIMIT.labels(phone_number_id=number).set(round(lane.limiter.rate, 3))
                log.warning("rate_decreased", phone_number_id=number, rate=round(lane.limiter.rate, 2))
            self._count(
                m.SEND_ATTEMPTS, number, "failed" if isinstance(verdict, Terminal) else "retry",
                error.error_class.value, m.error_code_label(error.code, KNOWN_ERROR_CODES),
            )
        else:
            if work.probe:
                lane.breaker.release_probe()
            what = f"{type(unexpected).__name__}: {unexpected}"
            work.last_error = ErrorInfo(error_class=ErrorClass.OTHER, message=what)
            verdict = Terminal(MessageOutcome.DEAD_LETTERED, work.last_error, DeadLetterReason.UNEXPECTED_ERROR)
            self._count(m.SEND_ATTEMPTS, number, "failed", ErrorClass.OTHER.value, "none")
            log.error("send_unexpected_error", request_id=work.request.request_id, exc_info=unexpected)

        if isinstance(verdict, Retry | Hold):
            if not self._owns(work):
                self.scheduler.finished(work, now)
                self._close_span(work, "revoked")
                return
            delay = verdict.delay if isinstance(verdict, Retry) else 0.0
            if error is not None:
                self._log.info("send_retry", request_id=work.request.request_id, phone_number_id=number,
                         to=work.recipient, error_class=error.error_class.value, error_code=error.code,
                         attempts=work.attempts, delay_s=round(delay, 3), held=isinstance(verdict, Hold),
                         trace_id=_trace_id(work))
            self.scheduler.retry(work, now + delay, now)
            self._kick()
            return
        self.scheduler.finished(work, now)
        self._kick()
        await self._conclude(work, verdict, wamid=wamid)

    def _owns(self, work: Work) -> bool:
        partition = work.origin.partition
        return partition not in self._revoking and self.trackers.get(partition) is work.tracker

    # --- outcomes ---------------------------------------------------------------------------------

    async def _conclude(self, work: Work, verdict: Terminal, *, wamid: str | None = None) -> None:
        """Publish the request's one outcome, then mark its offset done."""
        outcome = verdict.outcome
        if outcome is MessageOutcome.DEAD_LETTERED:
            error = verdict.error
            text = (error.message or "") if error is not None else ""
            if error is not None and error.code is not None:
                text = f"Graph API code {error.code} ({error.error_class.value}): {text}"
            reason = verdict.reason or DeadLetterReason.UNEXPECTED_ERROR
            topic, key = self._dead_letters_topic, work.origin.key
            value = dead_letter_record(work.origin, reason, text, work.request.request_id)
            m.DEAD_LETTERS.labels(stage="sender", reason=reason.value).inc()
        else:
            topic, key = self._results_topic, work.number.encode()
            value = result_record(work, outcome, wamid=wamid)
        headers = (*_JSON_HEADERS, ("request-id", work.request.request_id.encode()))
        assert work.tracker is not None
        if not await self._publish(work.tracker, work.origin, topic, key, value, headers, work.context):
            self._close_span(work, "revoked")
            return
        work.tracker.done(work.origin.offset)
        self._count(m.MESSAGES, work.number, outcome.value, exemplar=_trace_id(work))
        error = work.last_error if outcome is not MessageOutcome.SENT else None
        duration_ms = round((self._now() - work.received) * 1000, 1)
        fields: dict[str, Any] = {
            "request_id": work.request.request_id, "phone_number_id": work.number, "to": work.recipient,
            "outcome": outcome.value, "attempts": work.attempts, "duration_ms": duration_ms,
            "trace_id": _trace_id(work),
        }
        if wamid is not None:
            fields["wamid"] = wamid
        if error is not None:
            fields["error_class"] = error.error_class.value
            fields["error_code"] = error.code
        if outcome is MessageOutcome.SENT:
            self._log.info("message_sent", **fields)
        else:
            self._log.warning("message_" + outcome.value, **fields)
        span = work.span
        if span is not None:
            span.set_attribute("delivery.outcome", outcome.value)
            if error is not None:
                span.set_status(trace.StatusCode.ERROR, f"{outcome.value}: {error.error_class.value} {error.code}")
            span.end()

    async def _dead_letter(
        self, tracker: OffsetTracker, origin: Origin, rejected: Rejected,
        span: trace.Span, context: otel_context.Context,
    ) -> None:
        value = dead_letter_record(origin, rejected.reason, rejected.error, rejected.request_id)
        headers = [*_JSON_HEADERS]
        if rejected.request_id:
            headers.append(("request-id", rejected.request_id.encode()))
        span.set_attribute("delivery.outcome", MessageOutcome.DEAD_LETTERED.value)
        span.set_status(trace.StatusCode.ERROR, rejected.reason.value)
        if await self._publish(tracker, origin, self._dead_letters_topic, origin.key, value, headers, context):
            tracker.done(origin.offset)
            m.DEAD_LETTERS.labels(stage="sender", reason=rejected.reason.value).inc()
            log.warning("message_dead_lettered", reason=rejected.reason.value, error=rejected.error,
                        request_id=rejected.request_id, partition=origin.partition, offset=origin.offset,
                        trace_id=format(span.get_span_context().trace_id, "032x"))
        span.end()

    async def _reroute(
        self, tracker: OffsetTracker, origin: Origin, request: SendRequest, number: str,
        span: trace.Span, context: otel_context.Context,
    ) -> None:
        """A request on a partition that does not own its number: re-publish it keyed by the number."""
        value = request.model_copy(update={"phone_number_id": number}).model_dump_json().encode()
        headers = [(k, v) for k, v in origin.headers if k != "traceparent"]
        span.set_attribute("delivery.rerouted", True)
        if await self._publish(tracker, origin, origin.topic, number.encode(), value, headers, context):
            tracker.done(origin.offset)
            log.info("request_rerouted", request_id=request.request_id, phone_number_id=number,
                     from_partition=origin.partition, to_partition=owner_partition(number, self.partitions))
        span.end()

    async def _publish(
        self, tracker: OffsetTracker, origin: Origin, topic: str, key: bytes | None, value: bytes,
        headers: Any, context: otel_context.Context | None,
    ) -> bool:
        """Publish until acknowledged; False if the partition was lost meanwhile (nothing to commit)."""
        delay = 0.1
        while True:
            if self.trackers.get(origin.partition) is not tracker:
                return False
            try:
                await self._sink.publish(topic, key, value, headers, context=context)
                return True
            except (KafkaError, TimeoutError) as exc:
                log.error("outcome_publish_failed", topic=topic, partition=origin.partition, offset=origin.offset,
                          error=str(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _PUBLISH_RETRY_MAX)

    # --- plumbing ---------------------------------------------------------------------------------

    def _spawn(self, partition: int, coro: Coroutine[Any, Any, None]) -> None:
        self._active[partition] = self._active.get(partition, 0) + 1
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(partial(self._finished_task, partition))

    def _finished_task(self, partition: int, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        left = self._active[partition] - 1
        if left:
            self._active[partition] = left
        else:
            del self._active[partition]
            self._quiet.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("sender_task_failed", partition=partition, exc_info=task.exception())

    def _close_span(self, work: Work, why: str) -> None:
        if work.span is not None:
            work.span.set_attribute("delivery.handed_back", why)
            work.span.end()
            work.span = None

    def _observe(self, histogram: Any, number: str, value: float) -> None:
        child = self._counters.get((histogram, number))
        if child is None:
            child = self._counters[(histogram, number)] = histogram.labels(number)
        child.observe(value)

    def _count(self, counter: Counter, *labels: str, exemplar: str | None = None) -> None:
        self._counter(counter, *labels).inc(exemplar={"trace_id": exemplar} if exemplar else None)

    def _counter(self, counter: Counter, *labels: str) -> Counter:
        key = (counter, *labels)
        child = self._counters.get(key)
        if child is None:
            child = self._counters[key] = counter.labels(*labels)
        return child


def _trace_id(work: Work) -> str | None:
    return work.traceparent[3:35] if work.traceparent else None
