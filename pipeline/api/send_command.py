"""`pipeline send`: one message, or a CSV of recipients through the batch route.

    pipeline send --to +16505551234 --text "Your order shipped"
    pipeline send --file recipients.csv --template order_update --language en_US
    pipeline send --to +16505551234 --read wamid.HBgL… --typing   # mark a reply read, show typing

The CSV needs a `to` column; template body parameters come from columns `param1`, `param2`, … when
present, otherwise from every other column in file order. Each chunk of rows is posted with its own
Idempotency-Key, so a chunk retried after a timeout, a 503 or a 504 is not sent twice.
"""

from __future__ import annotations

import csv
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

CHUNK = 500
ATTEMPTS = 5
_PARAM_COLUMN = re.compile(r"^param(\d+)$")

OK, REJECTED, USAGE = 0, 1, 2


@dataclass
class Row:
    line: int
    item: dict[str, Any] | None
    problem: str | None = None


@dataclass
class Summary:
    accepted: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)


class SendError(Exception):
    """The API refused the whole request (bad key, unreachable, …): nothing more can be sent."""


def send_command(
    *,
    to: str | None,
    text: str | None,
    file: Path | None,
    template: str | None,
    language: str,
    phone_number_id: str | None,
    api_url: str,
    api_key: str,
    read: str | None = None,
    typing: bool = False,
) -> int:
    console = Console(stderr=True)
    out = Console()
    if file is not None:
        if template is None or to is not None or text is not None:
            console.print("pipeline send: --file needs --template (and takes no --to or --text)")
            return USAGE
        try:
            rows = list(read_rows(file, template, language, phone_number_id))
        except (OSError, ValueError, csv.Error) as exc:
            console.print(f"pipeline send: cannot read {file}: {exc}")
            return USAGE
        with httpx.Client(base_url=api_url, headers=_auth(api_key), timeout=60.0) as client:
            try:
                summary = send_rows(client, rows, console)
            except SendError as exc:
                console.print(f"pipeline send: {exc}")
                return REJECTED
        report(summary, out)
        return OK if not summary.rejected else REJECTED

    chosen = [option for option in (text, template, read) if option is not None]
    if to is None or len(chosen) != 1:
        console.print(
            "pipeline send: give --to with one of --text, --template or --read, or --file with --template"
        )
        return USAGE
    if read is not None:
        message = read_message(read, typing)
    elif text is not None:
        message = text_message(text)
    else:
        message = template_message(template or "", language, [])
    item: dict[str, Any] = {"to": to, "message": message}
    if phone_number_id:
        item["phone_number_id"] = phone_number_id
    with httpx.Client(base_url=api_url, headers=_auth(api_key), timeout=30.0) as client:
        try:
            response = _post(client, "/v1/messages", item, idempotency_key=f"cli-{uuid.uuid4().hex}")
        except SendError as exc:
            console.print(f"pipeline send: {exc}")
            return REJECTED
    body = response.json()
    if response.status_code == 202:
        out.print(f"accepted {body['request_id']}")
        return OK
    console.print(f"rejected ({response.status_code}): {_reasons(body.get('error', {}))}")
    return REJECTED


# --- building requests ---------------------------------------------------------------------------


def text_message(text: str) -> dict[str, Any]:
    return {"type": "text", "text": {"body": text}}


def read_message(wamid: str, typing: bool) -> dict[str, Any]:
    return {"type": "read", "message_id": wamid, "typing_indicator": typing}


def template_message(name: str, language: str, params: list[str]) -> dict[str, Any]:
    template: dict[str, Any] = {"name": name, "language": {"code": language}}
    if params:
        template["components"] = [{"type": "body", "parameters": [{"type": "text", "text": p} for p in params]}]
    return {"type": "template", "template": template}


