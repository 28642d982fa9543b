"""Forbidden-content matching that look-alike text cannot slip past, the same at both doors.

    policy = ContentPolicy([r"(?i)\\bspam\\b"])
    policy.violations({"type": "text", "text": {"body": "S\\u200bPAM"}})   # [FieldError(field="message.text.body")]
    matching_form("\\uff33\\uff30\\uff21\\uff2d")                          # "SPAM" (from full-width letters)

The producer API (`pipeline.api.intake`) and the sender's intake of records published straight to
Kafka (`pipeline.sender.engine`) both check `API_FORBIDDEN_PATTERNS` with this policy, so a message is
refused or dead-lettered alike whichever door it came through. Patterns are matched against the text as
written and against its *matching form*: Unicode compatibility-decomposed, without format characters
(zero-width space, joiners, bidi controls: category Cf) or combining marks (Mn, Me), recomposed (NFKC).
So `S\\u200bPAM`, full-width `\\uff33\\uff30\\uff21\\uff2d` and `S\\u0332P\\u0332A\\u0332M\\u0332` (combining low
lines) all match `SPAM`. The message itself is not changed: the
matching form is only looked at (an emoji's zero-width joiner stays in what is sent).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Any

from pipeline.contracts.errors import FieldError

_DROPPED = frozenset({"Cf", "Mn", "Me"})


def matching_form(text: str) -> str:
    """NFKD, without format characters and combining marks, then NFKC."""
    if text.isascii():
        return text  # nothing to fold: the common case costs one scan
    decomposed = unicodedata.normalize("NFKD", text)
    kept = "".join(c for c in decomposed if unicodedata.category(c) not in _DROPPED)
    return unicodedata.normalize("NFKC", kept)


class ContentPolicy:
    """The operator's forbidden-content patterns (`API_FORBIDDEN_PATTERNS`), numbered from 1."""

    def __init__(self, patterns: Sequence[str]) -> None:
        self._patterns = [re.compile(p) for p in patterns]

    def __bool__(self) -> bool:
        return bool(self._patterns)

    def violations(self, value: Any, path: str = "message") -> list[FieldError]:
        """One FieldError per text under `value` (a message body as JSON) that matches a pattern."""
        if not self._patterns:
            return []
        if isinstance(value, str):
            forms = {value, matching_form(value)}
            for number, pattern in enumerate(self._patterns, start=1):
                if any(pattern.search(form) for form in forms):
                    return [FieldError(field=path, rule="forbidden_content",
                                       message=f"matches forbidden content pattern #{number} of this API")]
            return []
        if isinstance(value, dict):
            return [e for k, v in value.items() if k != "type" for e in self.violations(v, f"{path}.{k}")]
        if isinstance(value, list):
            return [e for i, v in enumerate(value) for e in self.violations(v, f"{path}[{i}]")]
        return []
