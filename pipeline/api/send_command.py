"""`pipeline send`: one message, or a CSV of recipients through the batch route.

    pipeline send --to +16505551234 --text "Your order shipped"
    pipeline send --file recipients.csv --template order_update --language en_US
    pipeline send --to +16505551234 --read wamid.HBgL… --typing   # mark a reply read, show typing

The CSV names each row's recipient in a `to` column (phone number) or a `recipient_user_id` column
(Meta's business-scoped user id, BSUID), one of the two per row; template body parameters come from
columns `param1`, `param2`, … when present, otherwise from every other column in file order.
Bulk sends are resumable: each row's
idempotency key is derived from the file's content hash and the row's line (`csv-<sha256>-<line>`), so
re-running the same file after Ctrl-C, a crash or a 503 sends no row twice (the API answers the rows it
already took as replays). Rejected rows are written, with their reasons, to `<file>.rejected.csv`.
"""

from __future__ import annotations

import csv
import hashlib
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

# Rows per batch request: few enough that the bar moves steadily and an interrupt loses little
# progress, enough to amortise the HTTP round trip.
CHUNK = 25
ATTEMPTS = 5
_PARAM_COLUMN = re.compile(r"^param(\d+)$")

OK, REJECTED, USAGE, INTERRUPTED = 0, 1, 2, 130


@dataclass
class Row:
    line: int
    item: dict[str, Any] | None
    problem: str | None = None


@dataclass
class Summary:
    accepted: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)
    replayed: int = 0  # accepted by an earlier run of the same file: not sent again
    total: int = 0
    interrupted: bool = False

    @property
    def done(self) -> int:
        return self.accepted + self.replayed + len(self.rejected)


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
    rate: float | None = None,
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
            console.print(f"pipeline send: cannot read {file}: {exc}", markup=False, highlight=False)
            return USAGE
        digest = file_digest(file)
        with httpx.Client(base_url=api_url, headers=_auth(api_key), timeout=_timeout(60.0)) as client:
            summary = Summary(total=len(rows))
            try:
                send_rows(client, rows, console, digest=digest, summary=summary, rate=rate)
            except SendError as exc:
                console.print(f"pipeline send: {exc}", markup=False, highlight=False)
                summary.interrupted = True
            except KeyboardInterrupt:
                summary.interrupted = True
        rejected_file = write_rejected(file, rows, summary)
        report(summary, out, rejected_file)
        if summary.interrupted:
            return INTERRUPTED
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
    with httpx.Client(base_url=api_url, headers=_auth(api_key), timeout=_timeout(30.0)) as client:
        try:
            response = _post(client, "/v1/messages", item, idempotency_key=f"cli-{uuid.uuid4().hex}")
        except SendError as exc:
            console.print(f"pipeline send: {exc}", markup=False, highlight=False)
            return REJECTED
    body = response.json()
    if response.status_code == 202:
        out.print(f"accepted {body['request_id']}")
        return OK
    console.print(f"rejected ({response.status_code}): {_reasons(body.get('error', {}))}", markup=False,
                  highlight=False)
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


# A row's recipient: a phone number, or a BSUID where Meta accepts one (pipeline.contracts.messages).
_RECIPIENT_COLUMNS = ("to", "recipient_user_id")


def read_rows(path: Path, template: str, language: str, phone_number_id: str | None) -> Iterator[Row]:
    """One Row per CSV record, with the line it starts on (quoted fields may span lines)."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [name.strip() for name in next(reader, [])]
        recipients = {name: header.index(name) for name in _RECIPIENT_COLUMNS if name in header}
        if not recipients:
            raise ValueError(f"no `to` or `recipient_user_id` column (columns: {', '.join(header) or 'none'})")
        numbered = sorted((int(m.group(1)), i) for i, name in enumerate(header) if (m := _PARAM_COLUMN.match(name)))
        others = [i for i in range(len(header)) if i not in recipients.values()]
        param_indexes = [i for _, i in numbered] if numbered else others
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
            named = {name: value for name, i in recipients.items() if (value := record[i].strip())}
            if len(named) != 1:
                problem = "missing" if not named else "give one of them, not both"
                yield Row(start, None, f"{' or '.join(recipients)}: {problem}")
                continue
            params = [record[i] for i in param_indexes]
            item: dict[str, Any] = {**named, "message": template_message(template, language, params)}
            if phone_number_id:
                item["phone_number_id"] = phone_number_id
            yield Row(start, item)


# --- sending -------------------------------------------------------------------------------------


def file_digest(path: Path) -> str:
    """The file's identity for idempotency keys: the same bytes give the same keys on every run."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:24]


