"""Meta's Graph API error table: every code the pipeline knows, its class, and what it asks of us.

    classify(131026)                    # ErrorClass.UNDELIVERABLE
    classify(None, 503)                 # ErrorClass.TRANSIENT (no code: the HTTP status decides)
    RETRY_AFTER_HINTS[131056]           # 6.0 s: the pair rate limit
    131048 in NUMBER_PAUSE_CODES        # True: the whole number waits, not one recipient
    MEANINGS[ErrorClass.WINDOW]         # what an operator should do about it

One table for every stage (the client, the sender's retry policy, the ingest's failed statuses, the store
and the console), so that a code cannot mean one thing on the send path and another in a webhook.
Sources: Meta's Cloud API error-code reference and throughput documentation (docs/whatsapp.md).
"""

from __future__ import annotations

from pipeline.contracts.vocabulary import ErrorClass

# Meta's documented codes (docs/whatsapp.md). Decide on the code, never on
# the HTTP status or the message text: the same codes arrive in failed status webhooks.
_CODES: dict[ErrorClass, frozenset[int]] = {
    ErrorClass.TRANSIENT: frozenset({1, 2, 131000, 131016, 131057}),
    # 130429 per-number throughput, 4/80007 app/account call rate, 131048 spam/quality rate limit.
    ErrorClass.THROTTLED: frozenset({130429, 4, 80007, 131048}),
    ErrorClass.PAIR_LIMITED: frozenset({131056}),
    ErrorClass.AUTH: frozenset({0, 190}),
    # 133010 (number not registered) is a configuration problem: terminal per message, alert.
    ErrorClass.PERMISSION: frozenset({3, 10, 131005, 133010, *range(200, 300)}),
    ErrorClass.POLICY: frozenset({368, 131031}),
    ErrorClass.INVALID: frozenset({100, 131008, 131009, 131021, 131051}),
    # 131049/131050: per-user marketing limit, user stopped marketing — both recipient-side.
    ErrorClass.UNDELIVERABLE: frozenset({131026, 131049, 131050}),
    ErrorClass.WINDOW: frozenset({131047}),
    ErrorClass.TEMPLATE: frozenset({132000, 132001, 132005, 132007, 132012, 132015, 132016}),
    ErrorClass.MEDIA: frozenset({131052, 131053}),
}
_CLASS_OF: dict[int, ErrorClass] = {code: cls for cls, codes in _CODES.items() for code in codes}

KNOWN_ERROR_CODES: frozenset[int] = frozenset(_CLASS_OF)
"""Every code `classify` knows; anything else is `ErrorClass.OTHER` (and `error_code="other"`)."""

MEDIA_ERROR_CODES: frozenset[int] = _CODES[ErrorClass.MEDIA]

# Minimum waits the reference table asks for when Meta sends no Retry-After header. 130429 and the
# transient codes have none: the sender's own backoff (and rate adaptation) decides.
RETRY_AFTER_HINTS: dict[int, float] = {
    131056: 6.0,  # pair rate: about one message per 6 s to the same recipient
    4: 60.0,  # app call rate: "back off minutes"
    80007: 60.0,  # account call rate: "back off minutes"
    131048: 300.0,  # spam/quality rate limit: "pause; no quick retry"
}


def classify(code: int | None, http_status: int | None = None) -> ErrorClass:
    """The class of a Graph API error: by code when Meta gave one, by HTTP status only when it did not.

    An unknown code is `OTHER` (never an exception), except on a 5xx, where it is `TRANSIENT`.
    """
    if code is not None and code in _CLASS_OF:
        return _CLASS_OF[code]
    if http_status is not None and http_status >= 500:
        return ErrorClass.TRANSIENT
    if code is None:
        if http_status == 429:
            return ErrorClass.THROTTLED
        if http_status == 401:
            return ErrorClass.AUTH
        if http_status == 403:
            return ErrorClass.PERMISSION
    return ErrorClass.OTHER

# The number (not one recipient) must wait: app or account call rate, spam/quality rate limit.
NUMBER_PAUSE_CODES: frozenset[int] = frozenset({4, 80007, 131048})

# What the person on call reads next to Meta's code and title.
MEANINGS: dict[ErrorClass, str] = {
    ErrorClass.TRANSIENT: "Meta had a temporary problem; the pipeline retries with backoff.",
    ErrorClass.THROTTLED: "A Meta rate limit was hit; the pipeline slows the number down and retries.",
    ErrorClass.PAIR_LIMITED: "Too many messages to this one recipient in a short time; it waits and retries.",
    ErrorClass.AUTH: "The access token is invalid or expired; renew WHATSAPP_ACCESS_TOKEN.",
    ErrorClass.PERMISSION: "The app lacks permission for this number, or the number is not registered.",
    ErrorClass.POLICY: "Meta blocked the business for a policy reason; check the WhatsApp Manager.",
    ErrorClass.INVALID: "Meta rejected the payload as invalid; the message must be fixed, not retried.",
    ErrorClass.UNDELIVERABLE: "The recipient cannot receive it (not on WhatsApp, blocked, or opted out).",
    ErrorClass.WINDOW: "The 24-hour customer service window is closed; send an approved template instead.",
    ErrorClass.TEMPLATE: "The template is missing, paused, or its parameters do not match.",
    ErrorClass.MEDIA: "Meta could not download or process the media; check the URL and the file.",
    ErrorClass.OTHER: "A code the pipeline does not know; see Meta's error reference.",
    ErrorClass.NONE: "No error.",
}
