"""The one way any stage builds a dead letter: the original bytes, cut to fit the topic, plus their size and digest.

    letter = build_dead_letter(Stage.INGEST, DeadLetterReason.SCHEMA_INVALID, "to: must be digits",
                               topic="t.webhooks.raw", partition=0, offset=42, key=b"k", value=raw,
                               headers={"traceparent": "00-…"}, request_id=None)
    letter.value_size, letter.value_sha256, letter.value_truncated     # 1_500_000, "9f…", True
    payload = letter.model_dump_json().encode()                        # always under DEAD_LETTER_VALUE_LIMIT + 64 KiB

A poison record can be any size. Its dead letter must still fit the producer's request size and the
dead-letters topic, or the stage retries the publish forever and the record never gets an outcome.
So the kept value is bounded (base64 grows it by a third), and the size and SHA-256 of the whole original
let an operator match it against the source topic, where the full bytes remain until retention.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from pipeline.contracts.messages import DeadLetter
from pipeline.contracts.vocabulary import DeadLetterReason, Stage

# 512 KiB of original bytes (~700 KiB base64) keeps any dead letter under aiokafka's default 1 MiB request
# size, whatever the topic allows; bigger records are kept whole on their source topic until retention.
DEAD_LETTER_VALUE_LIMIT = 512 * 1024
_HEADER_VALUE_LIMIT = 1024

REPLAYED_FROM = "replayed-from"
"""Header on a replayed record: `<dead-letters topic>:<partition>:<offset>` of the dead letter."""
_ERROR_LIMIT = 4096  # DeadLetter.error's limit


def build_dead_letter(
    stage: Stage,
    reason: DeadLetterReason,
    error: str,
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    headers: Mapping[str, str] | None = None,
    request_id: str | None = None,
    value_limit: int = DEAD_LETTER_VALUE_LIMIT,
) -> DeadLetter:
    """A dead letter for one record, bounded in size whatever the record's size."""
    raw = value or b""
    kept = raw[:value_limit]
    return DeadLetter(
        stage=stage,
        reason=reason,
        error=error if len(error) <= _ERROR_LIMIT else error[: _ERROR_LIMIT - 1] + "…",
        topic=topic,
        partition=partition,
        offset=offset,
        key_b64=DeadLetter.encode(key[:_HEADER_VALUE_LIMIT] if key is not None else None),
        value_b64=DeadLetter.encode(kept) or "",
        value_size=len(raw),
        value_sha256=hashlib.sha256(raw).hexdigest(),
        value_truncated=len(kept) < len(raw),
        headers={name[:_HEADER_VALUE_LIMIT]: text[:_HEADER_VALUE_LIMIT] for name, text in (headers or {}).items()},
        request_id=request_id[:_HEADER_VALUE_LIMIT] if request_id else None,
    )
