"""The catalog: every metric owned by a stage, documented with its type and labels, labels bounded."""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.contracts.vocabulary import Stage
from pipeline.observability.metrics import ALL_METRICS, CATALOG_BY_STAGE, catalog, error_code_label

DOC = Path(__file__).resolve().parents[2] / "docs" / "observability.md"
# The minimum catalog of the shared reference: dashboards and alerts query these names.
REFERENCE_NAMES = {
    "delivery_api_requests_total", "delivery_api_request_duration_seconds", "delivery_send_attempts_total",
    "delivery_messages_total", "delivery_send_duration_seconds", "delivery_rate_limit_wait_seconds",
    "delivery_rate_limit_per_second", "delivery_circuit_state", "delivery_inflight_messages",
    "delivery_dead_letters_total", "delivery_consumer_lag_messages", "delivery_webhooks_total",
    "delivery_status_events_total", "delivery_status_duplicates_total", "delivery_failures_total",
    "delivery_transition_seconds",
}
FORBIDDEN_LABELS = {"to", "wa_id", "recipient_id", "request_id", "wamid", "trace_id", "phone"}


def _doc_rows() -> dict[str, tuple[str, tuple[str, ...]]]:
    """`| \\`name\\` | type | \\`label\\`, … | …` rows of the catalog table in docs/observability.md."""
    rows = {}
    for line in DOC.read_text().splitlines():
        match = re.match(r"\| `(delivery_\w+)` \| (\w+) \| ([^|]*) \|", line)
        if match:
            rows[match[1]] = (match[2], tuple(re.findall(r"`(\w+)`", match[3])))
    return rows


def test_every_metric_is_documented_with_its_type_and_labels() -> None:
    rows = _doc_rows()
    for entry in catalog():
        assert entry.name in rows, f"{entry.name} is missing from docs/observability.md"
        assert rows[entry.name] == (entry.type, entry.labels), f"docs disagree with metrics.py on {entry.name}"
    assert set(rows) == {e.name for e in catalog()}, "the docs list a metric metrics.py does not define"


def test_every_metric_belongs_to_a_stage_and_the_reference_catalog_is_complete() -> None:
    owned = {m for stage_metrics in CATALOG_BY_STAGE.values() for m in stage_metrics}
    assert set(ALL_METRICS) == owned
    assert set(CATALOG_BY_STAGE) == set(Stage)
    assert {e.name for e in catalog()} >= REFERENCE_NAMES
    for entry in catalog():
        assert entry.name.startswith("delivery_")
        assert entry.type != "counter" or entry.name.endswith("_total")
        assert entry.type != "histogram" or entry.name.endswith("_seconds")
        assert not FORBIDDEN_LABELS & set(entry.labels), f"{entry.name} has an unbounded label"


def test_unknown_error_codes_share_one_label_value() -> None:
    known = frozenset({131026, 130429})
    assert error_code_label(131026, known) == "131026"
    assert error_code_label(999999, known) == "other"
    assert error_code_label(None, known) == "none"
