from __future__ import annotations

from pathlib import Path

from pipeline.config import KafkaSettings
from pipeline.topics import CATALOG, TopicCatalog, new_topics

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