def row_key(digest: str, line: int) -> str:
    return f"csv-{digest}-{line}"


def send_rows(
    client: httpx.Client, rows: list[Row], console: Console, *, digest: str, summary: Summary | None = None,
    rate: float | None = None,
) -> Summary:
    """Post the rows in chunks, each row with its own idempotency key; `summary` is filled as it goes,
    so an interrupted run still reports what it did. `rate` caps rows per second."""
    summary = summary or Summary(total=len(rows))
    progress = Progress(
        TextColumn("sending"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} rows/s"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=console,
    )
    started = time.monotonic()
    with progress:
        task = progress.add_task("rows", total=len(rows), rate="-")
        for chunk in _chunks(rows, CHUNK):
            summary.rejected.extend((row.line, row.problem or "") for row in chunk if row.item is None)
            sendable = [row for row in chunk if row.item is not None]
            if sendable:
                items = [{**(r.item or {}), "idempotency_key": row_key(digest, r.line)} for r in sendable]
                response = _post(client, "/v1/messages:batch", {"messages": items}, idempotency_key=None)
                _tally(response, sendable, summary)
            elapsed = max(time.monotonic() - started, 1e-6)
            progress.update(task, completed=summary.done, rate=f"{summary.done / elapsed:,.0f}")
            if rate:
                time.sleep(max(0.0, summary.done / rate - (time.monotonic() - started)))
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
        if result.get("status") == 202 and result.get("replayed"):
            summary.replayed += 1
        elif result.get("status") == 202:
            summary.accepted += 1
        else:
            summary.rejected.append((row.line, f"{result.get('status')}: {_reasons(result.get('error', {}))}"))


def _post(client: httpx.Client, path: str, body: Any, idempotency_key: str | None) -> httpx.Response:
    """POST, retrying what is safe to retry (same idempotency keys): 409, 503 and 504, and connection errors
    once the API has answered at least once (an API that never answered is reported at once)."""
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    for attempt in range(1, ATTEMPTS + 1):
        try:
            response = client.post(path, json=body, headers=headers)
        except httpx.ConnectError as exc:
            raise SendError(f"cannot reach the API at {client.base_url}: {exc}") from None
        except httpx.TransportError as exc:
            if attempt == ATTEMPTS:
                raise SendError(f"the API at {client.base_url} did not answer: {exc}") from None
            time.sleep(min(2**attempt, 10))
            continue
        if response.status_code == 401:
            raise SendError("the API refused the key (401): set --api-key or PIPELINE_API_KEY")
        # A 504 may have been written: only a request with an idempotency key can safely ask again.
        retryable = (409, 503, 504) if idempotency_key else (409, 503)
        if response.status_code in retryable and attempt < ATTEMPTS:
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


def write_rejected(file: Path, rows: list[Row], summary: Summary) -> Path | None:
    """`<file>.rejected.csv`: the rejected rows' line, reason and recipient, to fix and re-send."""
    target = file.with_name(f"{file.name}.rejected.csv")
    if not summary.rejected:
        target.unlink(missing_ok=True)
        return None
    by_line = {row.line: row for row in rows}
    with target.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["line", "to", "reason"])
        for line, reason in summary.rejected:
            item = by_line[line].item if line in by_line else None
            item = item or {}
            writer.writerow([line, item.get("to") or item.get("recipient_user_id", ""), reason])
    return target


def report(summary: Summary, console: Console, rejected_file: Path | None = None) -> None:
    """The totals, then one plain line per rejected CSV line (easy to grep or fix in the file)."""
    totals = f"accepted: {summary.accepted}   rejected: {len(summary.rejected)}"
    if summary.replayed:
        totals += f"   already sent by an earlier run: {summary.replayed}"
    console.print(totals, highlight=False, markup=False)
    for line, reason in sorted(summary.rejected):
        console.print(f"line {line}: {reason}", highlight=False, markup=False, soft_wrap=True)
    if rejected_file is not None:
        console.print(f"rejected rows with their reasons: {rejected_file}", highlight=False, markup=False)
    if summary.interrupted:
        console.print(
            f"interrupted after {summary.done} of {summary.total} rows; run the same command again to send the "
            "rest (rows already accepted are not sent twice)", highlight=False, markup=False,
        )


def _timeout(read: float) -> httpx.Timeout:
    # Connecting to a local or nearby API takes milliseconds: fail fast when nothing listens.
    return httpx.Timeout(read, connect=2.0)
