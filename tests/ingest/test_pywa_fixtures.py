"""PyWa's 74 webhook fixtures, signed and posted to a running ingest: each ends somewhere we can count.

The home of each webhook `field` is stated here independently of the ingest's code (docs/ingest.md has
the same table): `messages` → status.updates / inbound.messages, the account fields → account.events,
echoes, calls, app sync → a counted skip. The test totals what each fixture should produce and checks
the topics, the dead letters and the skip counter add up to exactly that: nothing dropped silently.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.contracts import AccountEvent, InboundMessage, StatusEvent
from tests.ingest.conftest import Running, end_offsets, eventually, read_topic

pytestmark = pytest.mark.kafka

PYWA = Path(__file__).resolve().parents[1] / "fixtures" / "pywa"
ACCOUNT = {
    "account_update", "message_template_status_update", "message_template_quality_update",
    "template_category_update", "message_template_components_update", "user_preferences",
}
SKIPPED = {"smb_message_echoes": "echo", "calls": "calls"}


def pywa_cases() -> list[tuple[str, dict[str, Any]]]:
    assert PYWA.is_dir(), f"PyWa's fixtures are missing from the repository: {PYWA}"
    cases = [
        (f"{path.stem}:{name}", body)
        for path in sorted(PYWA.glob("*.json"))
        for name, body in json.loads(path.read_text()).items()
    ]
    assert len(cases) == 74, "PyWa's fixture set changed: update this test and tests/fixtures/pywa/README.md"
    return cases


def expected(cases: list[tuple[str, dict[str, Any]]]) -> Counter[str]:
    """What the fixtures should become, counted by hand from Meta's shapes."""
    want: Counter[str] = Counter()
    for _, body in cases:
        for entry in body["entry"]:
            for change in entry["changes"]:
                field, content = change["field"], change["value"]
                if field == "messages":
                    want["status"] += len(content.get("statuses", []))
                    want["inbound"] += len(content.get("messages", []))
                elif field in ACCOUNT:
                    want["account"] += len(content["user_preferences"]) if field == "user_preferences" else 1
                else:
                    want[f"skip:{field}:{SKIPPED[field]}"] += 1
    return want


async def test_every_pywa_fixture_ends_as_a_record_a_dead_letter_or_a_counted_skip(ingest: Running) -> None:
    cases = pywa_cases()
    want = expected(cases)
    topics = ingest.topics
    starts = {t: await end_offsets(ingest.settings, t) for t in (
        topics.status_updates, topics.inbound_messages, topics.account_events, topics.dead_letters)}
    skips_before = {k: await _skips(ingest, k) for k in want if k.startswith("skip:")}
    restricted = await ingest.metric("delivery_account_events_total", kind="account", event="ACCOUNT_RESTRICTION")

    for name, body in cases:
        response = await ingest.post(orjson.dumps(body))
        assert response.status_code == 200, name

    async def counted(topic: str, count: int) -> list[Any]:
        async def check() -> list[Any] | None:
            found = await read_topic(ingest.settings, topic, starts[topic])
            return found if len(found) >= count else None

        found: list[Any] = await eventually(check, timeout=60)
        return found

    statuses = [StatusEvent.model_validate_json(r.value) for r in await counted(topics.status_updates, want["status"])]
    inbound = [InboundMessage.model_validate_json(r.value)
               for r in await counted(topics.inbound_messages, want["inbound"])]
    account = [AccountEvent.model_validate_json(r.value)
               for r in await counted(topics.account_events, want["account"])]
    for key in skips_before:
        await eventually(lambda key=key: _skips_reached(ingest, key, skips_before[key] + want[key]), timeout=60)

    got = Counter(status=len(statuses), inbound=len(inbound), account=len(account))
    for key in skips_before:
        got[key] = int(await _skips(ingest, key) - skips_before[key])
    dead = await read_topic(ingest.settings, topics.dead_letters, starts[topics.dead_letters])
    print(f"\nPyWa fixtures: {len(cases)} posted → {dict(got)}, dead letters {len(dead)}")
    assert got == want
    assert dead == []  # every PyWa fixture is a shape Meta sends: none may be refused

    # What PyWa's fixtures assert about meaning, checked on our records.
    kinds = Counter(m.type for m in inbound)
    assert kinds["revoke"] == 1
    assert kinds["edit"] == 1
    assert {e.recipient_user_id for e in statuses} >= {"US.13491208655302741918"}
    assert {(e.kind.value, e.event) for e in account} >= {
        ("account", "ACCOUNT_RESTRICTION"), ("template_status", "REJECTED"), ("template_quality", "YELLOW"),
        ("user_preference", "RESUME"),
    }
    assert await ingest.metric(
        "delivery_account_events_total", kind="account", event="ACCOUNT_RESTRICTION") == restricted + 1
    flow = next(m for m in inbound if m.raw.get("interactive", {}).get("type") == "nfm_reply" and m.reply_id)
    assert flow.reply_id == "AQAAAAACS5FpgQ_cAAAAAD0QI3s."
    assert flow.text is None  # not Meta's canned "Sent"


async def _skips(ingest: Running, key: str) -> float:
    _, field, reason = key.split(":")
    return await ingest.metric("delivery_webhook_skipped_total", field=field, reason=reason)


async def _skips_reached(ingest: Running, key: str, target: float) -> bool:
    return await _skips(ingest, key) >= target
