"""`pipeline messages show|history|search`: the read API, printed as tables.

    pipeline messages show req_01KBMZ6E3T0Q5B2V9X8W7Y6Z5A
    pipeline messages history +16505551234 --limit 20
    pipeline messages search "order 12345" --status read

Talks to the producer API's address (PIPELINE_API_URL, which forwards the read routes to the store)
with PIPELINE_API_KEY, exactly as any client would; exit code 1 with the API's message on an error.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

messages_app = typer.Typer(help="Stored messages: one request, a contact's history, text search.",
                           no_args_is_help=True)

ApiUrl = Annotated[str, typer.Option(envvar="PIPELINE_API_URL", help="API base URL (forwards to the store).")]
ApiKeyOption = Annotated[str, typer.Option(envvar="PIPELINE_API_KEY", help="API key.")]
_URL = "http://127.0.0.1:8080"
_KEY = "dev-key"


def _get(api_url: str, api_key: str, path: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    import httpx  # here, not at the top: `pipeline --help` imports this module

    try:
        response = httpx.get(f"{api_url.rstrip('/')}{path}", params={k: v for k, v in (params or {}).items()
                                                                     if v is not None},
                             headers={"Authorization": f"Bearer {api_key}"}, timeout=30)
    except httpx.HTTPError as exc:
        Console(stderr=True).print(f"[red]cannot reach {api_url}: {type(exc).__name__}[/red]")
        raise typer.Exit(1) from None
    body: dict[str, Any] = response.json() if response.content else {}
    if response.status_code != 200:
        error = body.get("error", {})
        Console(stderr=True).print(f"[red]{response.status_code} {error.get('code', '')}: "
                                   f"{error.get('message', response.text)}[/red]")
        for field in error.get("fields", []):
            Console(stderr=True).print(f"  {field['field']}: {field['message']}")
        raise typer.Exit(1)
    return body


def _short(text: str | None, width: int = 60) -> str:
    if not text:
        return ""
    return text if len(text) <= width else text[: width - 1] + "…"


@messages_app.command("show")
def show(request_id: str, api_url: ApiUrl = _URL, api_key: ApiKeyOption = _KEY) -> None:
    """What happened to one request: outcome, error and the status timeline."""
    body = _get(api_url, api_key, f"/v1/messages/{request_id}")
    console = Console()
    summary = Table(show_header=False, title=f"request {body['request_id']}")
    summary.add_column("field", style="bold")
    summary.add_column("value")
    for field in ("phone_number_id", "to", "type", "text", "accepted_at", "outcome", "status", "wamid", "trace_id"):
        summary.add_row(field, str(body.get(field) or ""))
    error = body.get("error")
    if error:
        summary.add_row("error", f"{error.get('code')} {error.get('title') or ''} ({error.get('class')})")
    console.print(summary)
    timeline = Table(title="timeline")
    for column in ("status", "at", "pricing", "error"):
        timeline.add_column(column)
    for step in body["timeline"]:
        step_error = step.get("error") or {}
        timeline.add_row(step["status"], step["at"] or "", step.get("pricing_category") or "",
                         f"{step_error.get('code', '')} {step_error.get('title') or ''}".strip())
    console.print(timeline)


@messages_app.command("history")
def history(
    wa_id: str,
    limit: Annotated[int, typer.Option(help="Messages per page (1-200).")] = 50,
    before: Annotated[str | None, typer.Option(help="next_cursor of the previous page.")] = None,
    api_url: ApiUrl = _URL,
    api_key: ApiKeyOption = _KEY,
) -> None:
    """A contact's conversation, both directions, newest first."""
    body = _get(api_url, api_key, f"/v1/contacts/{wa_id}/messages", {"limit": limit, "before": before})
    table = Table(title=f"conversation with {body['wa_id']}")
    for column in ("at", "", "type", "text", "status", "id"):
        table.add_column(column)
    for item in body["messages"]:
        arrow = "→" if item["direction"] == "outbound" else "←"
        table.add_row(item["at"], arrow, item.get("type") or "", _short(item.get("text")), item.get("status") or "",
                      item["id"])
    Console().print(table)
    if body.get("next_cursor"):
        Console().print(f"more: --before {body['next_cursor']}")


@messages_app.command("search")
def search(
    text: Annotated[str | None, typer.Argument(help="Words that must all occur (a trailing * is a prefix).")] = None,
    to: Annotated[str | None, typer.Option(help="Recipient phone number.")] = None,
    status: Annotated[str | None, typer.Option(help="accepted, sent, delivered, read, played or failed.")] = None,
    since: Annotated[str | None, typer.Option(help="RFC 3339, inclusive.")] = None,
    until: Annotated[str | None, typer.Option(help="RFC 3339, exclusive.")] = None,
    phone_number_id: Annotated[str | None, typer.Option(help="Business number.")] = None,
    limit: Annotated[int, typer.Option(help="Results per page (1-200).")] = 50,
    api_url: ApiUrl = _URL,
    api_key: ApiKeyOption = _KEY,
) -> None:
    """Find outbound messages by text, recipient, status and time."""
    body = _get(api_url, api_key, "/v1/messages", {"q": text, "to": to, "status": status, "since": since,
                                                   "until": until, "phone_number_id": phone_number_id, "limit": limit})
    table = Table(title=f"{len(body['messages'])} message(s)")
    for column in ("accepted_at", "to", "status", "text", "request_id"):
        table.add_column(column)
    for item in body["messages"]:
        table.add_row(item.get("accepted_at") or "", item.get("to") or "", item["status"], _short(item.get("text")),
                      item["request_id"])
    Console().print(table)
    if body.get("next_cursor"):
        Console().print(f"more: {body['next_cursor']}")
