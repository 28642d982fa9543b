"""Meta's error answers, stated here on their own (never borrowed from the client's code).

    raise GraphError(131009, "Param text['body'] must be at most 4096 characters")
    # -> HTTP 400 {"error": {"message": "(#131009) Parameter value is not valid", "type": "OAuthException",
    #              "code": 131009, "error_data": {"messaging_product": "whatsapp", "details": "..."},
    #              "fbtrace_id": "A..."}}

The same codes travel inside failed status webhooks as `errors[]` (`status_error`).
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from typing import Any

# code -> (title, HTTP status). Titles are Meta's; the status is what Meta answers with synchronously.
CATALOG: dict[int, tuple[str, int]] = {
    2: ("Service temporarily unavailable", 503),
    100: ("Invalid parameter", 400),
    190: ("Invalid OAuth access token", 401),
    368: ("Temporarily blocked for policies violations", 400),
    130429: ("Rate limit hit", 400),
    131000: ("Something went wrong", 500),
    131008: ("Required parameter is missing", 400),
    131009: ("Parameter value is not valid", 400),
    131021: ("Recipient cannot be sender", 400),
    131026: ("Message undeliverable", 400),
    131047: ("Re-engagement message", 400),
    131052: ("Media download error", 400),
    131053: ("Media upload error", 400),
    131056: ("(Business Account, Consumer Account) pair rate limit hit", 400),
    132001: ("Template name does not exist in the translation", 400),
    132015: ("Template is paused", 400),
    131062: ("Business-scoped User ID recipients are not supported for this message", 400),
    2500: ("Unknown path components", 400),
}
NOT_EMULATED = 1_390_501
"""The sandbox's own code (Meta has none like it): a kind Meta documents that the sandbox does not emulate.
HTTP 501, so no client mistakes it for its own bad payload (100, 131008, 131009 are terminal)."""
CATALOG[NOT_EMULATED] = ("Not emulated by the sandbox", 501)


@dataclass(frozen=True)
class GraphError(Exception):
    """An error the Graph API answers with; `details` names the field and the rule when there is one."""

    code: int
    details: str
    http_status: int | None = None  # None: the catalog's status for this code
    subcode: int | None = None

    @property
    def title(self) -> str:
        return CATALOG.get(self.code, ("Unknown error", 400))[0]

    @property
    def status(self) -> int:
        return self.http_status or CATALOG.get(self.code, ("", 400))[1]

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {
            "message": f"(#{self.code}) {self.title}",
            "type": "SandboxNotEmulated" if self.code == NOT_EMULATED else "OAuthException",
            "code": self.code,
        }
        if self.subcode is not None:
            error["error_subcode"] = self.subcode
        error["error_data"] = {"messaging_product": "whatsapp", "details": self.details}
        error["fbtrace_id"] = fbtrace_id()
        return {"error": error}


def status_error(code: int, details: str) -> dict[str, Any]:
    """The `errors[]` item of a failed status webhook (no fbtrace_id, no messaging_product)."""
    title = CATALOG.get(code, ("Unknown error", 400))[0]
    return {"code": code, "title": title, "message": title, "error_data": {"details": details}}


def fbtrace_id() -> str:
    # Meta's trace ids are ~23 url-safe base64 characters; only their shape matters here.
    return "A" + base64.urlsafe_b64encode(os.urandom(16)).decode()[:22]
