"""The ingest's AsyncAPI document: generated from the broker `pipeline ingest` runs, committed as
docs/asyncapi-ingest.yaml, every topic with its payload schema and key."""

from __future__ import annotations

from pathlib import Path

import yaml

from pipeline.config import KafkaSettings
from pipeline.ingest import asyncapi


def test_the_committed_document_is_current() -> None:
    assert asyncapi.main(["--check"]) == 0, "run `python -m pipeline.ingest.asyncapi`"


def test_every_topic_the_ingest_touches_has_its_payload_and_key() -> None:
    doc = yaml.safe_load(asyncapi.yaml_text(KafkaSettings(topic_prefix="prod.")))
    assert doc["asyncapi"].startswith("3.")
    received = {c["address"] for name, c in doc["channels"].items() if ":" in name}
    written = {c["address"] for name, c in doc["channels"].items() if ":" not in name}
    assert received == {"prod.webhooks.raw", "prod.status.updates"}
    assert written == {"prod.status.updates", "prod.inbound.messages", "prod.dead-letters", "prod.status.events",
                       "prod.status.state"}
    schemas = doc["components"]["schemas"]
    payloads = {name: message["payload"]["$ref"].rsplit("/", 1)[1]
                for name, message in doc["components"]["messages"].items()}
    assert payloads["prod.webhooks.raw:delivery-ingest-normaliser:SubscribeMessage"] == "WebhookBody"
    assert payloads["prod.status.updates:delivery-ingest-dedupe:SubscribeMessage"] == "StatusEvent"
    assert {payloads[name] for name in payloads if name.startswith("prod.status.events")} == {"StatusEvent"}
    assert {payloads[name] for name in payloads if name.startswith("prod.status.state")} == {"StateRecord"}
    assert set(payloads.values()) <= set(schemas), "every payload's schema is in the document"
    assert "EmptyPayload" not in schemas
    keys = {name.split(":", 1)[0]: m["bindings"]["kafka"]["key"]["description"]
            for name, m in doc["components"]["messages"].items()}
    assert keys["prod.status.events"] == "wamid"
    assert keys["prod.inbound.messages"] == "user wa_id"


def test_a_stale_file_is_reported_then_rewritten(tmp_path: Path) -> None:
    stale = tmp_path / "asyncapi-ingest.yaml"
    stale.write_text("asyncapi: 3.0.0\n")
    assert asyncapi.main([str(stale), "--check"]) == 1
    assert asyncapi.main([str(stale)]) == 0
    assert asyncapi.main([str(stale), "--check"]) == 0
