"""Make "not acknowledged in time" mean "not written" wherever Kafka allows it (API and webhook receiver).

    if not await leaders_reachable(producer, topic, {partition}):
        ...                                   # answer 503 at once: nothing was handed to the producer
    ...                                       # send; on the deadline:
    withdraw(producer, pending_futures)       # batches still waiting in the producer are taken back

Why: aiokafka's idempotent producer never gives up on a batch, so a record handed over during a
broker outage was retried until the broker returned and then written, long after its request had
been answered 503 (60 of 60 in the outage probe of issue 13). Two things close that gap:

- a record is handed over only when the leader of its partition has a live connection (checked
  without a round trip when connected; one connection attempt when not), so during an outage the
  answer is an immediate, true 503, and once the broker is back the next requests are accepted;
- on the deadline, every batch that still waits in the producer's accumulator and was never drained
  (no sequence number assigned, never on a socket) is removed and failed with `Withdrawn`; its
  records are not written, ever. Batches that were drained may already be on a broker: for those
  the answer must say "unknown", not "not written".

A guarded producer must also never expire a batch itself: aiokafka fails a batch that outlived
`request_timeout_ms` with no known leader *after* taking its sequence number, and the idempotent
producer then gets `OutOfOrderSequenceNumber` for every later batch of that partition, for the rest
of its life (seen after a broker restart: every request 503, for good). `request_timeout_ms(deadline)`
keeps that expiry far behind the deadline at which `withdraw` takes the batch back.

The accumulator is aiokafka's internal state (`_message_accumulator._batches`, `retry_count`):
there is no public API to take a record back. aiokafka is pinned in requirements.lock, and
tests/test_produce_guard.py fails if these internals change shape.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Iterable
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaTimeoutError
from aiokafka.structs import TopicPartition


class Withdrawn(KafkaTimeoutError):  # type: ignore[misc]  # aiokafka's errors are untyped
    """The record was taken back from the producer before it was sent: it will never be written."""


async def leaders_reachable(producer: AIOKafkaProducer, topic: str, partitions: Collection[int]) -> bool:
    """True when every partition's leader is known and connected (connecting to it if needed).

    An unknown leader also asks for fresh metadata, in the background so the answer stays immediate:
    a broker going down leaves leader -1 in the metadata, and as nothing is handed to the producer
    while the leader is unknown, nothing else would refresh it before `metadata_max_age_ms` (5 min).
    """
    client = producer.client
    leaders = {client.cluster.leader_for_partition(TopicPartition(topic, p)) for p in partitions}
    if None in leaders or -1 in leaders:
        client.force_metadata_update()  # a shielded future: not awaiting it is fine
        return False
    for leader in leaders:
        if not await client.ready(leader):
            return False
    return True


def request_timeout_ms(deadline_seconds: float) -> int:
    """The producer's `request_timeout_ms` (also its batch TTL) for callers that withdraw at `deadline_seconds`:
    four deadlines, and never below aiokafka's default of 40 s."""
    return int(max(40.0, 4 * deadline_seconds) * 1000)


def withdraw(producer: AIOKafkaProducer, pending: Iterable[asyncio.Future[Any]]) -> int:
    """Take back every never-drained batch holding one of `pending`; return how many were withdrawn.

    Other records in such a batch are withdrawn with it (their senders see `Withdrawn` too, which is
    true: they were not written). Synchronous, so the sender task cannot drain a batch meanwhile.
    """
    wanted = {id(future) for future in pending}
    if not wanted:
        return 0
    accumulator: Any = producer._message_accumulator  # internal: no public way (module docstring)
    withdrawn = 0
    for tp, batches in list(accumulator._batches.items()):
        for batch in list(batches):
            if batch.retry_count:  # drained at least once: it may be on a broker already
                continue
            futures = [batch.future, *(future for future, _ in batch._msg_futures)]
            if any(id(future) in wanted for future in futures):
                batches.remove(batch)
                batch.failure(exception=Withdrawn("withdrawn before it was sent"))
                withdrawn += 1
        if not batches:
            del accumulator._batches[tp]
    return withdrawn
