"""Meta's error table in the contracts: every class has an operator-facing meaning; pauses are throttles."""

from __future__ import annotations

from pipeline.contracts import ErrorClass
from pipeline.contracts.meta_errors import KNOWN_ERROR_CODES, MEANINGS, NUMBER_PAUSE_CODES, RETRY_AFTER_HINTS, classify


def test_every_error_class_has_a_meaning_for_the_person_on_call() -> None:
    assert set(MEANINGS) == set(ErrorClass)
    assert all(text.endswith(".") and len(text) < 120 for text in MEANINGS.values())


def test_the_codes_that_pause_a_number_are_known_throttles_with_a_minimum_wait() -> None:
    assert NUMBER_PAUSE_CODES <= KNOWN_ERROR_CODES
    assert {classify(code) for code in NUMBER_PAUSE_CODES} == {ErrorClass.THROTTLED}
    assert all(RETRY_AFTER_HINTS[code] >= 60 for code in NUMBER_PAUSE_CODES)
