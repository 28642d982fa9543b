from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import KafkaSettings
from pipeline.topics import CATALOG, TopicCatalog, new_topics, numbers_on_distinct_partitions, partition_for

DOC = Path(__file__).resolve().parents[1] / "docs" / "topics.md"


def test_every_catalog_topic_is_documented() -> None:
    text = DOC.read_text()
    for spec in CATALOG:
        assert f"`{spec.name.value}`" in text, f"{spec.name.value} missing from docs/topics.md"


def test_prefix_applies_to_every_topic() -> None:
    catalog = TopicCatalog(KafkaSettings(topic_prefix="prod."))
    assert catalog.send_requests == "prod.send.requests"
    topics = new_topics(KafkaSettings(topic_prefix="prod.", partitions=6))
    assert all(t.name.startswith("prod.") and t.num_partitions == 6 for t in topics)
    state = next(t for t in topics if t.name == "prod.status.state")
    assert state.topic_configs["cleanup.policy"] == "compact"


def test_numbers_on_distinct_partitions_are_the_first_that_do_not_share_one() -> None:
    numbers = numbers_on_distinct_partitions("106540352242922", 3, 6)
    homes = [partition_for(n.encode(), 6) for n in numbers]
    assert numbers[0] == "106540352242922"
    assert len(set(homes)) == 3
    skipped = range(int(numbers[0]), int(numbers[-1]))
    assert all(partition_for(str(n).encode(), 6) in homes for n in skipped)  # none passed over was free
    with pytest.raises(ValueError, match="at least 7 partitions"):
        numbers_on_distinct_partitions("106540352242922", 7, 6)
