"""The receiver picks partitions with the project's one partitioner, so a key lands where every stage puts it."""

from __future__ import annotations

from collections import Counter

from aiokafka.partitioner import DefaultPartitioner

from pipeline.ingest.receiver import partition_of
from pipeline.topics import partition_for

KEYS = [b"106540352242922", b"wamid.HBgLMTY1MDU1NTEyMzQVAgARGBI", b"16505551234", b"", b"\xff\x00key"]


def test_a_key_lands_on_the_partition_the_other_stages_and_kafka_compute() -> None:
    for partitions in ([0, 1, 2], list(range(12))):
        for key in KEYS:
            expected = partition_for(key, len(partitions))  # the Outbox, the API, the sender
            assert partition_of(key, partitions) == expected
            # …and Java's / aiokafka's default partitioner, which the brokers' other clients use.
            assert expected == DefaultPartitioner()(key, partitions, partitions)


def test_unkeyed_bodies_spread_over_every_known_partition() -> None:
    seen = Counter(partition_of(None, [0, 1, 2]) for _ in range(3000))
    assert set(seen) == {0, 1, 2}
    assert min(seen.values()) > 800  # random, not stuck on one partition
