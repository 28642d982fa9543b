"""Graph API errors: Meta's error body, or a failed connection, as one typed exception.

    try:
        await client.send_message(request)
    except GraphApiError as err:
        err.error_class     # ErrorClass.THROTTLED — what to do about it (docs/whatsapp.md)
        err.ambiguous       # True: the request may have reached Meta; a retry may send twice

Meta's error table itself (`classify`, `KNOWN_ERROR_CODES`, retry-after hints, the codes that pause a
number) lives in `pipeline.contracts.meta_errors`, so that stages read it without importing the client.
"""

from __future__ import annotations

import email.utils
import time
from typing import Any

import httpx
import orjson

from pipeline.contracts import ErrorClass, ErrorInfo
from pipeline.contracts.meta_errors import KNOWN_ERROR_CODES, RETRY_AFTER_HINTS, classify
from pipeline.observability.redaction import scrub_text


class GraphApiError(Exception):
    """A Graph API call that did not succeed: Meta's error, an HTTP error without one, or no answer.

    `ambiguous` is True when the request may have reached Meta (a read timeout or a disconnect after
    it was written, a 504): Meta has no idempotency key, so retrying may send the message twice.
    `retry_after` is Meta's `Retry-After` header, else the minimum wait the error code asks for.
    """

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        error_class: ErrorClass | None = None,
        http_status: int | None = None,
        error_subcode: int | None = None,
        error_type: str | None = None,
        title: str | None = None,
        details: str | None = None,
        fbtrace_id: str | None = None,
        ambiguous: bool = False,
        retry_after: float | None = None,
    ) -> None:
        self.message = scrub_text(message)
        self.code = code
        self.error_class = error_class if error_class is not None else classify(code, http_status)
        self.http_status = http_status
        self.error_subcode = error_subcode
        self.error_type = error_type
        self.title = title
        self.details = scrub_text(details) if details else details
        self.fbtrace_id = fbtrace_id
        self.ambiguous = ambiguous
        self.retry_after = retry_after
        super().__init__(self._describe())

    def _describe(self) -> str:
        parts = [f"Graph API {self.error_class.value} error"]
        if self.code is not None:
            parts.append(f"code {self.code}" + (f"/{self.error_subcode}" if self.error_subcode is not None else ""))
        if self.http_status is not None:
            parts.append(f"HTTP {self.http_status}")
        text = f"{', '.join(parts)}: {self.message}"
        if self.details and self.details != self.message:
            text += f" ({self.details})"
        if self.ambiguous:
            text += " [ambiguous: Meta may have sent it]"
        if self.fbtrace_id:
            text += f" fbtrace_id={self.fbtrace_id}"
        return text

    def __repr__(self) -> str:
        return (
            f"GraphApiError(code={self.code!r}, error_class={self.error_class.value!r}, "
            f"http_status={self.http_status!r}, ambiguous={self.ambiguous!r}, message={self.message!r})"
        )

    def to_error_info(self) -> ErrorInfo:
        return ErrorInfo(
            code=self.code,
            error_class=self.error_class,
            title=self.title,
            message=self.message,
            details=self.details,
            fbtrace_id=self.fbtrace_id,
            http_status=self.http_status,
        )


# --- from an HTTP response ------------------------------------------------------------------------


def error_from_response(response: httpx.Response) -> GraphApiError:
    """Parse Meta's `{"error": {...}}` body; anything else (a proxy's HTML 502) still gets a class."""
    status = response.status_code
    retry_after = _retry_after_header(response.headers.get("retry-after"))
    # A gateway timeout means an intermediary gave up waiting for Meta, which may still have sent.
    ambiguous = status == 504
    error = _error_object(response.content)
    if error is None:
        kind = response.headers.get("content-type", "no content type").split(";")[0]
        return GraphApiError(
            f"HTTP {status} {response.reason_phrase or ''} without a Graph API error body ({kind})".replace("  ", " "),
            http_status=status,
            ambiguous=ambiguous,
            retry_after=retry_after,
        )
    code = _int_or_none(error.get("code"))
    error_data = error.get("error_data")
    details = error_data.get("details") if isinstance(error_data, dict) else None
    if retry_after is None and code is not None:
        retry_after = RETRY_AFTER_HINTS.get(code)
    return GraphApiError(
        _str_or_none(error.get("message")) or f"HTTP {status}",
        code=code,
        http_status=status,
        error_subcode=_int_or_none(error.get("error_subcode")),
        error_type=_str_or_none(error.get("type")),
        title=_str_or_none(error.get("error_user_title")),
        details=_str_or_none(details),
        fbtrace_id=_str_or_none(error.get("fbtrace_id")),
        ambiguous=ambiguous,
        retry_after=retry_after,
    )


def _error_object(content: bytes) -> dict[str, Any] | None:
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else None


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _retry_after_header(value: str | None) -> float | None:
    """`Retry-After` is either delay-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


# --- from a transport failure ---------------------------------------------------------------------

# Failures that happen before the request can have been fully written: Meta cannot have acted on it.
# A write that fails leaves the body incomplete, so a server cannot have parsed it either.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.WriteTimeout,
             httpx.WriteError, httpx.UnsupportedProtocol, httpx.ProxyError)


def error_from_transport(exc: httpx.RequestError) -> GraphApiError:
    """A connection error or timeout: always TRANSIENT; ambiguous unless it happened before sending.

    Read timeouts, read errors, disconnects (`RemoteProtocolError`) and undecodable answers come after
    the request was written, so Meta may have accepted it.
    """
    ambiguous = not isinstance(exc, _NOT_SENT)
    what = type(exc).__name__
    detail = str(exc) or "no detail"
    stage = "after the request was sent" if ambiguous else "before the request was sent"
    return GraphApiError(f"{what} {stage}: {detail}", error_class=ErrorClass.TRANSIENT, ambiguous=ambiguous)


__all__ = [
    "KNOWN_ERROR_CODES",
    "GraphApiError",
    "classify",
    "error_from_response",
    "error_from_transport",
]
