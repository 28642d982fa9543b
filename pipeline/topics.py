"""The topic catalog: every Kafka topic the pipeline uses, in one place.

    topics = TopicCatalog(settings.kafka)
    topics.send_requests            # "send.requests" (with the configured prefix)
    await create_topics(settings.kafka)   # idempotent
    partition_for(b"wamid.HBg…", 12)  # where Kafka's default partitioner puts that key
    AIOKafkaProducer(..., partitioner=kafka_partitioner)   # the same choice, made by aiokafka
    numbers_on_distinct_partitions("106540352242922", 3, 6)  # three numbers, three partitions

docs/topics.md describes each topic for people; this module is what the code uses.
`strimzi_topics(settings.kafka, cluster="delivery")` gives the same catalog as Strimzi KafkaTopic resources.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code
from aiokafka.partitioner import murmur2

from pipeline.config import KafkaSettings

DAY_MS = 24 * 3600 * 1000
BROKER_DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024  # Kafka's message.max.bytes (1 MiB, rounded down)


class TopicName(StrEnum):
    SEND_REQUESTS = "send.requests"
    SEND_RESULTS = "send.results"
    DEAD_LETTERS = "dead-letters"
    WEBHOOKS_RAW = "webhooks.raw"
    STATUS_UPDATES = "status.updates"
    STATUS_EVENTS = "status.events"
    STATUS_STATE = "status.state"
    INBOUND_MESSAGES = "inbound.messages"
    API_IDEMPOTENCY = "api.idempotency"
    ACCOUNT_EVENTS = "account.events"
    DEAD_LETTER_REPLAYS = "dead-letters.replays"


@dataclass(frozen=True)
class TopicSpec:
    name: TopicName
    key: str
    carries: str
    retention_ms: int
    compacted: bool = False
    max_message_bytes: int | None = None  # the broker's default (1 MiB) when None


CATALOG: tuple[TopicSpec, ...] = (
    TopicSpec(
        TopicName.SEND_REQUESTS,
        key="phone_number_id",
        carries="SendRequest (JSON)",
        retention_ms=7 * DAY_MS,
    ),
    TopicSpec(
        TopicName.SEND_RESULTS,
        key="phone_number_id",
        carries="SendResult (JSON): one terminal outcome per request",
        retention_ms=14 * DAY_MS,
    ),
    TopicSpec(
        TopicName.DEAD_LETTERS,
        key="original key",
        carries="DeadLetter (JSON): stage, reason, origin and raw bytes, replayable",
        retention_ms=30 * DAY_MS,
        max_message_bytes=8 * 1024 * 1024,  # a dead-lettered 3 MB webhook, base64-encoded
    ),
    TopicSpec(
        TopicName.WEBHOOKS_RAW,
        key="none (spread evenly)",
        carries="raw webhook body as received, after signature check",
        retention_ms=7 * DAY_MS,
        max_message_bytes=4 * 1024 * 1024,  # Meta posts up to 3 MB
    ),
    TopicSpec(
        TopicName.STATUS_UPDATES,
        key="wamid",
        carries="StatusEvent (JSON) per status in a webhook, duplicates included",
        retention_ms=7 * DAY_MS,
    ),
    TopicSpec(
        TopicName.STATUS_EVENTS,
        key="wamid",
        carries="StatusEvent (JSON), deduplicated and forward-only",
        retention_ms=30 * DAY_MS,
    ),
    TopicSpec(
        TopicName.STATUS_STATE,
        key="wamid",
        carries="latest known state per message (compacted); restores dedupe state",
        retention_ms=-1,
        compacted=True,
    ),
    TopicSpec(
        TopicName.INBOUND_MESSAGES,
        key="user wa_id",
        carries="InboundMessage (JSON)",
        retention_ms=14 * DAY_MS,
    ),
    TopicSpec(
        TopicName.API_IDEMPOTENCY,
        key="phone_number_id:idempotency key",
        carries="producer API idempotency records (JSON: claimed, accepted, released)",
        retention_ms=7 * DAY_MS,
    ),
    TopicSpec(
        TopicName.ACCOUNT_EVENTS,
        key="waba_id (business account)",
        carries="AccountEvent (JSON): account, template, quality and marketing opt-out events",
        retention_ms=30 * DAY_MS,
    ),
    TopicSpec(
        TopicName.DEAD_LETTER_REPLAYS,
        key="dead letter id (partition:offset)",
        carries="one record per replayed dead letter (compacted): none is replayed twice",
        retention_ms=-1,
        compacted=True,
    ),
)


def max_message_bytes(topic: TopicName) -> int:
    """The largest record `topic` takes: what a producer must check before it sends."""
    spec = next(s for s in CATALOG if s.name is topic)
    return spec.max_message_bytes or BROKER_DEFAULT_MAX_MESSAGE_BYTES


class TopicCatalog:
    """Full topic names for one deployment (the prefix is applied here and nowhere else)."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self._prefix = kafka.topic_prefix

    def name(self, topic: TopicName) -> str:
        return f"{self._prefix}{topic.value}"

    @property
    def send_requests(self) -> str:
        return self.name(TopicName.SEND_REQUESTS)

    @property
    def send_results(self) -> str:
        return self.name(TopicName.SEND_RESULTS)

    @property
    def dead_letters(self) -> str:
        return self.name(TopicName.DEAD_LETTERS)

    @property
    def webhooks_raw(self) -> str:
        return self.name(TopicName.WEBHOOKS_RAW)

    @property
    def status_updates(self) -> str:
        return self.name(TopicName.STATUS_UPDATES)

    @property
    def status_events(self) -> str:
        return self.name(TopicName.STATUS_EVENTS)

    @property
    def status_state(self) -> str:
        return self.name(TopicName.STATUS_STATE)

    @property
    def inbound_messages(self) -> str:
        return self.name(TopicName.INBOUND_MESSAGES)

    @property
    def api_idempotency(self) -> str:
        return self.name(TopicName.API_IDEMPOTENCY)

    @property
    def account_events(self) -> str:
        return self.name(TopicName.ACCOUNT_EVENTS)

    @property
    def dead_letter_replays(self) -> str:
        return self.name(TopicName.DEAD_LETTER_REPLAYS)


