"""Idempotency keys that hold across API replicas and restarts, kept in the `api.idempotency` topic.

    store = IdempotencyStore(settings, publisher)
    await store.start()                                   # replays the window; `store.ready` after
    decision = await store.claim(scope, fingerprint, request_id)
    match decision:
        case Replay():    # answer with decision.request_id / decision.accepted_at (no second message)
            ...
        case Conflict():  # 422 (same key, other request) or 409 (the first request is still in flight)
            ...
        case Owner():     # publish, then `await store.accept(decision, accepted_at)` or `store.release(decision)`
            ...

How replicas agree without talking to each other: before publishing, a request appends a `claimed`
record keyed by its scope (`<phone_number_id>:<key>`). Every record of one scope lands in one
partition, which every replica reads in the same order, so "the earliest live claim owns the key" is
decided by the log itself. The owner publishes and appends `accepted` (the original answer, which
later requests replay) or `released` (Kafka failed; the key is free again). A claim whose owner
vanished expires after `claim_ttl`; that is the one gap: an owner that dies between Kafka's
acknowledgement of the message and of its `accepted` record lets a retry publish again after the TTL.

State: settled answers (kept for the whole `API_IDEMPOTENCY_WINDOW_SECONDS`) live on disk in an
`AnswerIndex` (SQLite, `API_STATE_DIR`), with the offsets read so far; in-flight claims (seconds
long) live in memory. At start-up each partition is read from the index's saved offset (or from the
window's first record by timestamp when there is none), and from no later than the oldest claim that
may still be live; then tailed. Memory is bounded by in-flight claims and SQLite's cache, not by the
window's traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from pydantic import BaseModel, Field, ValidationError

from pipeline.api.answers import Answer, AnswerIndex
from pipeline.api.publisher import Publisher, Unavailable
from pipeline.config import Settings
from pipeline.observability import get_logger
from pipeline.topics import TopicCatalog

log = get_logger(__name__)


@dataclass(frozen=True)
class Replay:
    """The original answer to a request with this key."""

    request_id: str
    accepted_at: str


@dataclass(frozen=True)
class Conflict:
    reason: Literal["mismatch", "in_progress"]


@dataclass(frozen=True)
class Owner:
    """This request holds the key: it publishes, then accepts or releases."""

    scope: str
    claim_id: str
    request_id: str
    fingerprint: str


Decision = Replay | Conflict | Owner


class IdempotencyRecord(BaseModel):
    """One record on `api.idempotency` (key: `<phone_number_id>:<idempotency key>`)."""

    state: Literal["claimed", "accepted", "released"]
    claim_id: str = Field(description="unique per attempt; `accepted`/`released` name the claim they settle")
    request_id: str
    fingerprint: str = Field(description="hash of the request minus what the API stamps; a reused key must match")
    accepted_at: str | None = Field(default=None, description="on `accepted`: the answer replayed to retries")


@dataclass
class _Claim:
    claim_id: str
    fingerprint: str
    timestamp_ms: int


@dataclass
class _Entry:
    """A scope with claims in flight (its settled answer, if any, is in the AnswerIndex)."""

    claims: list[_Claim] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def touch(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


def scope_of(phone_number_id: str, key: str) -> str:
    """Keys are scoped by business number: two businesses may pick the same key."""
    return f"{phone_number_id}:{key}"


def request_id_scope(request_id: str) -> str:
    """A caller-chosen request id is claimed like a key, but across business numbers: it names one
    message on every topic. (`phone_number_id` is digits, so the two scopes cannot collide.)"""
    return f"request_id:{request_id}"


class IdempotencyStore:
    def __init__(self, settings: Settings, publisher: Publisher) -> None:
        self._kafka = settings.kafka
        self._publisher = publisher
        self.topic = TopicCatalog(settings.kafka).api_idempotency
        self._window_ms = settings.api.idempotency_window_seconds * 1000
        self._wait_seconds = settings.api.publish_timeout_seconds
        # Longer than an owner can take (its claim, publish and accept are each bounded by the timeout).
        self.claim_ttl_ms = int((3 * settings.api.publish_timeout_seconds + 5) * 1000)
        self._entries: dict[str, _Entry] = {}
        state_dir = settings.api.state_dir
        self._answers = AnswerIndex(None if state_dir is None else state_dir / f"{self.topic}.sqlite", self.topic,
                                    cache_mb=settings.api.state_cache_mb,
                                    expected_keys=settings.api.state_expected_keys,
                                    recent_mb=settings.api.state_recent_mb)
        self._positions: dict[int, int] = {}
        self.started_at: dict[int, int] = {}
        self._loaded_at: dict[int, int] = {}
        self._waiters: dict[int, list[tuple[int, asyncio.Future[None]]]] = defaultdict(list)
        self._consumer: AIOKafkaConsumer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()

    @property
    def ready(self) -> bool:
        """True once the window has been read back (before that, keyed requests get 503)."""
        return bool(self._loaded_at) and all(self._positions[p] >= end for p, end in self._loaded_at.items())

    def __len__(self) -> int:
        """Settled answers held (on disk)."""
        return len(self._answers)

    @property
    def in_memory(self) -> int:
        """Scopes with claims in flight: all this store keeps in memory."""
        return len(self._entries)

    # --- lifecycle --------------------------------------------------------------------------------

    async def start(self, retry_seconds: float = 2.0) -> None:
        """Begin reading the window back (returns before it is caught up: see `ready`).

        Needs the publisher started (it knows the topic's partitions).
        """
        while True:
            try:
                await self._open()
                return
            except (KafkaError, OSError, TimeoutError) as exc:
                log.warning("idempotency_store_unreachable", error=type(exc).__name__, retry_in_seconds=retry_seconds)
                await asyncio.sleep(retry_seconds)

    async def _open(self) -> None:
        """Assign every partition, seek each to the window's first record by timestamp, start tailing."""
        tps = [TopicPartition(self.topic, p) for p in sorted(await self._partitions())]
        consumer = AIOKafkaConsumer(
            **self._kafka.client_kwargs(),
            group_id=None,  # every replica reads every partition
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=100,
        )
        try:
            await consumer.start()
            consumer.assign(tps)
            now = int(time.time() * 1000)
            window = await consumer.offsets_for_times(dict.fromkeys(tps, now - self._window_ms))
            # Claims younger than their TTL may still be live; their records must be read again.
            live = await consumer.offsets_for_times(dict.fromkeys(tps, now - self.claim_ttl_ms - 1000))
            ends = await consumer.end_offsets(tps)
            saved = self._answers.positions()
            for tp in tps:
                end = ends[tp]
                window_start = end if window.get(tp) is None else window[tp].offset
                claims_start = end if live.get(tp) is None else live[tp].offset
                checkpoint = saved.get(tp.partition)
                if checkpoint is None or checkpoint > end:  # no index, or one from another topic's life
                    start = window_start
                else:
                    start = min(max(checkpoint, window_start), claims_start)
                consumer.seek(tp, start)
            ends = await consumer.end_offsets(tps)
            positions = {tp.partition: await consumer.position(tp) for tp in tps}
        except BaseException:
            await consumer.stop()
            raise
        self._positions = positions
        self.started_at = dict(positions)  # where reading began: the tail after the saved offsets, when there are any
        self._loaded_at = {tp.partition: ends[tp] for tp in tps}
        self._consumer = consumer
        self._tasks = [
            asyncio.create_task(self._tail(), name="idempotency-tail"),
            asyncio.create_task(self._prune_forever(), name="idempotency-prune"),
        ]
        log.info("idempotency_store_started", topic=self.topic, partitions=len(tps),
                 to_replay=sum(ends[tp] - positions[tp.partition] for tp in tps))

    async def _partitions(self) -> set[int]:
        while True:
            try:
                return await self._publisher.partitions(self.topic)
            except (KafkaError, Unavailable) as exc:
                log.warning("idempotency_topic_unavailable", topic=self.topic, error=type(exc).__name__,
                            hint="does the topic exist? `pipeline topics create`")
                await asyncio.sleep(1.0)

    async def stop(self) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await consumer.stop()
        self._answers.close()

    # --- the protocol -----------------------------------------------------------------------------

    async def claim(self, scope: str, fingerprint: str, request_id: str) -> Decision:
        """Decide whether this request publishes; raises `Unavailable` when Kafka cannot record the claim."""
        settled = self._settled(scope, fingerprint)
        if settled is not None:
            return settled
        if not self.ready:
            raise Unavailable("idempotency records are still being read")
        owner = Owner(scope=scope, claim_id=uuid.uuid4().hex, request_id=request_id, fingerprint=fingerprint)
        # A claim that times out (503) may still land later; release it then, or it would hold the
        # key until it expires.
        def release_if_landed(landed: bool) -> None:
            if landed:
                self._spawn(self.release(owner))

        metadata = await self._append(owner, "claimed", on_late=release_if_landed)
        try:
            async with asyncio.timeout(self._wait_seconds):
                await self._reached(metadata.partition, metadata.offset)
                return await self._await_turn(owner)
        except TimeoutError:
            await self.release(owner)
            return Conflict("in_progress")

    async def _await_turn(self, owner: Owner) -> Decision:
        entry = self._entries.setdefault(owner.scope, _Entry())  # none when an answer came first
        while True:
            settled = self._settled(owner.scope, owner.fingerprint)
            if settled is not None:
                return settled  # answered by an earlier request; our claim is moot
            now = _now_ms()
            live = [c for c in entry.claims if c.claim_id == owner.claim_id or not self._expired(c, now)]
            if not any(c.claim_id == owner.claim_id for c in live):
                return Conflict("in_progress")  # our claim was dropped (cannot happen while it is fresh)
            first = live[0]
            if first.claim_id == owner.claim_id:
                return owner
            if first.fingerprint != owner.fingerprint:
                await self.release(owner)
                return Conflict("mismatch")
            changed = entry.changed
            expires_in = (first.timestamp_ms + self.claim_ttl_ms - now) / 1000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout=max(expires_in, 0.001))

    async def accept(self, owner: Owner, accepted_at: str) -> None:
        """Record the answer later requests replay. The message is already durable, so failures only log."""
        try:
            await self._append(owner, "accepted", accepted_at=accepted_at)
        except Unavailable as exc:
            log.warning("idempotency_accept_not_recorded", request_id=owner.request_id, error=str(exc))

    async def release(self, owner: Owner) -> None:
        """Free the key after a failed publish (best effort: an unreleased claim expires anyway)."""
        try:
            await self._append(owner, "released")
        except Unavailable as exc:
            log.info("idempotency_release_not_recorded", request_id=owner.request_id, error=str(exc))

    def _expired(self, claim: _Claim, now_ms: int) -> bool:
        return now_ms - claim.timestamp_ms > self.claim_ttl_ms

    def _settled(self, scope: str, fingerprint: str) -> Replay | Conflict | None:
        answer = self._answers.get(scope)
        if answer is None or _now_ms() - answer.at_ms > self._window_ms:
            return None
        if answer.fingerprint != fingerprint:
            return Conflict("mismatch")
        return Replay(request_id=answer.request_id, accepted_at=answer.accepted_at)

    async def _append(
        self,
        owner: Owner,
        state: Literal["claimed", "accepted", "released"],
        accepted_at: str | None = None,
        on_late: Callable[[bool], None] | None = None,
    ) -> Any:
        record = IdempotencyRecord(state=state, claim_id=owner.claim_id, request_id=owner.request_id,
                                   fingerprint=owner.fingerprint, accepted_at=accepted_at)
        value = record.model_dump_json(exclude_none=True).encode()
        return await self._publisher.send(self.topic, owner.scope.encode(), value, on_late=on_late)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _reached(self, partition: int, offset: int) -> None:
        if self._positions.get(partition, 0) > offset:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[partition].append((offset, future))
        await future

    # --- reading the log --------------------------------------------------------------------------

    async def _tail(self) -> None:
        assert self._consumer is not None
        while True:
            try:
                batches = await self._consumer.getmany(timeout_ms=1000)
                self._fold([(r.key, r.value, r.timestamp) for records in batches.values() for r in records],
                           {tp.partition: records[-1].offset + 1 for tp, records in batches.items() if records})
            except KafkaError as exc:
                log.warning("idempotency_read_failed", error=type(exc).__name__)
                await asyncio.sleep(1.0)
            except Exception:
                # Keep tailing: a dead reader would turn every keyed request into a 409.
                log.exception("idempotency_reader_error")
                await asyncio.sleep(1.0)

    def _fold(self, records: list[tuple[bytes | None, bytes | None, int]], ends: dict[int, int]) -> None:
        """Apply a fetched batch: claims in memory, answers and offsets to disk, then wake the waiters.

        Answers are on disk before anyone waiting on them is woken, and stored with the offsets they
        were read up to, so a restart resumes exactly there.
        """
        settled: dict[str, Answer | None] = {}
        touched: set[str] = set()
        for key, value, timestamp_ms in records:
            self._fold_one(key, value, timestamp_ms, settled, touched)
        if settled or ends:
            self._answers.apply(settled.items(), ends)
        for scope in touched:
            if (entry := self._entries.get(scope)) is not None:
                entry.touch()
        for partition, position in ends.items():
            self._advance(partition, position)

    def _apply(self, key: bytes | None, value: bytes | None, timestamp_ms: int) -> None:
        """One record on its own (what `_fold` does for a batch)."""
        self._fold([(key, value, timestamp_ms)], {})

    def _fold_one(self, key: bytes | None, value: bytes | None, timestamp_ms: int,
                  settled: dict[str, Answer | None], touched: set[str]) -> None:
        """One record into the in-flight claims and into `settled` (answers for the index)."""
        try:
            record = IdempotencyRecord.model_validate_json(value or b"")
            scope = (key or b"").decode()
        except (ValidationError, UnicodeDecodeError):
            log.warning("idempotency_record_malformed", topic=self.topic)
            return
        touched.add(scope)
        if record.state == "claimed":
            answer = settled[scope] if scope in settled else self._answers.get(scope)
            if answer is not None and timestamp_ms - answer.at_ms > self._window_ms:
                settled[scope] = answer = None  # its window is over: the key is free again
            if answer is None:
                entry = self._entries.setdefault(scope, _Entry())
                entry.claims.append(_Claim(record.claim_id, record.fingerprint, timestamp_ms))
        elif record.state == "accepted":
            settled[scope] = Answer(record.request_id, record.accepted_at or "", record.fingerprint, timestamp_ms)
            if (accepted := self._entries.get(scope)) is not None:
                accepted.claims.clear()
        elif (released := self._entries.get(scope)) is not None:
            released.claims = [c for c in released.claims if c.claim_id != record.claim_id]

    def _advance(self, partition: int, position: int) -> None:
        self._positions[partition] = position
        waiting = self._waiters.get(partition)
        if not waiting:
            return
        still = []
        for offset, future in waiting:
            if future.done():
                continue
            if offset < position:
                future.set_result(None)
            else:
                still.append((offset, future))
        self._waiters[partition] = still

    async def _prune_forever(self, every_seconds: float = 60.0) -> None:
        while True:
            await asyncio.sleep(every_seconds)
            self.prune()

    def prune(self) -> int:
        """Forget answers older than the window and scopes without live claims; return how many
        scopes left memory."""
        now = _now_ms()
        self._answers.prune(now - self._window_ms)
        dropped = 0
        for scope in list(self._entries):
            entry = self._entries[scope]
            entry.claims = [c for c in entry.claims if now - c.timestamp_ms <= self.claim_ttl_ms]
            if not entry.claims:
                del self._entries[scope]
                entry.touch()
                dropped += 1
        return dropped


def _now_ms() -> int:
    return int(time.time() * 1000)
