"""The sender's processing chain for the partitions this process owns, without the Kafka consumer.

    engine = Engine(settings, client, sink, results_topic=results, dead_letters_topic=dead, partitions=12)
    engine.assign(0, committed=1200, metadata="o1:1200:…")   # on assignment
    engine.intake(record)                 # each fetched record: decode, route, schedule (never blocks)
    engine.offsets_to_commit()               # {partition: (offset, metadata)} that changed since last time
    await engine.revoke({0}, grace=3.0)   # lost partition: finish what is in flight, hand back the rest
    engine.final_offsets({0})             # its last commit's (offset, metadata), asked when committing
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
from typing import Any

from aiokafka.errors import (
    IllegalOperation,
    InvalidProducerEpoch,
    KafkaError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
)
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Tracer

from pipeline.config import Settings
from pipeline.contracts import (
    CallbackData,
    ContentPolicy,
    DeadLetterReason,
    ErrorClass,
    ErrorInfo,
    MessageOutcome,
)
from pipeline.observability.context import traceparent_of
from pipeline.sender.ambiguous import StatusWatch
from pipeline.sender.breaker import CircuitBreaker
from pipeline.sender.decode import Rejected
from pipeline.sender.intake import ConsumedRecord, DeadLetter, Expired, Reroute, Rules, decide
from pipeline.sender.limits import RateLimiter
from pipeline.sender.offsets import OffsetTracker
from pipeline.sender.outcomes import Sink, dead_letter_record, result_record
from pipeline.sender.retry import Hold, Park, Retry, RetryPolicy, Terminal, Verdict
from pipeline.sender.scheduler import Lane, Scheduler
from pipeline.sender.telemetry import SenderTelemetry
from pipeline.sender.work import Origin, Work
from pipeline.topics import partition_for
from pipeline.whatsapp import GraphApiError, MessageSender

_JSON_HEADERS = (("content-type", b"application/json"),)
_SENT = Terminal(MessageOutcome.SENT)
_EXPIRED = Terminal(MessageOutcome.EXPIRED)
_PUBLISH_RETRY_MAX = 5.0
# The producer can no longer publish in this process' transactions: fatal, not retried.
_BROKEN_PRODUCER = (ProducerFenced, InvalidProducerEpoch, OutOfOrderSequenceNumber, IllegalOperation)
_NO_PARTITION = -1  # tasks that belong to no partition (the breaker's probes): revocation does not wait for them
_LEASE_RECHECK = 0.1  # while this replica is not sure it is still in its group, look again this often


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
        watch: StatusWatch | None = None,
    ) -> None:
        self._settings = settings.sender
        # Records published straight to Kafka meet the API's forbidden-content rule here.
        self._rules = Rules(settings.whatsapp.phone_number_id, ContentPolicy(settings.api.forbidden_patterns))
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
        self._watch = watch or StatusWatch()  # without a StatusFeed every parked request is retried after its window
        self.scheduler = Scheduler(
            self._new_lane, max_in_flight=settings.sender.max_in_flight, max_buffered=settings.sender.max_buffered
        )
        self.trackers: dict[int, OffsetTracker] = {}
        self._last_commit: dict[int, tuple[int, str]] = {}
        self._revoking: set[int] = set()
        self._handed_over: dict[int, OffsetTracker] = {}  # revoked, final offsets not yet taken (final_offsets)
        self._active: dict[int, int] = {}  # partition -> coroutines working on its records
        self._tasks: set[asyncio.Task[None]] = set()
        self._quiet = asyncio.Event()  # set whenever some partition's last coroutine ends
        self._loop: asyncio.AbstractEventLoop | None = None
        self._poll_pending = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self.telemetry = SenderTelemetry(self._tracer, self._group)
        self.fatal: BaseException | None = None  # set when publishing can never succeed again: stop the process
        # Is this replica still sure it is a member of its group (KafkaSource sets it: a recent heartbeat)?
        # While it is not, nothing is dispatched: the partitions may be someone else's already.
        self.in_group: Callable[[], bool] = lambda: True

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
        self._handed_over.pop(partition, None)

    async def revoke(self, partitions: Collection[int], grace: float) -> dict[int, tuple[int, str]]:
        """Stop `partitions`: drop queued work, let in-flight work finish for up to `grace` seconds.

        Returns the final `(offset, metadata)` to commit for each. Work still running afterwards is
        abandoned: its result is dropped and the partition's next owner sends it again (these are
        the duplicates a rebalance can cause, at most what was in flight).
        """
        lost = set(partitions) & self.trackers.keys()
        self._revoking |= lost
        for work in self.scheduler.revoke(lost):
            self.telemetry.handed_back(work, "revoked")
        deadline = self._now() + grace
        while any(self._active.get(p) for p in lost) and (remaining := deadline - self._now()) > 0:
            self._quiet.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._quiet.wait(), remaining)
        final: dict[int, tuple[int, str]] = {}
        for partition in lost:
            tracker = self.trackers.pop(partition)
            self._handed_over[partition] = tracker
            final[partition] = (tracker.position, tracker.metadata())
            self._last_commit.pop(partition, None)
        self._revoking -= lost
        self._drop_foreign_lanes()
        return final

    def final_offsets(self, partitions: Collection[int]) -> dict[int, tuple[int, str]]:
        """The revoked `partitions`' final `(offset, metadata)` as of now, for their last commit (asked once).

        Later than `revoke`'s answer by the commit's drain: a publish still awaiting its acknowledgement
        when the grace ran out lands in the transaction being committed, and marks its offset done once
        acknowledged, so the offsets committed with it must include it.
        """
        final: dict[int, tuple[int, str]] = {}
        for partition in partitions:
            tracker = self._handed_over.pop(partition, None)
            if tracker is not None:
                final[partition] = (tracker.position, tracker.metadata())
        return final

    def _drop_foreign_lanes(self) -> None:
        """Forget idle lanes of numbers this process no longer owns: their gauges go, their breakers too."""
        for number in [n for n, lane in self.scheduler.lanes.items()
                       if not lane.queued and not lane.in_flight
                       and partition_for(n.encode(), self.partitions) not in self.trackers]:
            self.scheduler.drop_lane(number)
            self.telemetry.lane_dropped(number)

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

    def offsets_to_commit(self) -> dict[int, tuple[int, str]]:
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
        """Take one fetched record. Never blocks: everything after the decision happens in tasks/timers."""
        tracker = self.trackers.get(record.partition)
        if tracker is None or tracker.already_done(record.offset):
            return  # not ours, or done before a restart: skipped
        decision = decide(record, self._rules, partitions=self.partitions, wall=self._wall())
        request = decision.request
        span, context = self.telemetry.record_received(record, request.request_id if request is not None else None)
        origin = Origin(record.topic, record.partition, record.offset, record.key, tuple(record.headers or ()),
                        record.value or b"")
        if isinstance(decision, DeadLetter):
            self._spawn(record.partition, self._dead_letter(tracker, origin, decision.rejected, span, context))
            return
        if isinstance(decision, Reroute):
            self._spawn(record.partition, self._reroute(tracker, origin, decision, span, context))
            return
        now = self._now()
        traceparent = traceparent_of(span)
        request = decision.request
        work = Work(
            request,
            decision.number,
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
        if isinstance(decision, Expired):
            self._spawn(record.partition, self._conclude(work, _EXPIRED))
            return
        if decision.ttl is not None:
            work.deadline = now + decision.ttl
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
        if not self.in_group():
            self._arm(now + _LEASE_RECHECK, now)  # nothing goes out until the membership is confirmed
            return
        batch = self.scheduler.poll(now)
        for work in batch.dispatch:
            self._spawn(work.origin.partition, self._attempt(work))
        for work in batch.expired:
            self._spawn(work.origin.partition, self._conclude(work, _EXPIRED))
        for lane in batch.probes:
            self._spawn(_NO_PARTITION, self._probe(lane))
        wake = self.scheduler.next_wake
        if wake is not None:
            self._arm(wake, now)

    def _arm(self, wake: float, now: float) -> None:
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
        self._drop_foreign_lanes()  # lanes that still had calls out when their partition went
        self.telemetry.rates(self.scheduler.lanes.values())

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
            failure_ratio=s.breaker_failure_ratio,
            min_calls=s.breaker_min_calls,
            min_recipients=s.breaker_min_recipients,
            window_seconds=s.breaker_window_seconds,
            recipient_memory_seconds=max(600.0, s.retry_max_delay_seconds * 2),
            on_change=partial(self.telemetry.circuit_changed, number),
        )
        limiter = RateLimiter(s.rate_per_second, guard=s.rate_window_guard_seconds,
                              on_decrease=partial(self.telemetry.rate_decreased, number))
        self.telemetry.lane_created(number, s.rate_per_second)
        return Lane(number, limiter, breaker)

    async def _probe(self, lane: Lane) -> None:
        """The half-open probe: Meta's health call for the number (a GET; it sends nothing, to nobody)."""
        number, breaker = lane.number, lane.breaker
        started = self._now()
        failure: BaseException | None = None
        try:
            await self._client.check_health(number)
        except GraphApiError as exc:
            failure = exc
            breaker.probe_failed(self._now(), exc.error_class, exc.message)
        except Exception as exc:  # a bug in the client: never leave the number waiting for a verdict
            failure = exc
            breaker.probe_failed(self._now(), ErrorClass.OTHER, f"{type(exc).__name__}: {exc}")
        except BaseException:
            breaker.probe_abandoned()
            raise
        else:
            breaker.probe_succeeded(self._now())
        self.telemetry.probed(number, "ok" if failure is None else "failed", (self._now() - started) * 1000, failure)
        self.scheduler.probed(number)
        self._kick()

    # --- the Graph API call -----------------------------------------------------------------------

    async def _attempt(self, work: Work) -> None:
        lane = self.scheduler.lanes[work.number]
        number = work.number
        started = self._now()
        # The scheduler reserved a slot; the window is checked again now, as the request is written.
        limiter = lane.limiter
        try:
            while True:
                if not (self._owns(work) and self.in_group()):
                    # Revoked, or this replica may have been expelled from its group while it waited
                    # (paused, cut off): the partition may have a new owner that sends this request.
                    limiter.release()
                    self._unsent(work)
                    return
                if (pause := limiter.send(self._now())) <= 0.0:
                    break
                await asyncio.sleep(pause)
        except BaseException:
            limiter.release()
            raise
        work.attempts += 1
        self.telemetry.dispatched(work, started - work.received)
        request_id = work.request.request_id
        self._watch.expect(request_id)  # a status may arrive before an ambiguous call gives up
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
        now = self._now()
        verdict: Verdict
        wamid = None
        if sent is not None:
            lane.breaker.record_success(now, work.recipient)
            verdict, wamid = _SENT, sent.wamid
        elif error is not None:
            if error.ambiguous:
                work.ambiguous_attempts += 1
            verdict = self._policy.settle(work, error, now, limiter=lane.limiter, breaker=lane.breaker)
        else:
            what = f"{type(unexpected).__name__}: {unexpected}"
            work.last_error = ErrorInfo(error_class=ErrorClass.OTHER, message=what)
            verdict = Terminal(MessageOutcome.DEAD_LETTERED, work.last_error, DeadLetterReason.UNEXPECTED_ERROR)
        self.telemetry.answered(work, now - started, terminal=isinstance(verdict, Terminal), error=error,
                                unexpected=unexpected)

        if isinstance(verdict, Park):
            verdict, wamid, now = await self._resolve_ambiguous(work, lane, verdict.window)
        else:
            self._watch.forget(request_id)
        if isinstance(verdict, Retry | Hold):
            if not self._owns(work):
                self.scheduler.finished(work, now)
                self.telemetry.handed_back(work, "revoked")
                return
            delay = verdict.delay if isinstance(verdict, Retry) else 0.0
            if error is not None:
                self.telemetry.retrying(work, error, delay, held=isinstance(verdict, Hold))
            self.scheduler.retry(work, now + delay, now)
            self._kick()
            return
        self.scheduler.finished(work, now)
        self._kick()
        await self._conclude(work, verdict, wamid=wamid)

    async def _resolve_ambiguous(
        self, work: Work, lane: Lane, window: float
    ) -> tuple[Retry | Terminal, str | None, float]:
        """Park a request that may have been sent until its status says so, or its window ends (ambiguous.py)."""
        self.scheduler.park(work)  # its call slot is free; its recipient waits behind it (order)
        self._kick()
        self.telemetry.parked(work, window)
        try:
            wamid = await self._watch.resolve(work.request.request_id, window)
        finally:
            self.scheduler.unpark(work)
        now = self._now()
        self.telemetry.resolved(work, wamid, now - work.dispatched_at)
        if wamid is not None:
            return _SENT, wamid, now
        judgement = self._policy.unsent(work, now, circuit=lane.breaker.state)
        judgement.apply_to(work)
        assert isinstance(judgement.verdict, Retry | Terminal)
        return judgement.verdict, None, now

    def _unsent(self, work: Work) -> None:
        """A dispatched request that was not sent after all: back to its queue's head, or handed back."""
        now = self._now()
        if self._owns(work):
            self.scheduler.retry(work, now + _LEASE_RECHECK, now)
            self._kick()
        else:
            self.scheduler.finished(work, now)
            self.telemetry.handed_back(work, "revoked")

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
        else:
            topic, key = self._results_topic, work.number.encode()
            value = result_record(work, outcome, wamid=wamid)
        headers = (*_JSON_HEADERS, ("request-id", work.request.request_id.encode()))
        assert work.tracker is not None
        if not await self._publish(work.tracker, work.origin, topic, key, value, headers, work.context):
            self.telemetry.handed_back(work, "revoked")
            return
        work.tracker.done(work.origin.offset)
        self.telemetry.concluded(work, outcome, wamid=wamid, duration_ms=(self._now() - work.received) * 1000,
                                 reason=verdict.reason)

    async def _dead_letter(
        self, tracker: OffsetTracker, origin: Origin, rejected: Rejected,
        span: trace.Span, context: otel_context.Context,
    ) -> None:
        value = dead_letter_record(origin, rejected.reason, rejected.error, rejected.request_id)
        headers = [*_JSON_HEADERS]
        if rejected.request_id:
            headers.append(("request-id", rejected.request_id.encode()))
        published = await self._publish(tracker, origin, self._dead_letters_topic, origin.key, value, headers, context)
        if published:
            tracker.done(origin.offset)
        self.telemetry.rejected(origin, rejected.reason, rejected.error, rejected.request_id, span, published=published)

    async def _reroute(
        self, tracker: OffsetTracker, origin: Origin, reroute: Reroute,
        span: trace.Span, context: otel_context.Context,
    ) -> None:
        """A request on a partition that does not own its number: re-publish it keyed by the number."""
        request, number = reroute.request, reroute.number
        value = request.model_dump_json().encode()
        headers = [(k, v) for k, v in origin.headers if k != "traceparent"]
        published = await self._publish(tracker, origin, origin.topic, number.encode(), value, headers, context)
        if published:
            tracker.done(origin.offset)
        self.telemetry.rerouted(request.request_id, number, origin, reroute.home, span, published=published)

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
                await self._sink.publish(topic, key, value, headers, context=context, source_partition=origin.partition)
                return True
            except _BROKEN_PRODUCER as exc:
                # Retrying cannot help (fenced, or the transaction is gone): the process must stop and
                # restart from its last commit (commits.py), not wait forever with its partitions held.
                if self.fatal is None:
                    self.fatal = exc
                self.telemetry.publish_failed(topic, origin, exc, retry_in=-1.0)
                raise
            except (KafkaError, TimeoutError) as exc:
                self.telemetry.publish_failed(topic, origin, exc, delay)
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
        failure = None if task.cancelled() else task.exception()
        if failure is not None:
            self.telemetry.task_failed(partition, failure)
