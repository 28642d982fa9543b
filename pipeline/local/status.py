"""Delivery counts read from the stages' own `/metrics`, for `pipeline run`'s status line and `pipeline demo`.

    counts = scrape(["http://127.0.0.1:9101/metrics", "http://127.0.0.1:8081/metrics"])
    counts["sent"], counts["delivered"], counts["failed"]      # totals since the stages started
    rates = Rates()
    rates.update(counts)                                        # {"sent": 12.0, ...} per second since the last update
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable

import httpx
from prometheus_client.parser import text_string_to_metric_families

OUTCOMES = ("sent", "delivered", "read", "failed")


def scrape(urls: Iterable[str], timeout: float = 1.0) -> Counter[str]:
    """Sent and failed sends (sender), delivered, read and failed statuses (ingest); unreachable stages count 0."""
    counts: Counter[str] = Counter()
    for url in urls:
        try:
            text = httpx.get(url, timeout=timeout).text
        except httpx.HTTPError:
            continue
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "delivery_messages_total":
                    outcome = sample.labels.get("outcome", "")
                    counts["sent" if outcome == "sent" else "failed"] += int(sample.value)
                elif sample.name == "delivery_status_events_total":
                    status = sample.labels.get("status", "")
                    if status in ("delivered", "read"):
                        counts[status] += int(sample.value)
                    elif status == "failed":
                        counts["failed"] += int(sample.value)
    return counts


class Rates:
    """Per-second rates between consecutive updates."""

    def __init__(self) -> None:
        self._last: tuple[float, Counter[str]] | None = None

    def update(self, counts: Counter[str]) -> dict[str, float]:
        now = time.monotonic()
        last, self._last = self._last, (now, counts)
        if last is None or now <= last[0]:
            return dict.fromkeys(OUTCOMES, 0.0)
        elapsed = now - last[0]
        return {k: max(0.0, counts[k] - last[1][k]) / elapsed for k in OUTCOMES}
