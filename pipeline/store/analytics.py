"""Counts, rates, medians and the response rate of a set of outbound messages. Pure.

    summary = summarise(facts)      # facts from Backend.analytics_facts
    summary["response"]["rate"]     # share of messages the contact answered within 24 h

Computed here rather than in SQL so that both engines give the same numbers by construction
(SQLite has no percentile function); the backends only fetch one small row per message.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from typing import Any

from pipeline.store.backend import RESPONSE_WINDOW_SECONDS
from pipeline.store.rows import AnalyticsFacts

TOP_ERRORS = 5


def summarise(facts: Sequence[AnalyticsFacts]) -> dict[str, Any]:
    accepted = len(facts)
    counts = {
        "accepted": accepted,
        "sent": sum(f.sent for f in facts),
        "delivered": sum(f.delivered_at is not None for f in facts),
        "read": sum(f.read_at is not None for f in facts),
        "failed": sum(f.failed for f in facts),
    }
    answered = [f for f in facts if f.replied_at is not None]
    errors = Counter((f.error_code, f.error_title) for f in facts if f.failed and f.error_code is not None)
    titles: dict[int, str | None] = {}
    by_code: Counter[int] = Counter()
    for (code, title), count in errors.items():
        assert code is not None
        by_code[code] += count
        titles.setdefault(code, title)
    return {
        "counts": counts,
        "rates": {name: _share(counts[name], accepted) for name in ("sent", "delivered", "read", "failed")},
        "median_seconds": {
            "to_delivered": _median([(f.delivered_at - f.accepted_at).total_seconds()
                                     for f in facts if f.delivered_at is not None]),
            "to_read": _median([(f.read_at - f.accepted_at).total_seconds() for f in facts if f.read_at is not None]),
        },
        "response": {
            "window_hours": RESPONSE_WINDOW_SECONDS // 3600,
            "answered": len(answered),
            "rate": _share(len(answered), accepted),
            "median_seconds": _median([max(0.0, (f.replied_at - f.accepted_at).total_seconds())
                                       for f in answered if f.replied_at is not None]),
        },
        "top_errors": [
            {"code": code, "title": titles[code], "count": count}
            for code, count in sorted(by_code.items(), key=lambda item: (-item[1], item[0]))[:TOP_ERRORS]
        ],
    }


def _share(part: int, whole: int) -> float | None:
    return None if whole == 0 else round(part / whole, 4)


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None
