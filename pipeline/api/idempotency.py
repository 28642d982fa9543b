"""Idempotency keys that hold across API replicas and restarts, kept in the `api.idempotency` topic.

    store = IdempotencyStore(settings, publisher)
    await store.start()                                   # replays the window; `store.ready` after
    decision = await store.claim(scope, fingerprint, request_id)
    match decision:
        case Replay():   answer with decision.request_id / decision.accepted_at (no second message)
        case Conflict(): 422 (same key, other request) or 409 (the first request is still in flight)
        case Owner():    publish, then `await store.accept(decision, accepted_at)` or `store.release(decision)`

How replicas agree without talking to each other: before publishing, a request appends a `claimed`
record keyed by its scope (`<phone_number_id>:<key>`). Every record of one scope lands in one
partition, which every replica reads in the same order, so "the earliest live claim owns the key" is
decided by the log itself. The owner publishes and appends `accepted` (the original answer, which
later requests replay) or `released` (Kafka failed; the key is free again). A claim whose owner
vanished expires after `claim_ttl`; that is the one gap: an owner that dies between Kafka's
acknowledgement of the message and of its `accepted` record lets a retry publish again after the TTL.

State is an in-memory index of the window (`API_IDEMPOTENCY_WINDOW_SECONDS`) rebuilt at start-up by
seeking each partition to the window's first record by timestamp, and kept current by tailing it.
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
    claims: list[_Claim] = field(default_factory=list)
    result: Replay | None = None
    result_fingerprint: str = ""
    result_ms: int = 0
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
        self._positions: dict[int, int] = {}
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
            since = int(time.time() * 1000) - self._window_ms
            starts = await consumer.offsets_for_times(dict.fromkeys(tps, since))
            for tp in tps:
                found = starts.get(tp)
                if found is None:
                    await consumer.seek_to_end(tp)
                else:
                    consumer.seek(tp, found.offset)
            ends = await consumer.end_offsets(tps)
            positions = {tp.partition: await consumer.position(tp) for tp in tps}
        except BaseException:
            await consumer.stop()
            raise
        self._positions = positions
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

    # --- the protocol -----------------------------------------------------------------------------

    async def claim(self, scope: str, fingerprint: str, request_id: str) -> Decision:
        """Decide whether this request publishes; raises `Unavailable` when Kafka cannot record the claim."""
        settled = self._settled(self._entries.get(scope), fingerprint)
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
        entry = self._entries[owner.scope]
        while True:
            settled = self._settled(entry, owner.fingerprint)
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

    def _settled(self, entry: _Entry | None, fingerprint: str) -> Replay | Conflict | None:
        if entry is None or entry.result is None or _now_ms() - entry.result_ms > self._window_ms:
            return None
        return entry.result if entry.result_fingerprint == fingerprint else Conflict("mismatch")

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
                for tp, records in batches.items():
                    for record in records:
                        self._apply(record.key, record.value, record.timestamp)
                    if records:
                        self._advance(tp.partition, records[-1].offset + 1)
            except KafkaError as exc:
                log.warning("idempotency_read_failed", error=type(exc).__name__)
                await asyncio.sleep(1.0)
            except Exception:
                # Keep tailing: a dead reader would turn every keyed request into a 409.
                log.exception("idempotency_reader_error")
                await asyncio.sleep(1.0)

    def _apply(self, key: bytes | None, value: bytes | None, timestamp_ms: int) -> None:
        try:
            record = IdempotencyRecord.model_validate_json(value or b"")
            scope = (key or b"").decode()
        except (ValidationError, UnicodeDecodeError):
            log.warning("idempotency_record_malformed", topic=self.topic)
            return
        entry = self._entries.setdefault(scope, _Entry())
        if record.state == "claimed":
            if entry.result is not None and timestamp_ms - entry.result_ms > self._window_ms:
                entry.result = None
            if entry.result is None:
                entry.claims.append(_Claim(record.claim_id, record.fingerprint, timestamp_ms))
        elif record.state == "accepted":
            entry.result = Replay(request_id=record.request_id, accepted_at=record.accepted_at or "")
            entry.result_fingerprint = record.fingerprint
            entry.result_ms = timestamp_ms
            entry.claims.clear()
        else:
            entry.claims = [c for c in entry.claims if c.claim_id != record.claim_id]
        entry.touch()

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
        """Forget expired results and abandoned claims; return how many keys were dropped."""
        now = _now_ms()
        dropped = 0
        for scope in list(self._entries):
            entry = self._entries[scope]
            entry.claims = [c for c in entry.claims if now - c.timestamp_ms <= self.claim_ttl_ms]
            if not entry.claims and (entry.result is None or now - entry.result_ms > self._window_ms):
                del self._entries[scope]
                entry.touch()
                dropped += 1
        return dropped


def _now_ms() -> int:
    return int(time.time() * 1000)
