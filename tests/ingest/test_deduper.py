"""The deduper's own rules, without a broker: what it writes per batch, retention, replay skips.

(Unit tests: the outbox records instead of producing. Everything that needs Kafka's behaviour —
restore, crashes, replicas — is tested against the real broker in test_restore.py and test_crash.py.)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import TopicPartition
from opentelemetry.sdk.trace import TracerProvider

from pipeline.config import KafkaSettings
from pipeline.contracts import DeliveryStatus, StatusEvent
from pipeline.ingest.consumer import Outbox
from pipeline.ingest.deduper import Deduper
from pipeline.ingest.restore import PartitionState
from pipeline.observability import metrics
from pipeline.topics import TopicCatalog

TOPICS = TopicCatalog(KafkaSettings(topic_prefix="t."))
TP = TopicPartition(TOPICS.status_updates, 1)
DAY_MS = 86_400_000


@dataclass
class Record:
    offset: int
    value: bytes
    key: bytes | None = None
    topic: str = TOPICS.status_updates
    partition: int = 1
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp: int = 0


class RecordingOutbox(Outbox):
    def __init__(self) -> None:
        super().__init__(producer=None)  # type: ignore[arg-type]
        self.sent: list[tuple[str, int | None, bytes | None, bytes | None, dict[str, bytes]]] = []

    async def send(self, topic: str, value: bytes | None, key: bytes | None = None, partition: int | None = None,
                   headers: list[tuple[str, bytes]] | None = None) -> None:
        self.sent.append((topic, partition, key, value, dict(headers or [])))

    async def flush(self) -> None:
        return None


class Clock:
    now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class NoRestore:
    def __init__(self, part: PartitionState | None = None) -> None:
        self.part = part or PartitionState()

    async def restore(self, partition: int, committed: int) -> PartitionState:
        return self.part


def update(offset: int, wamid: str, kind: str, ts: int = 1764000000, number: str = "106540352242922") -> Record:
    event = StatusEvent(wamid=wamid, status=DeliveryStatus(kind), timestamp=datetime.fromtimestamp(ts, UTC),
                        phone_number_id=number, request_id="req_1")
    return Record(offset, event.model_dump_json().encode(), wamid.encode())


def deduper(outbox: Outbox, clock: Clock | None = None, restorer: Any = None) -> Deduper:
    async def committed(tp: TopicPartition) -> int | None:
        return 0

    return Deduper(outbox, TOPICS, TracerProvider().get_tracer("t"), "g", restorer or NoRestore(), committed,
                   retention_ms=2 * DAY_MS, clock=clock or Clock())


async def test_events_go_to_the_input_partition_with_headers_and_one_state_per_message_per_batch() -> None:
    outbox = RecordingOutbox()
    records = [update(0, "w1", "read"), update(1, "w1", "delivered"), update(2, "w2", "sent"), update(3, "w1", "read")]
    await deduper(outbox).process(TP, records)
    events = [s for s in outbox.sent if s[0] == TOPICS.status_events]
    states = [s for s in outbox.sent if s[0] == TOPICS.status_state]
    assert [(e[2], e[4]["status"], e[4].get("implied-by")) for e in events] == [
        (b"w1", b"sent", b"read"), (b"w1", b"delivered", b"read"), (b"w1", b"read", None), (b"w2", b"sent", None),
    ]
    assert {e[1] for e in events} == {s[1] for s in states} == {1}
    assert [e[4]["source-offset"] for e in events] == [b"0", b"0", b"0", b"2"]
    assert sorted(s[2] for s in states) == [b"w1", b"w2"]  # w1 changed twice, written once
    # the reported read is forwarded byte for byte; the implied ones are new records
    assert events[2][3] == records[0].value
    assert StatusEvent.model_validate_json(events[0][3] or b"").status is DeliveryStatus.SENT


async def test_every_status_series_exists_from_a_numbers_first_event() -> None:
    """A series born at N hides those N from rate(): a first burst of failed statuses must show."""
    fresh = f"1065403{time.time_ns() % 10**8:08d}"

    def sample(status: DeliveryStatus) -> float | None:
        labels = {"status": status.value, "phone_number_id": fresh}
        return metrics.registry.get_sample_value("delivery_status_events_total", labels)

    assert sample(DeliveryStatus.FAILED) is None
    await deduper(RecordingOutbox()).process(TP, [update(0, "w-fresh", "delivered", number=fresh)])
    assert {s.value: sample(s) for s in DeliveryStatus} == {
        "sent": 1.0, "delivered": 1.0, "read": 0.0, "played": 0.0, "failed": 0.0,  # sent: implied
    }


async def test_events_already_written_before_a_crash_are_not_written_again() -> None:
    part = PartitionState(emitted={("w1", DeliveryStatus.SENT), ("w1", DeliveryStatus.DELIVERED)}, emitted_until=5)
    outbox = RecordingOutbox()
    d = deduper(outbox, restorer=NoRestore(part))
    await d.process(TP, [update(5, "w1", "delivered")])
    assert [s[4]["status"] for s in outbox.sent if s[0] == TOPICS.status_events] == []
    assert part.emitted == set()  # passed the last offset it covered: forgotten
    await d.process(TP, [update(6, "w1", "read")])
    assert [s[4]["status"] for s in outbox.sent if s[0] == TOPICS.status_events] == [b"read"]


async def test_silent_messages_are_forgotten_with_a_tombstone() -> None:
    clock = Clock()
    outbox = RecordingOutbox()
    d = deduper(outbox, clock)

    async def batch(*records: Record) -> None:  # as the BatchHandler runs one: process, then flush
        await d.process(TP, list(records))
        await d.flush()

    await batch(update(0, "old", "sent"))
    clock.now += 1.5 * DAY_MS / 1000
    await batch(update(1, "recent", "sent"))
    clock.now += 1.0 * DAY_MS / 1000  # "old" is now 2.5 days silent, "recent" 1 day
    await batch(update(2, "recent", "delivered"))
    tombstones = [s[2] for s in outbox.sent if s[0] == TOPICS.status_state and s[3] is None]
    assert tombstones == [b"old"]
    store = d.partitions[TP].store
    assert len(store) == 1
    assert store.get("old") is None
    assert store.get("recent") is not None
    # A status for a forgotten message counts as new.
    await batch(update(3, "old", "sent"))
    assert [s[2] for s in outbox.sent if s[0] == TOPICS.status_events][-1] == b"old"


async def test_states_reach_the_store_only_when_the_batch_is_flushed() -> None:
    """A batch whose outputs were not acknowledged leaves the store as it was."""
    d = deduper(RecordingOutbox())
    await d.process(TP, [update(0, "w1", "sent")])
    part = d.partitions[TP]
    assert part.get("w1") is not None
    assert part.store.get("w1") is None
    await d.flush()
    assert part.store.get("w1") is not None
    assert not part.pending
