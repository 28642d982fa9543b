"""Logs of the API carry no wamid, phone number or message text (issue 13, finding 8, the API's part).

A wamid is base64 of a record holding the recipient's number, so it is personal data like the number
itself. Requests carry wamids in `reply_to` and in reactions' `message_id`; whatever happens to the
request (accepted, replayed, refused, in conflict), none of them may reach a log line, even at debug.
"""

from __future__ import annotations

import base64
import logging

import pytest

from pipeline.config import Settings
from pipeline.topics import TopicCatalog
from tests.api.conftest import running_api, text_request

NUMBER = "+16505559876"
WAMID = "wamid." + base64.b64encode(b"\x15\x02" + NUMBER[1:].encode() + b"\x15\x02\x00\x11\x18\x12ABCDEF").decode()


async def test_no_wamid_number_or_text_in_any_log_line(
    api_settings: Settings, topics: TopicCatalog, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = api_settings.model_copy(update={"log": api_settings.log.model_copy(update={"level": "DEBUG"})})
    caplog.set_level(logging.DEBUG)
    reaction = {"to": NUMBER, "message": {"type": "reaction", "reaction": {"message_id": WAMID, "emoji": "👍"}}}
    async with running_api(settings) as api:
        keyed = {**api.auth, "Idempotency-Key": "log-check"}
        answers = [
            await api.client.post("/v1/messages", json=text_request("secret text", to=NUMBER, reply_to=WAMID),
                                  headers=keyed),
            await api.client.post("/v1/messages", json=text_request("secret text", to=NUMBER, reply_to=WAMID),
                                  headers=keyed),  # replayed
            await api.client.post("/v1/messages", json=text_request("other text", to=NUMBER, reply_to=WAMID),
                                  headers=keyed),  # key reused: 422
            await api.client.post("/v1/messages", json=reaction, headers=api.auth),
            await api.client.post("/v1/messages", json={**reaction, "to": "12"}, headers=api.auth),  # 422
            await api.client.post("/v1/messages", json=text_request(to=NUMBER, reply_to=WAMID * 10), headers=api.auth),
            await api.client.post("/v1/messages:batch", json={"messages": [
                text_request("secret text", to=NUMBER, reply_to=WAMID, request_id="log-rid"),
                text_request("secret text 2", to=NUMBER, reply_to=WAMID, request_id="log-rid")]}, headers=api.auth),
        ]
    assert [a.status_code for a in answers] == [202, 202, 422, 202, 422, 422, 202]
    logged = caplog.text + "".join(capsys.readouterr())
    assert "message_accepted" in logged  # debug lines were on
    assert "request_rejected" in logged
    for secret in (WAMID, WAMID[6:], NUMBER, NUMBER[1:], "secret text"):
        assert secret not in logged, f"{secret[:12]}… reached a log line"
