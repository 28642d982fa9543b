"""Meta's error bodies (and everything that is not one) become typed, classified GraphApiErrors."""

from __future__ import annotations

import email.utils
import time
import traceback

import httpx
import orjson
import pytest

from pipeline.contracts import ErrorClass, ErrorInfo
from pipeline.observability.metrics import error_code_label
from pipeline.whatsapp import KNOWN_ERROR_CODES, GraphApiError, classify
from pipeline.whatsapp.errors import error_from_response, error_from_transport

# The reference table (docs/whatsapp.md, from Meta's error-code reference), restated so a change to the
# client's table has to be a deliberate change here too.
REFERENCE: dict[ErrorClass, list[int]] = {
    ErrorClass.TRANSIENT: [1, 2, 131000, 131016, 131057],
    ErrorClass.THROTTLED: [130429, 4, 80007, 131048],
    ErrorClass.PAIR_LIMITED: [131056],
    ErrorClass.AUTH: [0, 190],
    ErrorClass.PERMISSION: [3, 10, 200, 250, 299, 131005, 133010],
    ErrorClass.POLICY: [368, 131031],
    ErrorClass.INVALID: [100, 131008, 131009, 131021, 131051],
    ErrorClass.UNDELIVERABLE: [131026, 131049, 131050],
    ErrorClass.WINDOW: [131047],
    ErrorClass.TEMPLATE: [132000, 132001, 132005, 132007, 132012, 132015, 132016],
    ErrorClass.MEDIA: [131052, 131053],
}


@pytest.mark.parametrize(("code", "expected"), [(c, cls) for cls, codes in REFERENCE.items() for c in codes])
def test_every_documented_code_has_its_class_whatever_the_http_status(code: int, expected: ErrorClass) -> None:
    for status in (None, 400, 401, 403, 429, 500, 503):
        assert classify(code, status) is expected
    assert code in KNOWN_ERROR_CODES


def test_known_codes_are_exactly_the_table() -> None:
    table = {c for codes in REFERENCE.values() for c in codes} | set(range(200, 300))
    assert table == KNOWN_ERROR_CODES
    assert {classify(c) for c in KNOWN_ERROR_CODES} == set(REFERENCE)


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        (987654, 400, ErrorClass.OTHER),  # unknown code: other, never an exception
        (987654, None, ErrorClass.OTHER),
        (-1, 400, ErrorClass.OTHER),
        (987654, 502, ErrorClass.TRANSIENT),  # unknown code, but the server side failed
        (None, 500, ErrorClass.TRANSIENT),
        (None, 504, ErrorClass.TRANSIENT),
        (None, 429, ErrorClass.THROTTLED),
        (None, 401, ErrorClass.AUTH),
        (None, 403, ErrorClass.PERMISSION),
        (None, 400, ErrorClass.OTHER),
        (None, 404, ErrorClass.OTHER),
        (None, None, ErrorClass.OTHER),
    ],
)
def test_unknown_codes_and_bare_http_statuses(code: int | None, status: int | None, expected: ErrorClass) -> None:
    assert classify(code, status) is expected


def test_metric_label_stays_bounded_with_known_codes() -> None:
    assert error_code_label(131026, KNOWN_ERROR_CODES) == "131026"
    assert error_code_label(987654, KNOWN_ERROR_CODES) == "other"


# --- parsing responses ----------------------------------------------------------------------------


def response(status: int, body: object, headers: dict[str, str] | None = None) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    request = httpx.Request("POST", "https://graph.facebook.com/v23.0/106540352242922/messages")
    return httpx.Response(status, content=content, headers=headers, request=request)


def meta_error(code: int, **extra: object) -> dict[str, object]:
    return {"error": {"message": f"(#{code}) Something", "type": "OAuthException", "code": code,
                      "error_data": {"messaging_product": "whatsapp", "details": "to: not a WhatsApp user"},
                      "fbtrace_id": "AbCdEf123", **extra}}


def test_meta_error_body_is_parsed_field_by_field() -> None:
    err = error_from_response(response(400, meta_error(131026, error_subcode=2494010, error_user_title="Not sent")))

    assert err.code == 131026
    assert err.error_subcode == 2494010
    assert err.error_class is ErrorClass.UNDELIVERABLE
    assert err.http_status == 400
    assert err.message == "(#131026) Something"
    assert err.error_type == "OAuthException"
    assert err.details == "to: not a WhatsApp user"
    assert err.fbtrace_id == "AbCdEf123"
    assert err.ambiguous is False
    assert err.retry_after is None
    assert "131026/2494010" in str(err)
    assert "HTTP 400" in str(err)
    assert err.to_error_info() == ErrorInfo(
        code=131026, error_class=ErrorClass.UNDELIVERABLE, title="Not sent", message="(#131026) Something",
        details="to: not a WhatsApp user", fbtrace_id="AbCdEf123", http_status=400,
    )


