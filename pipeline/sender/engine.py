"""The sender's processing chain for the partitions this process owns, without the Kafka consumer.

    engine = Engine(settings, client, sink, results_topic=results, dead_letters_topic=dead, partitions=12)
    engine.assign(0, committed=1200, metadata="o1:1200:…")   # on assignment
    engine.intake(record)                 # each fetched record: decide, then schedule or conclude (never blocks)
    engine.offsets_to_commit()               # {partition: (offset, metadata)} that changed since last time
    await engine.revoke({0}, grace=3.0)   # lost partition: finish what is in flight, hand back the rest
    engine.final_offsets({0})             # its last commit's (offset, metadata), asked when committing
    engine.room                           # requests it can still take (backpressure for the fetcher)

The steps, each with its contract in its module (docs/sender.md has the picture):

    intake.decide ─▶ Dispatch ─▶ Scheduler ─▶ Attempts.run ─▶ Terminal ─▶ Concluder.outcome ─▶ OffsetTracker.done
         │  Expired ─────────────────────────────┼── Retry/Hold: back to its queue's head      ▲
         │  DeadLetter ─▶ Concluder.dead_letter ─┼── Park: parked, Attempts.resolve            │
         │  Reroute ────▶ Concluder.reroute ─────┴─────────────────────────────────────────────┘

The engine keeps what the steps must not decide alone: which partitions it owns (an offset tracker
each, the revoking set, the group lease `in_group`), the tasks working on each partition (so that
revocation can wait for them), and the one scheduler timer. Every path ends in `OffsetTracker.done`
after its record is acknowledged by Kafka, or in nothing when the partition was revoked meanwhile
(the new owner redoes it). The `process` span starts at intake, parented on the record's
`traceparent`, and ends with the outcome; the Graph API call and the outcome's publish are its
children, so each request is one trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Collection, Coroutine
from functools import partial
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Tracer

from pipeline.config import Settings
from pipeline.contracts import CallbackData, ContentPolicy, MessageOutcome
from pipeline.observability.context import traceparent_of
from pipeline.sender.ambiguous import StatusWatch
from pipeline.sender.attempt import Attempts
from pipeline.sender.breaker import CircuitBreaker
from pipeline.sender.conclusion import Concluder
from pipeline.sender.intake import ConsumedRecord, DeadLetter, Expired, Reroute, Rules, decide
from pipeline.sender.limits import RateLimiter
from pipeline.sender.offsets import OffsetTracker
from pipeline.sender.outcomes import Sink
from pipeline.sender.retry import Hold, Park, Retry, RetryPolicy, Terminal
from pipeline.sender.scheduler import Lane, Scheduler
from pipeline.sender.telemetry import SenderTelemetry
from pipeline.sender.work import Origin, Work
from pipeline.topics import partition_for
from pipeline.whatsapp import MessageSender

_EXPIRED = Terminal(MessageOutcome.EXPIRED)
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
        self.partitions = partitions
        self._clock_override = clock
        self._wall = wall
        self.telemetry = SenderTelemetry(tracer or trace.get_tracer("pipeline.sender"), settings.sender.group_id)
        self._attempts = Attempts(  # without a StatusFeed (watch) every parked request is retried after its window
            client, policy or RetryPolicy.from_settings(settings.sender), watch or StatusWatch(), self.telemetry,
            clock=self._now,
        )
        self._conclude = Concluder(sink, self.telemetry, results_topic=results_topic,
                                   dead_letters_topic=dead_letters_topic, holds=self._holds, clock=self._now)
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
            self._spawn(record.partition, self._conclude.dead_letter(tracker, origin, decision.rejected, span, context))
            return
        if isinstance(decision, Reroute):
            self._spawn(record.partition, self._conclude.reroute(tracker, origin, decision, span, context))
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
            self._spawn(record.partition, self._conclude.outcome(work, _EXPIRED))
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
            self._spawn(work.origin.partition, self._conclude.outcome(work, _EXPIRED))
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
            self._spawn(work.origin.partition, self._conclude.outcome(work, _EXPIRED))
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
        await self._attempts.probe(lane)
        self.scheduler.probed(lane.number)
        self._kick()

    # --- the attempt, and what its verdict means for the queue ------------------------------------

    async def _attempt(self, work: Work) -> None:
        lane = self.scheduler.lanes[work.number]
        # Revoked, or this replica may have been expelled from its group while it waited (paused, cut
        # off): the partition may have a new owner that sends this request.
        answer = await self._attempts.run(work, lane, lambda: self._owns(work) and self.in_group())
        if answer is None:
            self._unsent(work)
            return
        if isinstance(answer.verdict, Park):
            self.scheduler.park(work)  # its call slot is free; its recipient waits behind it (order)
            self._kick()
            try:
                answer = await self._attempts.resolve(work, lane, answer)
            finally:
                self.scheduler.unpark(work)
        verdict, now = answer.verdict, answer.at
        if isinstance(verdict, Retry | Hold):
            if not self._owns(work):
                self.scheduler.finished(work, now)
                self.telemetry.handed_back(work, "revoked")
                return
            delay = verdict.delay if isinstance(verdict, Retry) else 0.0
            if answer.error is not None:
                self.telemetry.retrying(work, answer.error, delay, held=isinstance(verdict, Hold))
            self.scheduler.retry(work, now + delay, now)
            self._kick()
            return
        assert isinstance(verdict, Terminal)
        self.scheduler.finished(work, now)
        self._kick()
        await self._conclude.outcome(work, verdict, wamid=answer.wamid)

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

    def _holds(self, partition: int, tracker: OffsetTracker) -> bool:
        """Is `tracker` still the partition's (publishing for it may go on)?"""
        return self.trackers.get(partition) is tracker

    @property
    def fatal(self) -> BaseException | None:
        """Set when publishing can never succeed again (fenced): stop the process."""
        return self._conclude.fatal

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
