"""The sender's processing chain for the partitions this process owns, without the Kafka consumer.

    engine = Engine(settings, client, sink, results_topic=results, dead_letters_topic=dead, partitions=12)
    engine.assign(0, committed=1200, metadata="o1:1200:…")   # on assignment
    engine.intake(record)                 # each fetched record: decide, then schedule or conclude (never blocks)
    engine.owned.offsets_to_commit()      # {partition: (offset, metadata)} that changed since last time
    await engine.revoke({0}, grace=3.0)   # lost partition: finish what is in flight, hand back the rest
    engine.owned.final_offsets({0})       # its last commit's (offset, metadata), asked when committing
    engine.room                           # requests it can still take (backpressure for the fetcher)

The steps have their contracts in their modules: `intake.decide` → `Scheduler` → `Attempts.run`
→ `Concluder` (docs/sender.md has the chain). The engine wires them and keeps what no step may
decide alone: which partitions are its own (`Partitions`, and the group lease `in_group`), the
tasks working on each partition (revocation waits for them), and the scheduler's one timer.
Every path ends in `OffsetTracker.done` after its record is acknowledged by Kafka, or in nothing
when the partition was revoked meanwhile (the new owner redoes it). The `process` span starts at
intake and ends with the outcome; the Graph API call and the publish are its children.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection
from functools import partial

from opentelemetry import trace
from opentelemetry.trace import Tracer

from pipeline.config import Settings
from pipeline.contracts import ContentPolicy, MessageOutcome
from pipeline.sender.ambiguous import StatusWatch
from pipeline.sender.attempt import Attempts
from pipeline.sender.conclusion import Concluder
from pipeline.sender.intake import ConsumedRecord, DeadLetter, Dispatch, Expired, Reroute, Rules, decide
from pipeline.sender.outcomes import Sink
from pipeline.sender.partitions import Offsets, Partitions
from pipeline.sender.retry import Hold, Park, Retry, RetryPolicy, Terminal
from pipeline.sender.scheduler import Lane, Scheduler
from pipeline.sender.tasks import PartitionTasks
from pipeline.sender.telemetry import SenderTelemetry
from pipeline.sender.work import Origin, Work
from pipeline.topics import partition_for
from pipeline.whatsapp import MessageSender

_EXPIRED = Terminal(MessageOutcome.EXPIRED)
_NO_PARTITION = -1  # tasks that belong to no partition (the breaker's probes): revocation does not wait for them
_LEASE_RECHECK = 0.1  # while this replica is not sure it is still in its group, look again this often


class Engine:
    def __init__(self, settings: Settings, client: MessageSender, sink: Sink, *, results_topic: str,
                 dead_letters_topic: str, partitions: int, tracer: Tracer | None = None,
                 policy: RetryPolicy | None = None, clock: Callable[[], float] | None = None,
                 wall: Callable[[], float] = time.time, watch: StatusWatch | None = None) -> None:
        self._settings = settings.sender
        # Records published straight to Kafka meet the API's forbidden-content rule here.
        self._rules = Rules(settings.whatsapp.phone_number_id, ContentPolicy(settings.api.forbidden_patterns))
        self.partitions = partitions
        # Not loop.time(): uvloop caches it per loop iteration, and one iteration under load can take
        # tens of milliseconds; the limiter must see the time at which it actually lets a send go.
        self._now = clock or time.monotonic
        self._wall = wall
        self.owned = Partitions()
        self.telemetry = SenderTelemetry(tracer or trace.get_tracer("pipeline.sender"), settings.sender.group_id)
        self._attempts = Attempts(  # without a StatusFeed (watch) every parked request is retried after its window
            client, policy or RetryPolicy.from_settings(settings.sender), watch or StatusWatch(), self.telemetry,
            clock=self._now,
        )
        self._conclude = Concluder(sink, self.telemetry, results_topic=results_topic,
                                   dead_letters_topic=dead_letters_topic, holds=self.owned.holds, clock=self._now)
        self.scheduler = Scheduler(
            self._new_lane, max_in_flight=settings.sender.max_in_flight, max_buffered=settings.sender.max_buffered
        )
        self._tasks = PartitionTasks(self.telemetry.task_failed, clock=self._now)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._poll_pending = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        # Is this replica still sure it is a member of its group (KafkaSource sets it: a recent heartbeat)?
        # While it is not, nothing is dispatched: the partitions may be someone else's already.
        self.in_group: Callable[[], bool] = lambda: True

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    # --- ownership --------------------------------------------------------------------------------

    def assign(self, partition: int, committed: int | None, metadata: str | None) -> None:
        """Take `partition` from `committed` on; offsets done above it (in `metadata`) are skipped."""
        self.owned.assign(partition, committed, metadata)

    async def revoke(self, partitions: Collection[int], grace: float) -> Offsets:
        """Stop `partitions`: drop queued work, let in-flight work finish for up to `grace` seconds.

        Returns the final `(offset, metadata)` to commit for each. Work still running afterwards is
        abandoned: its result is dropped and the partition's next owner sends it again (these are
        the duplicates a rebalance can cause, at most what was in flight).
        """
        lost = self.owned.start_revoking(partitions)
        for work in self.scheduler.revoke(lost):
            self.telemetry.handed_back(work, "revoked")
        await self._tasks.wait_idle(lost, grace)
        final = self.owned.release(lost)
        self._drop_foreign_lanes()
        return final

    def _drop_foreign_lanes(self) -> None:
        """Forget idle lanes of numbers this process no longer owns: their gauges go, their breakers too."""
        for number in self.scheduler.drop_idle_lanes(keep=lambda n: partition_for(n.encode(), self.partitions)
                                                     in self.owned):
            self.telemetry.lane_dropped(number)

    async def close(self, grace: float) -> Offsets:
        """Shutdown: revoke everything (see `revoke`) and cancel what is left."""
        final = await self.revoke(list(self.owned), grace)
        if self._timer is not None:
            self._timer.cancel()
        await self._tasks.cancel()
        return final

    @property
    def room(self) -> int:
        return max(0, self.scheduler.max_buffered - self.scheduler.buffered)

    # --- intake -----------------------------------------------------------------------------------

    def intake(self, record: ConsumedRecord) -> None:
        """Take one fetched record. Never blocks: everything after the decision happens in tasks/timers."""
        tracker = self.owned.tracker(record.partition)
        if tracker is None or tracker.already_done(record.offset):
            return  # not ours, or done before a restart: skipped
        decision = decide(record, self._rules, partitions=self.partitions, wall=self._wall())
        request = decision.request
        span, context = self.telemetry.record_received(record, request.request_id if request is not None else None)
        origin = Origin.of(record)
        if isinstance(decision, DeadLetter):
            rejected = decision.rejected
            self._tasks.spawn(record.partition, self._conclude.dead_letter(tracker, origin, rejected, span, context))
            return
        if isinstance(decision, Reroute):
            self._tasks.spawn(record.partition, self._conclude.reroute(tracker, origin, decision, span, context))
            return
        now = self._now()
        work = Work.start(decision.request, decision.number, origin, received=now, span=span, context=context,
                          tracker=tracker, ttl=decision.ttl if isinstance(decision, Dispatch) else None)
        if isinstance(decision, Expired):
            self._tasks.spawn(record.partition, self._conclude.outcome(work, _EXPIRED))
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
        if not self.in_group():
            self._arm(now + _LEASE_RECHECK, now)  # nothing goes out until the membership is confirmed
            return
        batch = self.scheduler.poll(now)
        for work in batch.dispatch:
            self._tasks.spawn(work.origin.partition, self._attempt(work))
        for work in batch.expired:
            self._tasks.spawn(work.origin.partition, self._conclude.outcome(work, _EXPIRED))
        for lane in batch.probes:
            self._tasks.spawn(_NO_PARTITION, self._probe(lane))
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
            self._tasks.spawn(work.origin.partition, self._conclude.outcome(work, _EXPIRED))
        self._drop_foreign_lanes()  # lanes that still had calls out when their partition went
        self.telemetry.rates(self.scheduler.lanes.values())

    async def run_sweeper(self, interval: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval)
            self.sweep()

    def _new_lane(self, number: str) -> Lane:
        t = self.telemetry
        t.lane_created(number, self._settings.rate_per_second)
        return Lane.configured(number, self._settings, on_circuit_change=partial(t.circuit_changed, number),
                               on_rate_decrease=partial(t.rate_decreased, number))

    async def _probe(self, lane: Lane) -> None:
        await self._attempts.probe(lane)
        self.scheduler.probed(lane.number)
        self._kick()

    # --- the attempt, and what its verdict means for the queue ------------------------------------

    async def _attempt(self, work: Work) -> None:
        lane = self.scheduler.lanes[work.number]
        # Revoked, or this replica may have been expelled from its group while it waited (paused, cut
        # off): the partition may have a new owner that sends this request.
        answer = await self._attempts.run(work, lane, lambda: self.owned.owns(work) and self.in_group())
        if answer is not None and isinstance(answer.verdict, Park):
            self.scheduler.park(work)  # its call slot is free; its recipient waits behind it (order)
            self._kick()
            try:
                answer = await self._attempts.resolve(work, lane, answer)
            finally:
                self.scheduler.unpark(work)
        # Not sent after all (answer None): back to its queue's head, to look at the lease again soon.
        verdict, now = (answer.verdict, answer.at) if answer is not None else (Retry(_LEASE_RECHECK), self._now())
        if isinstance(verdict, Terminal):
            self.scheduler.finished(work, now)
            self._kick()
            await self._conclude.outcome(work, verdict, wamid=answer.wamid if answer is not None else None)
        elif not self.owned.owns(work):
            self.scheduler.finished(work, now)
            self.telemetry.handed_back(work, "revoked")
        else:
            delay = verdict.delay if isinstance(verdict, Retry) else 0.0
            if answer is not None and answer.error is not None:
                self.telemetry.retrying(work, answer.error, delay, held=isinstance(verdict, Hold))
            self.scheduler.retry(work, now + delay, now)
            self._kick()

    @property
    def fatal(self) -> BaseException | None:
        """Set when publishing can never succeed again (fenced): stop the process."""
        return self._conclude.fatal