def topic_config(spec: TopicSpec) -> dict[str, str]:
    """The topic-level Kafka configs of one catalog entry (what `create_topics` and the Strimzi export set)."""
    config = {"retention.ms": str(spec.retention_ms)}
    if spec.compacted:
        config["cleanup.policy"] = "compact"
    if spec.max_message_bytes is not None:
        config["max.message.bytes"] = str(spec.max_message_bytes)
    return config


def new_topics(kafka: KafkaSettings) -> list[NewTopic]:
    catalog = TopicCatalog(kafka)
    return [
        NewTopic(
            catalog.name(spec.name),
            num_partitions=kafka.partitions,
            replication_factor=kafka.replication_factor,
            topic_configs=topic_config(spec),
        )
        for spec in CATALOG
    ]


STRIMZI_API_VERSION = "kafka.strimzi.io/v1beta2"


def strimzi_topics(kafka: KafkaSettings, cluster: str) -> list[dict[str, Any]]:
    """One Strimzi `KafkaTopic` per catalog entry, for the Kafka cluster named `cluster`.

    Kafka topic names may hold dots and capitals; a resource name may not, so `spec.topicName` carries
    the real name and `metadata.name` a DNS-safe form of it.
    """
    catalog = TopicCatalog(kafka)
    return [
        {
            "apiVersion": STRIMZI_API_VERSION,
            "kind": "KafkaTopic",
            "metadata": {
                "name": catalog.name(spec.name).lower().replace(".", "-").replace("_", "-").strip("-"),
                "labels": {"strimzi.io/cluster": cluster},
            },
            "spec": {
                "topicName": catalog.name(spec.name),
                "partitions": kafka.partitions,
                "replicas": kafka.replication_factor,
                "config": topic_config(spec),
            },
        }
        for spec in CATALOG
    ]


async def create_topics(kafka: KafkaSettings) -> list[str]:
    """Create every catalog topic that does not exist yet; return the names this call created.

    Raises the broker's error, naming the topic, when one cannot be created (a replication factor
    above the broker count, a config the broker refuses).
    """
    admin = AIOKafkaAdminClient(**kafka.client_kwargs())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in new_topics(kafka) if t.name not in existing]
        if not missing:
            return []
        response = await admin.create_topics(missing)
        # aiokafka returns the per-topic answers rather than raising them. "Already exists" is
        # success: another process got there first, or (KRaft) this broker's metadata had not yet
        # caught up with a creation the controller had already committed when we listed.
        created = []
        for topic, code, *message in response.topic_errors:
            if code == 0:
                created.append(topic)
            elif code != TopicAlreadyExistsError.errno:
                error = for_code(code)
                raise error(f"cannot create topic {topic}: {message[0] if message else error.description}")
        return created
    finally:
        await admin.close()


def partition_for(key: bytes | None, partitions: int) -> int:
    """The partition Kafka's default partitioner (Java's murmur2) gives `key`; keyless records spread at random.

    Every producer that picks partitions itself (batch builders, co-partitioned outputs) uses this one,
    so a key lands where the Java client and aiokafka's own partitioner would put it.
    """
    if key is None:
        return random.randrange(partitions)
    return _positive_murmur2(key) % partitions


def numbers_on_distinct_partitions(first: str, count: int, partitions: int) -> list[str]:
    """`count` business numbers from `first` upwards whose records land on `count` distinct partitions.

    How to pick numbers that do not share a partition (and so a sender replica): docs/scaling.md.
    """
    if count > partitions:
        raise ValueError(f"{count} numbers need at least {count} partitions")
    numbers: list[str] = []
    taken: set[int] = set()
    candidate = int(first)
    while len(numbers) < count:
        partition = partition_for(str(candidate).encode(), partitions)
        if partition not in taken:
            taken.add(partition)
            numbers.append(str(candidate))
        candidate += 1
    return numbers


def kafka_partitioner(key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
    """`partition_for` in the shape of aiokafka's `partitioner=` (its DefaultPartitioner, cached).

    A keyless record goes to any available partition, as aiokafka's own would send it.
    """
    if key is None:
        return random.choice(available or all_partitions)
    return all_partitions[_positive_murmur2(key) % len(all_partitions)]


# aiokafka's murmur2 is pure Python (several µs per key); keys repeat (numbers, a message's statuses).
@functools.lru_cache(maxsize=65_536)
def _positive_murmur2(key: bytes) -> int:
    hashed: int = murmur2(key)
    return hashed & 0x7FFFFFFF
