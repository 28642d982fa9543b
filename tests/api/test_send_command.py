"""`pipeline send`: one message, or a CSV through the batch route with a summary of rejected lines."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.api.send_command import read_rows, send_command
from tests.api.conftest import PHONE_NUMBER_ID, RunningApi, read_topic


def run(api: RunningApi, **options: Any) -> Any:
    arguments: dict[str, Any] = {"to": None, "text": None, "file": None, "template": None, "language": "en_US",
                                 "phone_number_id": None, "api_url": api.base_url, "api_key": "dev-key"}
    # The command is synchronous and the API runs on this loop: run the command in a thread.
    return asyncio.to_thread(send_command, **{**arguments, **options})


async def test_single_text_message(api: RunningApi, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run(api, to="+16505551234", text="Your order shipped") == 0
    assert capsys.readouterr().out.startswith("accepted req_")
    [record] = await read_topic(api.service.settings, api.topics.send_requests, at_least=1)
    value = orjson.loads(record.value)
    assert value["message"] == {"type": "text", "text": {"body": "Your order shipped", "preview_url": False}}


async def test_single_rejection_explains_and_fails(api: RunningApi, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run(api, to="12", text="hi") == 1
    assert "to: " in capsys.readouterr().err
    assert await run(api, to="+16505551234", text="hi", api_key="wrong-key-1") == 1
    assert await run(api, to="+16505551234") == 2  # neither --text nor --template


async def test_csv_bulk_reports_rejected_lines(
    api: RunningApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = ["to,name,order", "+16505551234,Ana,A-1", "+16505551235,,A-2", "not-a-number,Bo,A-3", ",Cy,A-4",
            '+447700900123,"Dee, the\nsecond",A-5', "+16505551236,Ed"]
    path = tmp_path / "recipients.csv"
    path.write_text("\n".join(rows) + "\n")
    code = await run(api, file=path, template="order_update", phone_number_id=PHONE_NUMBER_ID)
    out = capsys.readouterr().out
    assert code == 1
    assert "accepted: 2   rejected: 4" in out
    # line 3: empty parameter (Meta rejects empty text); 4: bad number; 5: no `to`; 8: short row
    rejected = [row for row in out.splitlines() if row.startswith("line ")]
    assert [row.split(":")[0] for row in rejected] == ["line 3", "line 4", "line 5", "line 8"]
    for row, reason in zip(rejected, ["parameters[0].text", "E.164", "to: missing", "columns"], strict=True):
        assert reason in row, row

    records = await read_topic(api.service.settings, api.topics.send_requests, at_least=2)
    templates = [orjson.loads(r.value)["message"]["template"] for r in records]
    params = sorted([p["text"] for p in t["components"][0]["parameters"]] for t in templates)
    assert params == [["Ana", "A-1"], ["Dee, the\nsecond", "A-5"]]
    assert {t["name"] for t in templates} == {"order_update"}


async def test_csv_rows_name_their_recipient_by_number_or_by_bsuid(
    api: RunningApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = ["to,recipient_user_id,name", "+16505551234,,Ana", ",US.13491208655302741918,Bo",
            "+16505551235,US.13491208655302741919,Cy", ",,Dee"]
    path = tmp_path / "recipients.csv"
    path.write_text("\n".join(rows) + "\n")
    code = await run(api, file=path, template="order_update", phone_number_id=PHONE_NUMBER_ID)
    out = capsys.readouterr().out
    assert code == 1
    assert "accepted: 2   rejected: 2" in out
    rejected = [row for row in out.splitlines() if row.startswith("line ")]
    assert [row.split(":")[0] for row in rejected] == ["line 4", "line 5"]
    assert "not both" in rejected[0]
    assert "missing" in rejected[1]
    records = await read_topic(api.service.settings, api.topics.send_requests, at_least=2)
    recipients = {(v.get("to"), v.get("recipient_user_id")) for v in map(orjson.loads, (r.value for r in records))}
    assert recipients == {(None, "US.13491208655302741918"), ("+16505551234", None)}


def test_numbered_param_columns_win_and_a_missing_to_column_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("param2,to,note,param1\nsecond,+16505551234,ignored,first\n")
    [row] = list(read_rows(path, "t", "en_US", None))
    assert row.item is not None
    assert row.line == 2
    assert [p["text"] for p in row.item["message"]["template"]["components"][0]["parameters"]] == ["first", "second"]

    path.write_text("phone,name\n+16505551234,Ana\n")
    with pytest.raises(ValueError, match="no `to` or `recipient_user_id` column"):
        list(read_rows(path, "t", "en_US", None))


async def test_csv_without_template_is_a_usage_error(api: RunningApi, tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("to\n+16505551234\n")
    assert await run(api, file=path) == 2
    assert await run(api, file=tmp_path / "missing.csv", template="t") == 2


async def test_read_marks_a_reply_read_through_the_api(api: RunningApi, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run(api, to="+16505551234", read="wamid.HBgLREPLY", typing=True) == 0
    assert capsys.readouterr().out.startswith("accepted req_")
    [record] = await read_topic(api.service.settings, api.topics.send_requests, at_least=1)
    value = orjson.loads(record.value)
    assert value["message"] == {"type": "read", "message_id": "wamid.HBgLREPLY", "typing_indicator": True}
    assert await run(api, to="+16505551234", read="wamid.X", text="hi") == 2  # one of --text/--template/--read


async def test_api_errors_are_printed_verbatim(api: RunningApi, capsys: pytest.CaptureFixture[str]) -> None:
    """No markup parsing: the brackets of a pattern in the API's message survive."""
    assert await run(api, to="+16505551234", template="Bad-Name") == 1
    assert "^[a-z0-9_]+$" in capsys.readouterr().err
