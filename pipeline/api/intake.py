"""From a caller's JSON to a `SendRequest`, or to every reason it cannot be one.

    intake = Intake(settings)
    result = intake.admit(data, idempotency_key=header, now=utcnow())
    if isinstance(result, Rejection): ...    # status 422, one FieldError per problem
    else: result.request                     # sanitised, defaults filled, accepted_at set

Sanitation happens before validation, so limits apply to what is actually sent: control characters
(other than tab and line breaks) are removed from every string, and the operator's forbidden-content
patterns are checked against every text under `message`, in its matching form too (NFKC, without
zero-width/format characters and combining marks: `pipeline.contracts.sanitation`), exactly as the
sender checks records published straight to Kafka.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, get_args

import orjson
from pydantic import ValidationError

from pipeline.config import Settings
from pipeline.contracts import ContentPolicy, FieldError, MessageBody, SendRequest, field_errors

# C0 and C1 control characters except \t \n \r, which text bodies legitimately contain.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# How such a character can appear in a JSON body: raw C0 bytes are invalid JSON (the parser refuses
# them), so only as a \u00XX, \b or \f escape, a raw DEL, or a raw C1 character (UTF-8 C2 80-9F).
# Over-matching (\u00e9, an escaped backslash before b) only costs a needless walk.
_CONTROL_IN_JSON = re.compile(rb"\\u00[0-9a-fA-F]{2}|\\[bf]|\x7f|\xc2[\x80-\x9f]")

MESSAGE_TYPES: frozenset[str] = frozenset(
    model.model_fields["type"].default for model in get_args(get_args(MessageBody)[0])
)
"""Every `message.type` the contract knows; anything else is reported as `unknown` in metrics."""


_STAMPED = frozenset({"accepted_at", "idempotency_key"})


@dataclass(frozen=True)
class Rejection:
    """Why an item was not accepted; `status` is the HTTP status it maps to."""

    status: int
    code: str
    message: str
    fields: list[FieldError] = field(default_factory=list)


@dataclass(frozen=True)
class Admitted:
    request: SendRequest
    stamped: frozenset[str]
    """Fields the API filled in rather than the caller."""

    @property
    def fingerprint(self) -> str:
        """Identifies what the caller asked for (for idempotency): the request minus what the API stamped."""
        return fingerprint(self.request, exclude=set(self.stamped))


def message_type_label(data: Any) -> str:
    """A bounded metric label from untrusted input."""
    message = data.get("message") if isinstance(data, dict) else None
    kind = message.get("type") if isinstance(message, dict) else None
    return kind if isinstance(kind, str) and kind in MESSAGE_TYPES else "unknown"


def may_hold_controls(raw: bytes) -> bool:
    """False when the JSON text cannot decode to a control character (most bodies): skip the walk."""
    return _CONTROL_IN_JSON.search(raw) is not None


DEPTH_LIMIT = 32
"""How deeply a request body may nest; the deepest real message (a template parameter) needs about 10."""


class TooDeep(Exception):
    """A body nests deeper than DEPTH_LIMIT; `field` is the top-level field it happened under."""

    def __init__(self, field: str) -> None:
        super().__init__(field)
        self.field = field


def strip_controls(value: Any, depth: int = 0) -> Any:
    """A copy of a JSON value with control characters removed from every string in it.

    Raises TooDeep past DEPTH_LIMIT levels, long before Python's recursion limit (a 3 KB body can
    nest 1,000 deep), so no body can turn this walk into a RecursionError.
    """
    if isinstance(value, str):
        return _CONTROL.sub("", value) if _CONTROL.search(value) else value
    if depth >= DEPTH_LIMIT and isinstance(value, dict | list):
        raise TooDeep("(body)")
    if isinstance(value, dict):
        return {k: strip_controls(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [strip_controls(v, depth + 1) for v in value]
    return value


def _too_deep(field: str) -> Rejection:
    return invalid([FieldError(field=field, rule="too_deep",
                               message=f"nests deeper than {DEPTH_LIMIT} levels", limit=DEPTH_LIMIT)])


class Intake:
    def __init__(self, settings: Settings) -> None:
        self._default_phone_number_id = settings.whatsapp.phone_number_id
        # The same policy checks records published straight to Kafka (the sender's intake).
        self._policy = ContentPolicy(settings.api.forbidden_patterns)

    def admit(
        self, data: Any, *, idempotency_key: str | None, now: datetime, sanitise: bool = True
    ) -> Admitted | Rejection:
        """`sanitise=False` when `may_hold_controls` said the body has no control character."""
        if not isinstance(data, dict):
            return invalid([FieldError(field="(body)", rule="model_type", message="must be a JSON object")])
        try:
            data = {k: strip_controls(v, 1) for k, v in data.items()} if sanitise else dict(data)
            problems = self._forbidden_content(data.get("message"), "message", 1)
        except TooDeep as exc:
            return _too_deep(next((k for k in data if _nests_beyond(data[k])), exc.field))

        if idempotency_key is not None:
            given = data.get("idempotency_key")
            if given is not None and given != idempotency_key:
                problems.append(
                    FieldError(
                        field="idempotency_key",
                        rule="idempotency_key_mismatch",
                        message="differs from the Idempotency-Key header; send one or make them equal",
                    )
                )
            data["idempotency_key"] = idempotency_key
        if data.get("phone_number_id") is None:
            if self._default_phone_number_id is None:
                problems.append(
                    FieldError(
                        field="phone_number_id",
                        rule="missing",
                        message="required: the request names no business number and the API has no default "
                        "(WHATSAPP_PHONE_NUMBER_ID)",
                    )
                )
            else:
                data["phone_number_id"] = self._default_phone_number_id
        stamped = _STAMPED if data.get("request_id") is not None else _STAMPED | {"request_id"}
        # The API is where the request enters the pipeline, so it is the one that accepts it.
        data["accepted_at"] = now
        try:
            request = SendRequest.model_validate(data)
        except ValidationError as exc:
            return invalid([*field_errors(exc, data), *problems])
        if request.expires_at is not None and request.expires_at <= now:
            problems.append(FieldError(field="expires_at", rule="datetime_future",
                                       message="is already past: the message would expire unsent"))
        if problems:
            return invalid(problems)
        return Admitted(request=request, stamped=stamped)

    def _forbidden_content(self, value: Any, path: str, depth: int) -> list[FieldError]:
        """The one content policy (`pipeline.contracts.sanitation`) on every text, walked to a bounded depth."""
        if not self._policy:
            return []
        if depth >= DEPTH_LIMIT and isinstance(value, dict | list):
            raise TooDeep("message")
        if isinstance(value, str):
            return self._policy.violations(value, path)
        if isinstance(value, dict):
            return [e for k, v in value.items() if k != "type"
                    for e in self._forbidden_content(v, f"{path}.{k}", depth + 1)]
        if isinstance(value, list):
            return [e for i, v in enumerate(value) for e in self._forbidden_content(v, f"{path}[{i}]", depth + 1)]
        return []


def _nests_beyond(value: Any) -> bool:
    """Whether a top-level field's value is what broke DEPTH_LIMIT (a loop: it is the deep one)."""
    stack = [(value, 2)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict | list):
            if level > DEPTH_LIMIT:
                return True
            stack.extend((c, level + 1) for c in (node.values() if isinstance(node, dict) else node))
    return False


def fingerprint(request: SendRequest, exclude: set[str]) -> str:
    canonical = orjson.dumps(request.model_dump(mode="json", exclude=exclude), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()[:32]


def invalid(problems: list[FieldError]) -> Rejection:
    count = len(problems)
    return Rejection(
        status=422,
        code="invalid_request",
        message=f"{count} problem{'s' if count != 1 else ''} with the request; see `fields`",
        fields=problems,
    )
