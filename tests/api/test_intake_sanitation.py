"""The HTTP door refuses look-alike forbidden content exactly as the Kafka door dead-letters it."""

from __future__ import annotations

import pytest

from pipeline.api.intake import Intake, Rejection
from pipeline.config import load_settings
from pipeline.contracts import utcnow


@pytest.mark.parametrize("body", ["S\u200bPAM", "\uff33\uff30\uff21\uff2d", "S\u0332P\u0332A\u0332M\u0332"])
def test_look_alike_forbidden_text_is_a_422(body: str) -> None:
    intake = Intake(load_settings(api={"forbidden_patterns": [r"(?i)\bspam\b"]},
                                  whatsapp={"phone_number_id": "106540352242922"}))
    result = intake.admit({"to": "+16505551234", "message": {"type": "text", "text": {"body": body}}},
                          idempotency_key=None, now=utcnow())
    assert isinstance(result, Rejection)
    assert result.status == 422
    assert [(f.field, f.rule) for f in result.fields] == [("message.text.body", "forbidden_content")]