def read_rows(path: Path, template: str, language: str, phone_number_id: str | None) -> Iterator[Row]:
    """One Row per CSV record, with the line it starts on (quoted fields may span lines)."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [name.strip() for name in next(reader, [])]
        if "to" not in header:
            raise ValueError(f"no `to` column (columns: {', '.join(header) or 'none'})")
        to_index = header.index("to")
        numbered = sorted((int(m.group(1)), i) for i, name in enumerate(header) if (m := _PARAM_COLUMN.match(name)))
        param_indexes = [i for _, i in numbered] if numbered else [i for i in range(len(header)) if i != to_index]
        while True:
            start = reader.line_num + 1
            record = next(reader, None)
            if record is None:
                return
            if not any(cell.strip() for cell in record):
                continue
            if len(record) != len(header):
                yield Row(start, None, f"has {len(record)} columns, the header has {len(header)}")
                continue
            to = record[to_index].strip()
            if not to:
                yield Row(start, None, "to: missing")
                continue
            params = [record[i] for i in param_indexes]
            item: dict[str, Any] = {"to": to, "message": template_message(template, language, params)}
            if phone_number_id:
                item["phone_number_id"] = phone_number_id
            yield Row(start, item)


# --- sending -------------------------------------------------------------------------------------


def send_rows(client: httpx.Client, rows: list[Row], console: Console) -> Summary:
    summary = Summary()
    run = uuid.uuid4().hex[:16]
    progress = Progress(
        TextColumn("sending"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    )
    with progress:
        task = progress.add_task("rows", total=len(rows))
        for number, chunk in enumerate(_chunks(rows, CHUNK)):
            summary.rejected.extend((row.line, row.problem or "") for row in chunk if row.item is None)
            sendable = [row for row in chunk if row.item is not None]
            if sendable:
                response = _post(client, "/v1/messages:batch", {"messages": [r.item for r in sendable]},
                                 idempotency_key=f"csv-{run}-{number}")
                _tally(response, sendable, summary)
            progress.advance(task, len(chunk))
    summary.rejected.sort()
    return summary


def _tally(response: httpx.Response, rows: list[Row], summary: Summary) -> None:
    body = response.json()
    results = body.get("results") if isinstance(body, dict) else None
    if not isinstance(results, list):  # the whole batch was refused (e.g. 413)
        reason = _reasons(body.get("error", {})) if isinstance(body, dict) else response.text
        summary.rejected.extend((row.line, f"{response.status_code}: {reason}") for row in rows)
        return
    for row, result in zip(rows, results, strict=True):
        if result.get("status") == 202:
            summary.accepted += 1
        else:
            summary.rejected.append((row.line, f"{result.get('status')}: {_reasons(result.get('error', {}))}"))


def _post(client: httpx.Client, path: str, body: Any, idempotency_key: str) -> httpx.Response:
    """POST, retrying what is safe to retry (same Idempotency-Key): connection errors, 409, 503 and 504."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            response = client.post(path, json=body, headers={"Idempotency-Key": idempotency_key})
        except httpx.TransportError as exc:
            if attempt == ATTEMPTS:
                raise SendError(f"cannot reach the API at {client.base_url}: {exc}") from None
            time.sleep(min(2**attempt, 10))
            continue
        if response.status_code == 401:
            raise SendError("the API refused the key (401): set --api-key or PIPELINE_API_KEY")
        if response.status_code in (409, 503, 504) and attempt < ATTEMPTS:
            time.sleep(min(float(response.headers.get("retry-after", 2)), 30))
            continue
        return response
    raise AssertionError("unreachable")


def _chunks(rows: list[Row], size: int) -> Iterator[list[Row]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def _reasons(error: dict[str, Any]) -> str:
    fields = error.get("fields") or []
    if fields:
        return "; ".join(f"{f.get('field')}: {f.get('message')}" for f in fields)
    return str(error.get("message", "unknown error"))


def _auth(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"}


# --- reporting -----------------------------------------------------------------------------------


def report(summary: Summary, console: Console) -> None:
    """The totals, then one plain line per rejected CSV line (easy to grep or fix in the file)."""
    console.print(f"accepted: {summary.accepted}   rejected: {len(summary.rejected)}", highlight=False)
    for line, reason in summary.rejected:
        console.print(f"line {line}: {reason}", highlight=False, markup=False, soft_wrap=True)
