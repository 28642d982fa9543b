"""Webhook fuzzing: validly signed hostile bodies (shape, depth, size) never get a 5xx nor stop the ingest.

Hypothesis builds the bodies (fixed seed, bounded count, so a run is repeatable and takes well under a
minute); each is signed with the app secret, as an attacker holding it or a buggy sender would, and
posted over HTTP. Afterwards a good webhook behind the fuzz in *every* `webhooks.raw` partition must
come out as a status event: a body that wedged its partition (issue 13) would hold that one back.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import httpx
import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, seed, settings

from tests.ingest.conftest import (
    Running,
    end_offsets,
    eventually,
    new_wamid,
    read_topic,
    signed,
    status,
    value,
    webhook,
)

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.slow,
    # The ingest runs in this process: its Kafka client draws from `random` while Hypothesis generates.
    pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning"),
]

EXAMPLES = 60
FIELDS = ["messages", "account_update", "message_template_status_update", "user_preferences", "calls",
          "smb_message_echoes", "history", "something_new"]

_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40)
_json = st.recursive(_leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.sampled_from(["id", "status", "timestamp", "from", "type", "text", "body", "recipient_id", "pricing",
                     "event", "value", "wa_id", "user_id", "errors", "x"]) | st.text(max_size=8),
    inner, max_size=5), max_leaves=25)


def _almost_a_status() -> st.SearchStrategy[dict[str, Any]]:
    good = status("wamid.fuzz", "sent")
    return st.dictionaries(st.sampled_from([*good, "conversation", "errors", "recipient_user_id"]),
                           _json, max_size=8).map(lambda broken: {**good, **broken})


def _almost_a_message() -> st.SearchStrategy[dict[str, Any]]:
    good = {"from": "16505551234", "id": "wamid.in.fuzz", "timestamp": "1764000100", "type": "text",
            "text": {"body": "hi"}}
    return st.dictionaries(st.sampled_from([*good, "context", "interactive", "edit", "from_user_id"]),
                           _json, max_size=6).map(lambda broken: {**good, **broken})


@st.composite
def shapes(draw: st.DrawFn) -> bytes:
    content = draw(st.dictionaries(st.sampled_from(["statuses", "messages", "contacts", "metadata", "errors",
                                                    "event", "user_preferences"]), _json, max_size=4))
    content.setdefault("statuses", draw(st.lists(_almost_a_status(), max_size=3)))
    content.setdefault("messages", draw(st.lists(_almost_a_message(), max_size=3)))
    entry = {"id": draw(_json), "changes": [{"field": draw(st.sampled_from(FIELDS)), "value": content}]}
    return json.dumps({"object": "whatsapp_business_account", "entry": draw(st.sampled_from([[entry], entry]))},
                      default=str).encode()


@st.composite
def depths(draw: st.DrawFn) -> bytes:
    # Built as text: no JSON library writes 1,500 levels, a hostile sender's string concatenation does.
    depth = draw(st.integers(min_value=60, max_value=1500))
    opener, closer = draw(st.sampled_from([('{"n":', "}"), ("[", "]")]))
    nested = opener * depth + "1" + closer * depth
    where = draw(st.sampled_from(["pricing", "conversation", "errors"]))
    prefix = ('{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":'
              '{"metadata":{"phone_number_id":"106540352242922"},"statuses":[{"id":"wamid.deep","status":"sent",'
              '"timestamp":"1764000000","' + where + '":')
    return (prefix + nested + "}]}}]}]}").encode()


@st.composite
def sizes(draw: st.DrawFn) -> bytes:
    size = draw(st.sampled_from([70_000, 300_000, 1_100_000, 1_500_000, 2_800_000]))
    char = draw(st.sampled_from(["9", "é", "😀"]))
    big = char * (size // len(char.encode()))
    where = draw(st.sampled_from(["recipient_id", "id", "biz_opaque_callback_data", "phone_number_id", "text",
                                  "field", "waba_id"]))
    wamid = f"wamid.{draw(st.uuids()).hex}"
    if where == "text":
        return webhook(value(messages=[{"from": "16505551234", "id": wamid, "timestamp": "1764000100",
                                        "type": "text", "text": {"body": big}}]))
    if where == "phone_number_id":
        return webhook(value([status(wamid, "sent")], number=big))
    if where == "field":
        return webhook(value(), field=big)
    if where == "waba_id":
        return json.dumps({"object": "whatsapp_business_account", "entry": [{"id": big, "changes": []}]}).encode()
    return webhook(value([status(wamid, "sent", **{where: big})]))


hostile = st.one_of(shapes(), depths(), sizes(), st.binary(max_size=2000))


def _fuzz(base_url: str) -> Counter[int]:
    answers: Counter[int] = Counter()
    with httpx.Client(base_url=base_url, timeout=60) as client:

        @seed(20261203)
        @given(body=hostile)
        @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def post(body: bytes) -> None:
            answer = client.post("/webhooks/whatsapp", content=body, headers=signed(body))
            answers[answer.status_code] += 1
            assert answer.status_code < 500, answer.text

        post()
    return answers


async def test_signed_hostile_webhooks_never_5xx_and_every_partition_keeps_flowing(ingest: Running) -> None:
    dead_before = await ingest.metric("delivery_dead_letters_total", stage="ingest")
    answers = await asyncio.to_thread(_fuzz, str(ingest.http.base_url))
    print(f"\nwebhook fuzz: {sum(answers.values())} signed hostile bodies → {dict(answers)}")
    assert not [code for code in answers if code >= 500]
    assert answers[200] >= EXAMPLES // 2  # most were stored and judged downstream, not refused at the door

    # A good webhook behind the fuzz in every partition of webhooks.raw must come out.
    fuzz_end = await end_offsets(ingest.settings, ingest.topics.webhooks_raw)
    good: dict[int, str] = {}
    for _ in range(60):
        wamid = new_wamid()
        assert (await ingest.post(webhook(value([status(wamid, "sent")])))).status_code == 200
        for record in await read_topic(ingest.settings, ingest.topics.webhooks_raw, fuzz_end):
            if wamid.encode() in record.value:
                good.setdefault(record.partition, wamid)
        if len(good) == ingest.settings.kafka.partitions:
            break
    assert len(good) == ingest.settings.kafka.partitions, f"good webhooks reached partitions {sorted(good)}"
    await ingest.wait_events(set(good.values()), count=len(good), timeout=90)
    assert await ingest.metric("delivery_dead_letters_total", stage="ingest") > dead_before

    async def ready() -> bool:
        return (await ingest.http.get("/readyz")).status_code == 200

    assert await eventually(ready)