def test_code_sent_as_a_string_still_counts() -> None:
    assert error_from_response(response(400, {"error": {"code": "130429", "message": "x"}})).code == 130429


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html"),
        (b"", "text/plain"),
        (b'{"error": "upstream timeout"}', "application/json"),  # JSON, but not Meta's shape
        (b"[1, 2]", "application/json"),
    ],
)
def test_non_meta_bodies_from_a_proxy_are_transient_with_a_clear_message(body: bytes, content_type: str) -> None:
    err = error_from_response(response(502, body, {"content-type": f"{content_type}; charset=utf-8"}))

    assert err.code is None
    assert err.error_class is ErrorClass.TRANSIENT
    assert err.http_status == 502
    assert f"HTTP 502 Bad Gateway without a Graph API error body ({content_type})" in str(err)


def test_gateway_timeout_is_ambiguous_and_a_503_is_not() -> None:
    assert error_from_response(response(504, b"<html>504</html>")).ambiguous is True
    assert error_from_response(response(503, meta_error(2))).ambiguous is False


def test_retry_after_header_in_seconds_or_as_a_date_wins_over_the_code_hint() -> None:
    assert error_from_response(response(429, meta_error(131056), {"retry-after": "17"})).retry_after == 17.0
    later = email.utils.formatdate(time.time() + 120, usegmt=True)
    hinted = error_from_response(response(503, b"busy", {"retry-after": later})).retry_after
    assert hinted is not None
    assert 110 <= hinted <= 121
    assert error_from_response(response(429, b"", {"retry-after": "soon"})).retry_after is None


@pytest.mark.parametrize(("code", "hint"), [(131056, 6.0), (4, 60.0), (80007, 60.0), (131048, 300.0),
                                            (130429, None), (131000, None), (100, None)])
def test_retry_after_hint_from_the_reference_when_meta_sends_none(code: int, hint: float | None) -> None:
    assert error_from_response(response(400, meta_error(code))).retry_after == hint


def test_token_in_an_error_text_is_scrubbed() -> None:
    token = "EAAGm0PX4ZCpsBAKZCmPZCZAZBxyz1234567890abcdef"
    body = {"error": {"code": 190, "message": f"Bad token Bearer {token}", "error_data": {"details": token}}}
    err = error_from_response(response(401, body))

    rendered = str(err) + repr(err) + "".join(traceback.format_exception(err)) + err.to_error_info().model_dump_json()
    assert token not in rendered
    assert err.error_class is ErrorClass.AUTH


# --- transport failures ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "ambiguous"),
    [
        (httpx.ConnectError("refused"), False),
        (httpx.ConnectTimeout("connect timed out"), False),
        (httpx.PoolTimeout("no free connection"), False),
        (httpx.WriteTimeout("write timed out"), False),
        (httpx.WriteError("broken pipe"), False),
        (httpx.ProxyError("proxy said no"), False),
        (httpx.UnsupportedProtocol("ftp"), False),
        (httpx.ReadTimeout("read timed out"), True),
        (httpx.ReadError("connection reset"), True),
        (httpx.RemoteProtocolError("Server disconnected without sending a response"), True),
        (httpx.TimeoutException("some timeout"), True),
        (httpx.DecodingError("bad gzip"), True),
    ],
)
def test_transport_failures_are_transient_and_ambiguous_only_after_sending(
    exc: httpx.RequestError, ambiguous: bool
) -> None:
    err = error_from_transport(exc)

    assert err.error_class is ErrorClass.TRANSIENT
    assert err.ambiguous is ambiguous
    assert err.code is None
    assert err.http_status is None
    assert type(exc).__name__ in str(err)
    assert ("may have sent" in str(err)) is ambiguous


def test_graph_api_error_is_an_exception_the_sender_can_catch_broadly() -> None:
    with pytest.raises(GraphApiError) as info:
        raise error_from_response(response(400, meta_error(100)))
    assert info.value.error_class is ErrorClass.INVALID
    assert error_from_response(response(400, meta_error(131053))).error_class is ErrorClass.MEDIA
