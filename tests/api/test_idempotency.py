"""Idempotency keys across retries, replicas and restarts: one message on the topic per key."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson

from pipeline.config import Settings
from pipeline.topics import TopicCatalog
from tests.api.conftest import RunningApi, read_topic, running_api, text_request, with_api


async def test_the_same_key_twice_gives_the_original_answer_and_one_message(api: RunningApi) -> None:
    headers = {**api.auth, "Idempotency-Key": "order-17-shipped"}
    first = await api.client.post("/v1/messages", json=text_request(), headers=headers)
    second = await api.client.post("/v1/messages", json=text_request(), headers=headers)
    assert first.status_code == second.status_code == 202
    assert second.json()["request_id"] == first.json()["request_id"]
    assert second.json()["accepted_at"] == first.json()["accepted_at"]
    assert second.json()["replayed"] is True
    assert second.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers

    # The key in the body means the same; a formatting difference in the number is the same request.
    third = await api.client.post(
        "/v1/messages", json=text_request(to="+1 650-555-1234", idempotency_key="order-17-shipped"), headers=api.auth
    )
    assert third.json()["request_id"] == first.json()["request_id"]

    records = await read_topic(api.service.settings, api.topics.send_requests, at_least=1)
    assert len(records) == 1
    assert orjson.loads(records[0].value)["idempotency_key"] == "order-17-shipped"
    metrics = (await api.client.get("/metrics")).text
    assert 'delivery_api_requests_total{message_type="text",outcome="duplicate"}' in metrics


async def test_a_key_reused_for_another_request_is_rejected(api: RunningApi) -> None:
    headers = {**api.auth, "Idempotency-Key": "k-1"}
    assert (await api.client.post("/v1/messages", json=text_request("a"), headers=headers)).status_code == 202
    reused = await api.client.post("/v1/messages", json=text_request("b"), headers=headers)
    assert reused.status_code == 422
    [problem] = reused.json()["error"]["fields"]
    assert (problem["field"], problem["rule"]) == ("idempotency_key", "idempotency_key_reused")
    # Keys are scoped by business number: another number may use the same key.
    other = await api.client.post("/v1/messages", json=text_request("b", phone_number_id="200000000000001"),
                                  headers=headers)
    assert other.status_code == 202
    assert len(await read_topic(api.service.settings, api.topics.send_requests, at_least=2)) == 2


async def test_header_and_field_must_agree(api: RunningApi) -> None:
    response = await api.client.post("/v1/messages", json=text_request(idempotency_key="a"),
                                     headers={**api.auth, "Idempotency-Key": "b"})
    assert response.status_code == 422
    assert response.json()["error"]["fields"][0]["rule"] == "idempotency_key_mismatch"


async def test_concurrent_retries_on_two_replicas_publish_once(api_settings: Settings, topics: TopicCatalog) -> None:
    async with running_api(api_settings) as one, running_api(api_settings) as two:
        headers = {**one.auth, "Idempotency-Key": "race"}
        answers = await asyncio.gather(
            *(replica.client.post("/v1/messages", json=text_request("race"), headers=headers)
              for replica in (one, two, one, two, two))
        )
        # Every caller gets the winner's answer, or is told the winner is still in flight.
        accepted = [a.json()["request_id"] for a in answers if a.status_code == 202]
        assert {a.status_code for a in answers} <= {202, 409}
        assert len(set(accepted)) == 1
        assert accepted
        records = await read_topic(api_settings, topics.send_requests, at_least=1)
        assert [orjson.loads(r.value)["request_id"] for r in records] == accepted[:1]
        late = await two.client.post("/v1/messages", json=text_request("race"), headers=headers)
        assert late.json()["request_id"] == accepted[0]


async def test_keys_survive_a_restart(api_settings: Settings, topics: TopicCatalog) -> None:
    headers = {"Authorization": "Bearer dev-key", "Idempotency-Key": "before-restart"}
    async with running_api(api_settings) as before:
        first = await before.client.post("/v1/messages", json=text_request(), headers=headers)
        assert first.status_code == 202
    async with running_api(api_settings) as after:  # a new process would read the same records
        assert len(after.service.idempotency) >= 1
        again = await after.client.post("/v1/messages", json=text_request(), headers=headers)
        assert again.status_code == 202
        assert again.json()["request_id"] == first.json()["request_id"]
    assert len(await read_topic(api_settings, topics.send_requests, at_least=1)) == 1


async def test_a_batch_key_covers_each_item(api: RunningApi) -> None:
    batch = {"messages": [text_request("a"), text_request(to="bad"), text_request("c", idempotency_key="own")]}
    headers = {**api.auth, "Idempotency-Key": "campaign-9"}
    first = (await api.client.post("/v1/messages:batch", json=batch, headers=headers)).json()
    second = (await api.client.post("/v1/messages:batch", json=batch, headers=headers)).json()
    assert [r["status"] for r in first["results"]] == [202, 422, 202]
    assert [r.get("request_id") for r in second["results"]] == [r.get("request_id") for r in first["results"]]
    assert [r.get("replayed") for r in second["results"]] == [True, None, True]
    records = await read_topic(api.service.settings, api.topics.send_requests, at_least=2)
    assert sorted(orjson.loads(r.value)["idempotency_key"] for r in records) == ["campaign-9:0", "own"]

    twice = {"messages": [text_request("x", idempotency_key="dup"), text_request("y", idempotency_key="dup")]}
    result = (await api.client.post("/v1/messages:batch", json=twice, headers=api.auth)).json()
    assert [r["status"] for r in result["results"]] == [202, 422]
    assert result["results"][1]["error"]["fields"][0]["rule"] == "duplicate_in_batch"


async def test_a_caller_chosen_request_id_names_one_message(api: RunningApi) -> None:
    first = await api.client.post("/v1/messages", json=text_request("a", request_id="order-5"), headers=api.auth)
    assert first.status_code == 202
    # The same message again is replayed like an idempotency key: same answer, nothing published.
    again = await api.client.post("/v1/messages", json=text_request("a", request_id="order-5"), headers=api.auth)
    assert again.status_code == 202
    assert again.json() == {**first.json(), "replayed": True}
    # A different message under the same id is refused, saying so; from another number too.
    other = await api.client.post("/v1/messages", json=text_request("b", request_id="order-5"), headers=api.auth)
    assert other.status_code == 409, other.text
    assert other.json()["error"]["code"] == "request_id_in_use"
    assert [(f["field"], f["rule"]) for f in other.json()["error"]["fields"]] == [("request_id", "request_id_in_use")]
    elsewhere = await api.client.post(
        "/v1/messages", json=text_request("a", request_id="order-5", phone_number_id="200000000000001"),
        headers=api.auth)
    assert elsewhere.status_code == 409
    # With a fresh idempotency key the id still decides; the key then replays the same answer.
    keyed = {**api.auth, "Idempotency-Key": "fresh"}
    assert (await api.client.post("/v1/messages", json=text_request("b", request_id="order-5"),
                                  headers=keyed)).status_code == 409
    # ... and the refused claim left the key free for another message.
    assert (await api.client.post("/v1/messages", json=text_request("c"), headers=keyed)).status_code == 202

    batch = {"messages": [text_request("x", request_id="twice"), text_request("y", request_id="twice")]}
    result = (await api.client.post("/v1/messages:batch", json=batch, headers=api.auth)).json()
    assert [r["status"] for r in result["results"]] == [202, 422]
    assert result["results"][1]["error"]["fields"][0]["field"] == "request_id"

    records = await read_topic(api.service.settings, api.topics.send_requests, at_least=3)
    ids = [orjson.loads(r.value)["request_id"] for r in records]
    assert ids.count("order-5") == 1
    assert ids.count("twice") == 1


async def test_a_request_id_is_unique_across_replicas(api_settings: Settings, topics: TopicCatalog) -> None:
    async with running_api(api_settings) as one, running_api(api_settings) as two:
        answers = await asyncio.gather(
            *(replica.client.post("/v1/messages", json=text_request(body, request_id="contended"), headers=one.auth)
              for replica, body in ((one, "a"), (two, "b"), (one, "c"), (two, "d")))
        )
        assert [a.status_code for a in answers].count(202) == 1
        assert {a.status_code for a in answers} <= {202, 409}
        records = await read_topic(api_settings, topics.send_requests, at_least=1)
        assert [orjson.loads(r.value)["request_id"] for r in records] == ["contended"]


async def test_a_restart_on_the_same_disk_reads_only_the_tail(
    api_settings: Settings, topics: TopicCatalog, tmp_path: Path
) -> None:
    """Issue 22: answers live on disk (API_STATE_DIR), memory holds only claims in flight, and a
    replica restarting with its store reads no record it already has."""
    # The publish timeout sets the claim TTL the test sleeps out below (3x + 5 s). 0.3 s was too short
    # for the first publishes to a new topic on a loaded machine: one answered 503.
    settings = with_api(api_settings, state_dir=str(tmp_path / "state"), publish_timeout_seconds=2.0)
    headers = [{"Authorization": "Bearer dev-key", "Idempotency-Key": f"disk-{n}"} for n in range(30)]
    async with running_api(settings) as before:
        first = [await before.client.post("/v1/messages", json=text_request(f"m{n}"), headers=h)
                 for n, h in enumerate(headers)]
        assert {a.status_code for a in first} == {202}
        await asyncio.sleep(1.5)  # the tail has read every `accepted` record
        assert len(before.service.idempotency) == 30
        assert before.service.idempotency.prune() == 30  # nothing in flight: memory is empty again
        assert before.service.idempotency.in_memory == 0
        ends = dict(before.service.idempotency._positions)
    await asyncio.sleep(before.service.idempotency.claim_ttl_ms / 1000 + 1)  # no claim may still be live

    async with running_api(settings) as after:
        idem = after.service.idempotency
        assert idem.started_at == ends, "a restart on the same disk starts at its saved offsets"
        assert len(idem) == 30
        again = [await after.client.post("/v1/messages", json=text_request(f"m{n}"), headers=h)
                 for n, h in enumerate(headers)]
        assert [a.json()["request_id"] for a in again] == [a.json()["request_id"] for a in first]
        assert all(a.json()["replayed"] for a in again)
    assert len(await read_topic(api_settings, topics.send_requests, at_least=30)) == 30
