"""Reading dead letters from Kafka and replaying them, at most once each.

    entries = await read_entries(settings, Selection(), limit=None)     # oldest first
    entry = await read_entry(settings, "0:17")                           # or None
    report = await replay(settings, entries, dry_run=True)               # what would be sent

Once-only: the replayed record and its marker on `dead-letters.replays` (key: the dead letter's id) are
written in one Kafka transaction, and the markers are read only after this producer has fenced any
earlier replay (same transactional id), so a marker that exists is a replay that happened, and the
other way round.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from pydantic import ValidationError

from pipeline.config import Settings
from pipeline.contracts import DeadLetter, utcnow
from pipeline.contracts.dead_letters import REPLAYED_FROM
from pipeline.deadletters.select import Entry, Selection, parse_id
from pipeline.kafka_client import seek_to_first
from pipeline.topics import TopicCatalog


@dataclass
class ReplayReport:
    replayed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # replayed before: never twice
    dry_run: bool = False


def _consumer(settings: Settings) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        **settings.kafka.client_kwargs(), group_id=None, enable_auto_commit=False,
        isolation_level="read_committed", max_partition_fetch_bytes=16 * 1024 * 1024,
    )


async def _read_topic(settings: Settings, topic: str) -> list[Any]:
    """Every record of `topic` up to its end offsets at the time of the call."""
    consumer = _consumer(settings)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in await _partitions(settings, topic)]
        if not tps:
            return []
        consumer.assign(tps)
        await seek_to_first(consumer, tps)
        ends = await consumer.end_offsets(tps)
        records: list[Any] = []
        pending = {tp for tp in tps if ends[tp] > 0}
        idle = dict.fromkeys(pending, 0)
        while pending:
            batches = await consumer.getmany(*pending, timeout_ms=500)
            for tp, batch in batches.items():
                records.extend(r for r in batch if r.offset < ends[tp])
            for tp in list(pending):
                idle[tp] = 0 if batches.get(tp) else idle[tp] + 1
                # The end offset may be a transaction marker, which is never delivered: two empty fetches
                # in a row after the last record mean the partition is read.
                if await consumer.position(tp) >= ends[tp] or idle[tp] >= 2:
                    pending.discard(tp)
        return records
    finally:
        await consumer.stop()


async def _partitions(settings: Settings, topic: str) -> list[int]:
    # A consumer knows a topic's partitions only once subscribed; the admin client asks the broker.
    admin = AIOKafkaAdminClient(**settings.kafka.client_kwargs())
    await admin.start()
    try:
        (description,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if description.get("error_code"):
        return []
    return sorted(p["partition"] for p in description["partitions"])


def _entry(record: Any) -> Entry | None:
    try:
        return Entry(record.partition, record.offset, DeadLetter.model_validate_json(record.value))
    except (ValidationError, ValueError, TypeError):
        return None  # not a dead letter (nothing else writes here); skipped rather than stopping the list


async def read_entries(settings: Settings, selection: Selection, limit: int | None = None) -> list[Entry]:
    """Matching dead letters, oldest first; with `limit`, the most recent `limit` of them."""
    records = await _read_topic(settings, TopicCatalog(settings.kafka).dead_letters)
    entries = [e for e in map(_entry, records) if e is not None and selection.matches(e)]
    entries.sort(key=lambda e: (e.letter.failed_at, e.partition, e.offset))
    return entries[-limit:] if limit else entries


async def read_entry(settings: Settings, entry_id: str) -> Entry | None:
    partition, offset = parse_id(entry_id)
    tp = TopicPartition(TopicCatalog(settings.kafka).dead_letters, partition)
    consumer = _consumer(settings)
    await consumer.start()
    try:
        consumer.assign([tp])
        ends = await consumer.end_offsets([tp])
        if offset >= ends[tp]:
            return None
        consumer.seek(tp, offset)
        batches = await consumer.getmany(tp, timeout_ms=5000, max_records=1)
        record = next((r for batch in batches.values() for r in batch if r.offset == offset), None)
        return _entry(record) if record is not None else None
    finally:
        await consumer.stop()


async def replayed_ids(settings: Settings) -> set[str]:
    records = await _read_topic(settings, TopicCatalog(settings.kafka).dead_letter_replays)
    return {r.key.decode() for r in records if r.key is not None and r.value is not None}


def replay_record(entry: Entry, dead_letters_topic: str) -> tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]:
    """Topic, key, value and headers of the replayed record: the original's, plus `replayed-from`."""
    letter = entry.letter
    key = base64.b64decode(letter.key_b64) if letter.key_b64 is not None else None
    headers = [(k, v.encode()) for k, v in letter.headers.items() if k != REPLAYED_FROM]
    headers.append((REPLAYED_FROM, f"{dead_letters_topic}:{entry.id}".encode()))
    return letter.topic, key, letter.raw_value(), headers


async def replay(settings: Settings, entries: list[Entry], *, dry_run: bool = False) -> ReplayReport:
    catalog = TopicCatalog(settings.kafka)
    report = ReplayReport(dry_run=dry_run)
    if dry_run:
        done = await replayed_ids(settings)
        for entry in entries:
            (report.skipped if entry.id in done else report.replayed).append(entry.id)
        return report
    producer = AIOKafkaProducer(
        **settings.kafka.client_kwargs(),
        transactional_id=f"{settings.kafka.client_id}-dead-letter-replay",
        enable_idempotence=True,
        acks="all",
        max_request_size=8 * 1024 * 1024,
    )
    await producer.start()  # fences an earlier replay with the same id before the markers are read
    try:
        done = await replayed_ids(settings)
        for entry in entries:
            if entry.id in done:
                report.skipped.append(entry.id)
                continue
            topic, key, value, headers = replay_record(entry, catalog.dead_letters)
            marker = {"replayed_at": utcnow().isoformat(), "topic": topic, "stage": entry.letter.stage.value,
                      "reason": entry.letter.reason.value, "request_id": entry.letter.request_id}
            async with producer.transaction():
                await producer.send(topic, value=value, key=key, headers=headers)
                await producer.send(catalog.dead_letter_replays, value=json.dumps(marker).encode(),
                                    key=entry.id.encode())
            done.add(entry.id)
            report.replayed.append(entry.id)
    finally:
        await producer.stop()
    return report
