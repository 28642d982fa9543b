"""The claim protocol's decisions, one partition replayed in memory (test_idempotency.py runs it on Kafka).

The fake log appends each record and feeds it back to the store, as the store's own reader does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import orjson
import pytest

from pipeline.api.idempotency import Conflict, IdempotencyStore, Owner, Replay
from pipeline.api.publisher import Publisher
from pipeline.config import Settings
from tests.api.conftest import with_api

SCOPE = "106540352242922:order-1"


@dataclass
class Appended:
    partition: int
    offset: int


class FakeLog:
    def __init__(self) -> None:
        self.store: IdempotencyStore | None = None
        self.records: list[dict[str, Any]] = []

    async def send(self, topic: str, key: bytes, value: bytes, on_late: Callable[[bool], None] | None = None) -> Any:
        offset = len(self.records)
        self.records.append(orjson.loads(value))
        self.feed(key, value, offset)
        return Appended(0, offset)

    def feed(self, key: bytes, value: bytes, offset: int, timestamp_ms: int | None = None) -> None:
        store = self.store
        assert store is not None

        def deliver() -> None:
            store._apply(key, value, timestamp_ms or int(time.time() * 1000))
            store._advance(0, offset + 1)

        asyncio.get_running_loop().call_soon(deliver)

    def foreign(self, state: str, claim_id: str, fingerprint: str = "fp", age_ms: int = 0) -> None:
        """A record written by another replica."""
        record = {"state": state, "claim_id": claim_id, "request_id": f"req_{claim_id}", "fingerprint": fingerprint,
                  "accepted_at": "2026-01-01T00:00:00Z"}
        offset = len(self.records)
        self.records.append(record)
        self.feed(SCOPE.encode(), orjson.dumps(record), offset, int(time.time() * 1000) - age_ms)


@pytest.fixture
def store(settings: Settings) -> tuple[IdempotencyStore, FakeLog]:
    log = FakeLog()
    store = IdempotencyStore(with_api(settings, publish_timeout_seconds=0.3), cast(Publisher, log))
    store._positions, store._loaded_at = {0: 0}, {0: 0}
    log.store = store
    return store, log


async def test_first_claim_owns_and_later_ones_replay_its_answer(store: tuple[IdempotencyStore, FakeLog]) -> None:
    idem, log = store
    owner = await idem.claim(SCOPE, "fp", "req_1")
    assert isinstance(owner, Owner)
    await idem.accept(owner, "2026-11-24T10:00:00Z")
    await asyncio.sleep(0)
    assert await idem.claim(SCOPE, "fp", "req_2") == Replay("req_1", "2026-11-24T10:00:00Z")
    assert await idem.claim(SCOPE, "other", "req_3") == Conflict("mismatch")
    assert [r["state"] for r in log.records] == ["claimed", "accepted"]


async def test_an_earlier_claim_wins_until_released(store: tuple[IdempotencyStore, FakeLog]) -> None:
    idem, log = store
    log.foreign("claimed", "theirs")
    await asyncio.sleep(0)
    claiming = asyncio.create_task(idem.claim(SCOPE, "fp", "req_mine"))
    await asyncio.sleep(0.05)
    assert not claiming.done()  # waiting for the earlier claim to settle
    log.foreign("released", "theirs")
    decision = await claiming
    assert isinstance(decision, Owner)
    assert decision.request_id == "req_mine"


async def test_waiting_claims_get_the_earlier_answer(store: tuple[IdempotencyStore, FakeLog]) -> None:
    idem, log = store
    log.foreign("claimed", "theirs")
    await asyncio.sleep(0)
    claiming = asyncio.create_task(idem.claim(SCOPE, "fp", "req_mine"))
    await asyncio.sleep(0.05)
    log.foreign("accepted", "theirs")
    assert await claiming == Replay("req_theirs", "2026-01-01T00:00:00Z")


async def test_abandoned_claims_expire(store: tuple[IdempotencyStore, FakeLog]) -> None:
    idem, log = store
    log.foreign("claimed", "crashed", age_ms=idem.claim_ttl_ms + 1000)
    await asyncio.sleep(0)
    assert isinstance(await idem.claim(SCOPE, "fp", "req_mine"), Owner)


async def test_busy_key_is_in_progress_and_our_claim_is_released(store: tuple[IdempotencyStore, FakeLog]) -> None:
    idem, log = store
    log.foreign("claimed", "slow")
    await asyncio.sleep(0)
    assert await idem.claim(SCOPE, "fp", "req_mine") == Conflict("in_progress")
    assert [r["state"] for r in log.records][-2:] == ["claimed", "released"]


async def test_other_request_behind_the_same_key_is_a_mismatch(store: tuple[IdempotencyStore, FakeLog]) -> None:
    idem, log = store
    log.foreign("claimed", "theirs", fingerprint="their-body")
    await asyncio.sleep(0)
    assert await idem.claim(SCOPE, "my-body", "req_mine") == Conflict("mismatch")


async def test_answers_expire_after_the_window(store: tuple[IdempotencyStore, FakeLog]) -> None:
    idem, log = store
    window_ms = idem._window_ms
    log.foreign("claimed", "old", age_ms=window_ms + 5000)
    log.foreign("accepted", "old", age_ms=window_ms + 4000)
    await asyncio.sleep(0)
    owner = await idem.claim(SCOPE, "fp", "req_new")
    assert isinstance(owner, Owner)
    assert idem.prune() == 0  # its claim is live
    await idem.release(owner)
    await asyncio.sleep(0)
    assert idem.prune() == 1
    assert len(idem) == 0
