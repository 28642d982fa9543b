"""Forbidden-content matching sees through zero-width characters, full-width letters and combining marks."""

from __future__ import annotations

import pytest

from pipeline.contracts import ContentPolicy, matching_form

POLICY = ContentPolicy([r"(?i)\bspam\b", r"casino"])


@pytest.mark.parametrize(
    "text",
    [
        "SPAM",
        "S\u200bPAM",  # zero-width space
        "S\u200dP\u200cA\u2060M",  # joiner, non-joiner, word joiner
        "\u202eSPAM",  # a bidi override in front
        "\uff33\uff30\uff21\uff2d",  # full-width letters
        "S\u0332P\u0332A\u0332M\u0332",  # combining low lines
        "c\u0301asino",  # a combining accent
        "\U0001d42c\U0001d429\U0001d41a\U0001d426",  # mathematical bold letters
    ],
)
def test_look_alikes_match(text: str) -> None:
    [error] = POLICY.violations({"type": "text", "text": {"body": f"Buy now: {text}!"}})
    assert error.field == "message.text.body"
    assert error.rule == "forbidden_content"


def test_innocent_text_passes_and_the_message_is_not_changed() -> None:
    body = {"type": "text", "text": {"body": "family \U0001f468\u200d\U0001f469\u200d\U0001f467 caf\u00e9 spa"}}
    assert POLICY.violations(body) == []
    assert body["text"]["body"].count("\u200d") == 2  # the emoji keeps its joiners


def test_matching_form() -> None:
    assert matching_form("\uff33\u200b\uff30") == "SP"
    assert matching_form("plain ascii") == "plain ascii"
    assert matching_form("e\u0301") == "e"


def test_every_text_of_a_message_is_checked_with_its_path() -> None:
    message = {"type": "interactive", "interactive": {"type": "button", "body": {"text": "ok"},
               "action": {"buttons": [{"type": "reply", "reply": {"id": "a", "title": "S\u200bPAM"}}]}}}
    [error] = POLICY.violations(message)
    assert error.field == "message.interactive.action.buttons[0].reply.title"
    assert ContentPolicy([]).violations(message) == []
